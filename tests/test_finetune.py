"""Fine-tuning: collate and masks, LoRA, the last-token classification head, the DPO loss
(gradient checks in float64), data errors, and each command end to end on a tiny model."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _paths import data_file

from autograd import Tensor
from autograd import functional as F
from autograd.gradcheck import gradcheck
from autograd.nn import Linear
from bpe import Tokenizer
from gpt import GPT, GPTConfig, load_pretrained
from gpt.data.corpora import DataError
from gpt.finetune.classify import (GPTClassifier, balance_and_split, classify_texts,
                                   collate_classification, last_token_states, load_classifier,
                                   load_sms, parse_sms_lines)
from gpt.finetune.cli import run_task, settings_from_args
from gpt.finetune.common import FinetuneSettings, batch_indices, parse_trainable
from gpt.finetune.dpo import (collate_preference, dpo_loss, dpo_statistics, encode_preference,
                              load_preference_records, sequence_logprobs)
from gpt.finetune.instruct import (RESPONSES_FILE, collate_instruct, format_input, format_prompt,
                                   load_records, split_records)
from gpt.finetune.lora import LoRALinear, apply_lora, lora_parameters, merge_lora, merged_state_dict
from gpt.io.checkpoint import CheckpointError, save_checkpoint
from gpt.train.loop import TrainingError

REPO = Path(__file__).resolve().parents[1]
TINY = dict(vocab_size=29, block_size=12, n_layer=2, n_head=2, n_embd=8)


def perturbed_gpt(config: GPTConfig, seed: int = 0) -> GPT:
    """A float64 GPT with weights far from their (partly constant) initial values."""
    model = GPT(config, rng=np.random.default_rng(seed)).to(np.float64)
    rng = np.random.default_rng(seed + 1)
    for p in model.parameters():
        p.data += rng.normal(0, 0.2, p.shape)
    return model


# ----------------------------------------------------------------------------------------------
# Instruction data: prompt layout, collate, masks


def test_collate_reproduces_the_books_example():
    inputs, targets = collate_instruct([[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]], 50256)
    assert targets.tolist() == [[1, 2, 3, 4, 50256], [6, 50256, -100, -100, -100],
                                [8, 9, 50256, -100, -100]]
    assert inputs.tolist() == [[0, 1, 2, 3, 4], [5, 6, 50256, 50256, 50256],
                               [7, 8, 9, 50256, 50256]]
    assert inputs.dtype == targets.dtype == np.int64


def test_collate_masks_the_prompt_and_cuts_to_the_length_limit():
    inputs, targets = collate_instruct([[0, 1, 2, 3, 4], [5, 6]], 99, prompt_lengths=[3, 1],
                                       allowed_max_length=4)
    # Row 0: prompt 0 1 2 -> targets 1, 2 masked; the response 3 4 and the end-of-text stay.
    assert targets.tolist() == [[-100, -100, 3, 4], [6, 99, -100, -100]]
    assert inputs.shape == (2, 4)


def test_alpaca_layout_is_the_books():
    entry = {"instruction": "Rewrite the sentence.", "input": "It is fast.", "output": "Quick."}
    assert format_input(entry) == (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nRewrite the sentence.\n\n### Input:\n"
        "It is fast.")
    assert format_prompt({**entry, "input": ""}).endswith(
        "### Instruction:\nRewrite the sentence.\n\n### Response:\n")


def test_split_is_85_10_5_in_file_order():
    splits = split_records(list(range(1100)))
    assert [len(splits[k]) for k in ("train", "test", "val")] == [935, 110, 55]
    assert splits["train"][0] == 0 and splits["test"][0] == 935 and splits["val"][-1] == 1099


def test_masked_loss_gradcheck_through_the_model():
    """cross_entropy with -100 targets from a collated batch, through a float64 GPT: ignored
    positions must contribute no gradient and the mean must count only real targets."""
    config = GPTConfig(**TINY)
    model = perturbed_gpt(config)
    inputs, targets = collate_instruct([[3, 4, 5, 6, 7], [8, 9]], 28, prompt_lengths=[2, 1])
    assert (targets == -100).sum() == 4

    def loss_fn(*_):
        return F.cross_entropy(model(inputs), targets)
    params = [model.h[1].mlp.c_fc.weight, model.ln_f.weight, model.wte.weight]
    result = gradcheck(loss_fn, params, max_elements=40)
    assert result.passed, (result.max_abs_error, result.max_rel_error)
    # The value: the mean over the counted targets only.
    logp = F.log_softmax(model(inputs)).data
    rows, cols = np.nonzero(targets != -100)
    expected = -logp[rows, cols, targets[rows, cols]].mean()
    assert np.isclose(loss_fn().item(), expected)


# ----------------------------------------------------------------------------------------------
# LoRA


def test_lora_layer_gradcheck_float64():
    rng = np.random.default_rng(0)
    layer = LoRALinear(Linear(5, 4, rng=rng, dtype=np.float64), rank=2, alpha=3.0, rng=rng)
    layer.lora_B.data[...] = rng.normal(0, 1, layer.lora_B.shape)       # B = 0 hides bugs in A
    x = Tensor(rng.normal(0, 1, (3, 2, 5)), requires_grad=True)
    result = gradcheck(lambda x, a, b: layer(x), [x, layer.lora_A, layer.lora_B])
    assert result.passed, (result.max_abs_error, result.max_rel_error)
    # ... and the value is x W + b + (alpha/r) x A B.
    expected = (x.data @ layer.weight.data + layer.bias.data
                + 1.5 * (x.data @ layer.lora_A.data) @ layer.lora_B.data)
    assert np.allclose(layer(x).data, expected)
    # The fused op's paths for a trainable W and b, and for a layer without bias.
    layer.weight.requires_grad = layer.bias.requires_grad = True
    inputs = [x, layer.weight, layer.bias, layer.lora_A, layer.lora_B]
    assert gradcheck(lambda *_: layer(x), inputs).passed
    no_bias = LoRALinear(Linear(5, 3, bias=False, rng=rng, dtype=np.float64), 2, 2.0, rng=rng)
    no_bias.lora_B.data[...] = rng.normal(0, 1, no_bias.lora_B.shape)
    assert gradcheck(lambda *_: no_bias(x), [x, no_bias.lora_A, no_bias.lora_B]).passed


def test_lora_starts_as_the_base_model_and_freezes_it():
    model = GPT(GPTConfig(**TINY), rng=np.random.default_rng(0))
    idx = np.random.default_rng(1).integers(0, 29, (2, 7))
    before = model(idx).data.copy()
    wrapped = apply_lora(model, rank=2, alpha=4.0, rng=np.random.default_rng(2))
    assert len(wrapped) == 2 * 4                       # c_attn, attn.c_proj, c_fc, mlp.c_proj
    assert np.array_equal(model(idx).data, before)     # B = 0: exactly the base model's logits
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in lora_parameters(model)}
    # r * (in + out) per layer: (8+24) + (8+8) + (8+32) + (32+8) = 128 per block, 2 blocks.
    assert sum(p.size for p in trainable) == 2 * 2 * 128
    F.cross_entropy(model(idx), idx).backward()
    assert all(p.grad is not None for p in trainable)
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


def test_merged_model_gives_the_lora_models_logits():
    model = GPT(GPTConfig(**TINY), rng=np.random.default_rng(0)).to(np.float64)
    apply_lora(model, rank=3, alpha=6.0, rng=np.random.default_rng(1))
    rng = np.random.default_rng(2)
    for p in lora_parameters(model):
        p.data += rng.normal(0, 0.3, p.shape)           # as if trained
    idx = rng.integers(0, 29, (2, 9))
    lora_logits = model(idx).data.copy()
    state = merged_state_dict(model)                     # without touching the model
    assert not any("lora" in k for k in state)
    plain = GPT(GPTConfig(**TINY), rng=np.random.default_rng(5)).to(np.float64)
    plain.load_state_dict(state)
    assert np.allclose(plain(idx).data, lora_logits, atol=1e-10)
    merge_lora(model)                                    # in place
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert sorted(model.state_dict()) == sorted(plain.state_dict())
    assert np.allclose(model(idx).data, lora_logits, atol=1e-10)


def test_lora_rejects_bad_settings():
    with pytest.raises(ValueError, match="rank"):
        LoRALinear(Linear(4, 4), rank=0, alpha=1.0)
    with pytest.raises(ValueError, match="alpha"):
        LoRALinear(Linear(4, 4), rank=2, alpha=0.0)
    with pytest.raises(ValueError, match="no Linear layer"):
        apply_lora(GPT(GPTConfig(**TINY)), 2, 2.0, targets=("nothing",))


# ----------------------------------------------------------------------------------------------
# Classification head on the last real token


def test_last_token_head_gradcheck_float64():
    rng = np.random.default_rng(0)
    hidden = Tensor(rng.normal(0, 1, (3, 5, 4)), requires_grad=True)
    head = Linear(4, 2, rng=rng, dtype=np.float64)
    lengths = np.array([5, 2, 3])
    labels = np.array([1, 0, 1])

    def loss_fn(h, w, b):
        return F.cross_entropy(head(last_token_states(h, lengths)), labels)
    result = gradcheck(loss_fn, [hidden, head.weight, head.bias])
    assert result.passed, (result.max_abs_error, result.max_rel_error)
    loss_fn(hidden, head.weight, head.bias).backward()
    # Only the positions the head read receive gradient.
    touched = np.abs(hidden.grad).sum(axis=2) > 0
    assert touched.tolist() == [[False] * 4 + [True], [False, True, False, False, False],
                                [False, False, True, False, False]]


def test_classifier_gradcheck_through_the_model():
    gpt = perturbed_gpt(GPTConfig(**TINY))
    classifier = GPTClassifier(gpt, 2, rng=np.random.default_rng(3))
    classifier.head.to(np.float64)
    ids, lengths = collate_classification([[1, 2, 3, 4], [5, 6], [7, 8, 9]], 28)
    labels = np.array([0, 1, 1])

    def loss_fn(*_):
        return F.cross_entropy(classifier(ids, lengths), labels)
    params = [classifier.head.weight, gpt.h[1].attn.c_attn.weight, gpt.wpe.weight]
    result = gradcheck(loss_fn, params, max_elements=30)
    assert result.passed, (result.max_abs_error, result.max_rel_error)


def test_padding_does_not_change_a_messages_logits():
    classifier = GPTClassifier(GPT(GPTConfig(**TINY), rng=np.random.default_rng(0)), 2)
    alone = classifier(*collate_classification([[3, 4, 5]], 28)).data
    batch = classifier(*collate_classification([[1, 2, 3, 4, 5, 6, 7], [3, 4, 5]], 28)).data
    assert np.allclose(batch[1], alone[0], atol=1e-6)


def test_sms_split_is_balanced_seeded_and_70_10_20():
    records = parse_sms_lines(data_file("sms-spam-collection.tsv").read_text(encoding="utf-8"))
    assert len(records) == 5574 and sum(y for _, y in records) == 747
    splits = balance_and_split(records, seed=123)
    assert [len(splits[k]) for k in ("train", "val", "test")] == [1045, 149, 300]
    every = [r for part in splits.values() for r in part]
    assert sum(y for _, y in every) == 747                       # balanced: 747 of each
    assert balance_and_split(records, seed=123) == splits        # repeatable
    assert balance_and_split(records, seed=7)["test"] != splits["test"]


# ----------------------------------------------------------------------------------------------
# DPO


def test_dpo_loss_gradcheck_and_value():
    rng = np.random.default_rng(0)
    chosen = Tensor(rng.normal(-1, 0.5, 4), requires_grad=True)
    rejected = Tensor(rng.normal(-1, 0.5, 4), requires_grad=True)
    ref_c, ref_r = rng.normal(-1, 0.5, 4), rng.normal(-1, 0.5, 4)
    result = gradcheck(lambda c, r: dpo_loss(c, r, ref_c, ref_r, beta=0.7), [chosen, rejected])
    assert result.passed, (result.max_abs_error, result.max_rel_error)
    z = 0.7 * ((chosen.data - ref_c) - (rejected.data - ref_r))
    assert np.isclose(dpo_loss(chosen, rejected, ref_c, ref_r, 0.7).item(),
                      np.mean(-np.log(1 / (1 + np.exp(-z)))))
    # The policy equal to the reference: loss log 2, margin 0, stable for huge margins too.
    assert np.isclose(dpo_loss(Tensor(ref_c), Tensor(ref_r), ref_c, ref_r).item(), np.log(2))
    huge = dpo_loss(Tensor(np.array([1e4, -1e4])), Tensor(np.zeros(2)), np.zeros(2),
                    np.zeros(2), beta=1.0)
    assert np.isfinite(huge.item()) and np.isclose(huge.item(), 1e4 / 2)
    stats = dpo_statistics(np.array([0.0, 1.0]), np.zeros(2), np.zeros(2), np.zeros(2), 0.1)
    assert stats["margin"].tolist() == [0.0, 1.0] and stats["accuracy"].tolist() == [0.0, 1.0]


def test_sequence_logprobs_count_only_the_answer_and_gradcheck():
    prompt, chosen, rejected = [1, 2, 3], [4, 5, 28], [6, 28]
    inputs, targets = collate_preference([(prompt, chosen, rejected)], pad=28)
    # chosen row: 1 2 3 4 5 28 -> targets of answer tokens only; rejected row padded.
    assert targets.tolist() == [[-100, -100, 4, 5, 28], [-100, -100, 6, 28, -100]]
    assert inputs.tolist() == [[1, 2, 3, 4, 5], [1, 2, 3, 6, 28]]
    rng = np.random.default_rng(0)
    logits = Tensor(rng.normal(0, 1, (2, 5, 29)), requires_grad=True)
    logp = sequence_logprobs(logits, targets)
    ls = F.log_softmax(logits).data
    assert np.isclose(logp.data[0], np.mean([ls[0, 2, 4], ls[0, 3, 5], ls[0, 4, 28]]))
    assert np.isclose(logp.data[1], np.mean([ls[1, 2, 6], ls[1, 3, 28]]))
    model = perturbed_gpt(GPTConfig(**TINY))
    ref = np.array([-3.0]), np.array([-3.5])

    def loss_fn(*_):
        lp = sequence_logprobs(model(inputs), targets)
        return dpo_loss(lp[:1], lp[1:], *ref, beta=0.5)
    result = gradcheck(loss_fn, [model.h[0].attn.c_proj.weight, model.wte.weight],
                       max_elements=30)
    assert result.passed, (result.max_abs_error, result.max_rel_error)


# ----------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("text, message", [
    ("ham\thello\nspam only a label\n", "line 2: expected 'ham<TAB>message'"),
    ("ham\thello\negg\tnope\n", "line 2: label 'egg' is neither"),
    ("spam\t   \n", "line 1: the message is empty"),
    ("\n\n", "no messages found"),
])
def test_sms_data_errors(text, message):
    with pytest.raises(DataError, match=message):
        parse_sms_lines(text)


def test_sms_needs_both_classes_and_an_existing_file(tmp_path):
    with pytest.raises(DataError, match="no spam messages"):
        balance_and_split(parse_sms_lines("ham\ta\nham\tb\n"))
    with pytest.raises(DataError, match="neither a registered data set nor an existing file"):
        load_sms(str(tmp_path / "missing.tsv"))
    bad_zip = tmp_path / "sms.zip"
    bad_zip.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a zip archive"):
        load_sms(str(bad_zip))


@pytest.mark.parametrize("content, message", [
    ('[{"instruction": "a", "output": "b"', "not valid JSON"),
    ('{"records": []}', "record 0 has no 'instruction', 'output' field"),
    ("[]", "no records"),
    ("", "is empty"),
    ('[{"instruction": "a", "output": "b"}, 7]', "record 1 is a int"),
    ('[{"instruction": "a"}]', "record 0 has no 'output' field"),
    ('[{"instruction": "a", "output": 3}]', "record 0: field 'output' must be a string"),
    ('[{"instruction": "a", "output": "b", "input": ["x"]}]', "field 'input' must be a string"),
    ('{"instruction": "a", "output": "b"}\n{"instruction": "a",\n', "line 2: not valid JSON"),
])
def test_instruction_record_errors(tmp_path, content, message):
    path = tmp_path / "data.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        load_records(str(path))


def test_records_load_from_json_and_jsonl(tmp_path):
    rows = [{"instruction": "a", "output": "b"}, {"instruction": "c", "input": None, "output": "d"}]
    (tmp_path / "d.json").write_text(json.dumps(rows), encoding="utf-8")
    (tmp_path / "d.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n", encoding="utf-8")
    for name in ("d.json", "d.jsonl"):
        records = load_records(str(tmp_path / name))
        assert [r["input"] for r in records] == ["", ""] and records[1]["output"] == "d"
    (tmp_path / "p.json").write_text(json.dumps(rows), encoding="utf-8")
    with pytest.raises(DataError, match="record 0 has no 'chosen', 'rejected' field"):
        load_preference_records(str(tmp_path / "p.json"))


def test_settings_errors():
    with pytest.raises(TrainingError, match="expected 'last-K'"):
        parse_trainable("first-2")
    assert parse_trainable("last-3") == ("last", 3)
    with pytest.raises(TrainingError, match="needs --trainable lora"):
        settings_from_args("classify", ["--init", "x", "--lora-rank", "4"])
    with pytest.raises(TrainingError, match="--beta must be positive"):
        settings_from_args("dpo", ["--init", "x", "--beta", "0"])
    with pytest.raises(TrainingError, match="--batch-size must be at least 1"):
        settings_from_args("instruct", ["--init", "x", "--batch-size", "0"])


def test_batches_visit_every_record_once_per_epoch():
    seen = np.concatenate([batch_indices(s, 10, 3, seed=1) for s in range(3)])
    assert len(seen) == len(set(seen)) == 9          # 3 full batches; the partial one dropped
    assert not np.array_equal(batch_indices(0, 10, 3, 1), batch_indices(3, 10, 3, 1))


# ----------------------------------------------------------------------------------------------
# End to end on a tiny model


SPAM_WORDS = ["WIN", "FREE", "prize", "cash", "call", "now", "claim", "txt", "urgent", "offer"]
HAM_WORDS = ["see", "you", "at", "lunch", "love", "home", "later", "ok", "mum", "dinner"]


def synthetic_sms(n: int, rng) -> str:
    lines = []
    for i in range(n):
        spam = i % 3 == 0
        words = rng.choice(SPAM_WORDS if spam else HAM_WORDS, rng.integers(3, 9))
        lines.append(("spam" if spam else "ham") + "\t" + " ".join(words))
    return "\n".join(lines) + "\n"


def synthetic_instructions(n: int) -> list[dict]:
    colours = ["red", "blue", "green", "black", "white"]
    return [{"instruction": f"Name colour {i % 5}.", "input": "" if i % 2 else "plain",
             "output": f"The colour is {colours[i % 5]}.",
             "chosen": f"The colour is {colours[i % 5]}.",
             "rejected": f"No idea, go away {i}."} for i in range(n)]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny pretrained-looking checkpoint (random weights) and small data files."""
    root = tmp_path_factory.mktemp("finetune")
    rng = np.random.default_rng(0)
    sms = synthetic_sms(90, rng)
    records = synthetic_instructions(40)
    (root / "sms.tsv").write_text(sms, encoding="utf-8")
    (root / "instructions.json").write_text(json.dumps(records), encoding="utf-8")
    text = sms + json.dumps(records) + format_input(records[0]) * 3
    tokenizer = Tokenizer.train(text, 300, special_tokens=["<|endoftext|>"], progress=False)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=192, n_layer=2, n_head=2,
                          n_embd=16), rng=np.random.default_rng(1))
    save_checkpoint(root / "base", model, tokenizer)
    return root


def finetune(workspace, task, name, **overrides):
    base = dict(task=task, init=str(workspace / "base"), batch_size=8, max_iters=12,
                eval_interval=6, eval_iters=2, out_dir=str(workspace / "runs"), run_name=name,
                progress=False, lr=3e-3)
    base.update(overrides)
    return run_task(FinetuneSettings(**base), log=lambda *_: None)


def eval_losses(run_dir: Path, key: str = "eval_train_loss") -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in rows if key in r]


def test_classify_end_to_end(workspace):
    results = finetune(workspace, "classify", "clf", data=str(workspace / "sms.tsv"),
                       trainable="all", max_iters=15)
    run = workspace / "runs" / "clf"
    losses = eval_losses(run)
    assert losses[-1] < losses[0]
    assert results["steps"] == 15 and 0.0 <= results["test_accuracy"] <= 1.0
    assert json.loads((run / "results.json").read_text())["train_accuracy"] == \
        results["train_accuracy"]
    # The checkpoint: a GPT directory (from_pretrained works) plus the head.
    load_pretrained(run)
    classifier, tokenizer, labels, max_length = load_classifier(run)
    assert labels == ["ham", "spam"]
    (label, p), = classify_texts(classifier, tokenizer, ["WIN cash now"], max_length)
    assert label in labels and 0.5 <= p <= 1.0
    with pytest.raises(ValueError, match="empty message"):
        classify_texts(classifier, tokenizer, ["  "], max_length)


def test_classify_with_lora_trains_only_adapters_and_head(workspace):
    results = finetune(workspace, "classify", "clf-lora", data=str(workspace / "sms.tsv"),
                       trainable="lora", lora_rank=2, max_iters=4)
    # Per block r * (in + out): (16+48) + (16+16) + (16+64) + (64+16) = 256, times r=2, 2 blocks;
    # the head 16 * 2 + 2.
    assert results["trainable_parameters"] == 2 * 2 * 256 + 34
    classifier, *_ = load_classifier(workspace / "runs" / "clf-lora")
    assert not any(isinstance(m, LoRALinear) for m in classifier.modules())


def test_classifier_cli_and_a_checkpoint_without_a_head(workspace):
    finetune(workspace, "classify", "clf-cli", data=str(workspace / "sms.tsv"), max_iters=2)
    out = subprocess.run([sys.executable, "-m", "gpt.finetune.classify", "--ckpt",
                          str(workspace / "runs" / "clf-cli"), "FREE prize call now", "ok"],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2 and lines[0].split("\t")[0] in ("ham", "spam")
    with pytest.raises(CheckpointError, match="not a classifier checkpoint"):
        load_classifier(workspace / "base")


def test_instruct_end_to_end_with_masked_prompt(workspace):
    results = finetune(workspace, "instruct", "inst", data=str(workspace / "instructions.json"),
                       mask_prompt=True, test_responses=2, max_new_tokens=6, max_iters=16)
    run = workspace / "runs" / "inst"
    losses = eval_losses(run)
    assert losses[-1] < losses[0]
    answers = json.loads((run / RESPONSES_FILE).read_text())
    assert len(answers) == 2 and {"instruction", "output", "model_response"} <= set(answers[0])
    state = json.loads((run / "latest" / "train_state.json").read_text())
    assert state["chat_template"] == "alpaca"              # what gpt.chat.engine reads
    assert results["split_sizes"] == {"train": 34, "test": 4, "val": 2}


def test_instruct_with_lora_exports_a_plain_checkpoint(workspace):
    results = finetune(workspace, "instruct", "inst-lora",
                       data=str(workspace / "instructions.json"), lora_rank=4, lora_alpha=8.0,
                       test_responses=0, max_iters=10, lr=1e-2)
    assert results["trainable_parameters"] == 4 * 2 * 256
    assert eval_losses(workspace / "runs" / "inst-lora")[-1] < \
        eval_losses(workspace / "runs" / "inst-lora")[0]
    model = load_pretrained(workspace / "runs" / "inst-lora")
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    base = load_pretrained(workspace / "base")
    assert not np.array_equal(model.h[0].attn.c_attn.weight.data,
                              base.h[0].attn.c_attn.weight.data)
    assert np.array_equal(model.wte.weight.data, base.wte.weight.data)   # frozen under LoRA


def test_dpo_end_to_end(workspace):
    data = workspace / "instructions.json"
    results = finetune(workspace, "dpo", "dpo", data=str(data), test_responses=1,
                       max_new_tokens=4, beta=0.5, lr=3e-3)
    assert results["initial_val"]["margin"] == 0.0
    assert np.isclose(results["initial_val"]["loss"], np.log(2), atol=1e-4)
    losses = eval_losses(workspace / "runs" / "dpo")
    assert losses[-1] < losses[0]
    assert results["train"]["margin"] > 0 and results["train"]["accuracy"] > 0.5
    tokenizer = Tokenizer.load(workspace / "base" / "tokenizer.du.json")
    _, chosen, rejected = encode_preference(tokenizer, synthetic_instructions(1)[0])
    assert chosen[-1] == rejected[-1] == tokenizer.eot_id     # answers end with end-of-text


def test_train_py_dispatches_subcommands(workspace):
    out = subprocess.run([sys.executable, "train.py", "instruct", "--init",
                          str(workspace / "base"), "--data", str(workspace / "instructions.json"),
                          "--max-iters", "2", "--eval-interval", "1", "--eval-iters", "1",
                          "--test-responses", "1", "--max-new-tokens", "3", "--no-progress",
                          "--out-dir", str(workspace / "runs"), "--run-name", "cli"],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert (workspace / "runs" / "cli" / "latest" / "model.safetensors").is_file()
    bad = subprocess.run([sys.executable, "train.py", "classify", "--init",
                          str(workspace / "nowhere")], capture_output=True, text=True, cwd=REPO,
                         timeout=120)
    assert bad.returncode == 1 and "error:" in bad.stderr and "Traceback" not in bad.stderr


def test_base_checkpoint_needs_a_tokenizer_with_end_of_text(tmp_path):
    from bpe import CharTokenizer
    tokenizer = CharTokenizer.train("abc de")
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=8, n_layer=1, n_head=1,
                          n_embd=4))
    save_checkpoint(tmp_path / "no-eot", model, tokenizer)
    save_checkpoint(tmp_path / "no-tokenizer", model)
    for name, message in (("no-eot", "no <|endoftext|> token"), ("no-tokenizer", "no tokenizer")):
        settings = FinetuneSettings(task="instruct", init=str(tmp_path / name),
                                    out_dir=str(tmp_path / "runs"), progress=False)
        with pytest.raises(TrainingError, match=message):
            run_task(settings, log=lambda *_: None)


def test_ctrl_c_stops_after_the_step_and_still_evaluates(tmp_path):
    import signal

    from gpt.finetune.common import fit
    model = Linear(3, 2, rng=np.random.default_rng(0))
    x = np.random.default_rng(1).normal(size=(10, 3)).astype(np.float32)
    y = np.arange(10) % 2
    calls = []

    def step_loss(indices):
        calls.append(len(calls))
        if len(calls) == 2:
            signal.raise_signal(signal.SIGINT)         # as if the user pressed Ctrl-C now
        return F.cross_entropy(model(Tensor(x[indices])), y[indices]), {"tokens": len(indices)}

    def evaluate(split, max_batches):
        return {"loss": F.cross_entropy(model(Tensor(x)), y).item()}
    settings = FinetuneSettings(task="classify", init="-", batch_size=2, max_iters=50,
                                eval_interval=100, progress=False)
    result = fit(model, settings, 10, step_loss, evaluate, tmp_path, log=lambda *_: None)
    assert result.interrupted and result.steps == 2 == len(calls)
    evals = eval_losses(tmp_path)
    assert len(evals) == 2                              # at step 0 and after the stop
