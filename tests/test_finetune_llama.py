"""Fine-tuning the Llama family (Qwen3, Llama 3, SmolLM2, and Llama models trained here):
`python train.py instruct --init DIR --lora-rank 8` and the other tasks, end to end on tiny
models, and what the fine-tuned checkpoint keeps so that it chats and exports as its source.

The chat models are the rigged tiny ones of tests/test_chat_templates_hf.py: the shape of
../shared/reference/hf-qwen3-tiny (or hf-llama-tiny) with the vocabulary of the real tokenizer,
whose files sit beside it, and a config.json with the real model's special token ids. Greedy,
the Qwen3 one replies "<think>" "Hmm" "</think>" "Paris" <|im_end|> to a prompt that ends
"assistant\\n", and "Paris" <|im_end|> to one that ends with a closed <think> block; a few LoRA
steps at a small learning rate leave that so, and the reply shows which template, which stop
tokens and which tokenizer the fine-tuned checkpoint chats with.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from _paths import reference_file
from test_chat_templates_hf import QWEN3_CHAIN, rigged_model

from bpe import Tokenizer
from gpt.chat.cli import main as chat_main
from gpt.chat.engine import ChatEngine
from gpt.chat.templates import (TemplateOptions, chat_template_for, get_template,
                                stop_token_ids)
from gpt.core.generate import SamplingParams
from gpt.core.llama import Llama, LlamaConfig
from gpt.finetune.cli import main as finetune_main
from gpt.finetune.cli import run_task
from gpt.finetune.common import FinetuneSettings, select_trainable
from gpt.finetune.instruct import RESPONSES_FILE, format_input, prompt_format_for
from gpt.finetune.lora import LoRALinear, apply_lora
from gpt.io.checkpoint import load_pretrained, load_tokenizer_from, save_checkpoint

GREEDY = SamplingParams(max_new_tokens=12, temperature=0)
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_RANK = 8


def records(n: int = 20) -> list[dict]:
    countries = ["France", "Spain", "Italy", "Peru", "Chad"]
    return [{"instruction": f"Name the capital of country {i}.",
             "input": countries[i % 5] if i % 2 else "",
             "output": "Paris" if i % 3 else f"The capital of {countries[i % 5]}.",
             "chosen": "Paris", "rejected": f"No idea {i}."} for i in range(n)]


def hf_source(tmp_path: Path, reference: str, tokenizer: str, vocab_size: int, chain,
              generation_config: dict | None = None) -> Path:
    """A rigged tiny model with `tokenizer`'s real files and its real model's special ids."""
    directory = rigged_model(tmp_path, reference, tokenizer, vocab_size, chain, generation_config)
    real = json.loads(reference_file(f"tokenizers/{tokenizer}/config.json").read_text())
    config = json.loads((directory / "config.json").read_text())
    config.update({k: real[k] for k in ("bos_token_id", "eos_token_id")})
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def instruct(source: Path, out_dir: Path, name: str, *options: str) -> Path:
    """`python train.py instruct --init SOURCE --lora-rank 8 ...`: the run directory."""
    data = out_dir / "records.json"
    data.write_text(json.dumps(records(10)))           # 8 train, 1 test, 1 validation
    argv = ["instruct", "--init", str(source), "--lora-rank", str(LORA_RANK),
            "--data", str(data), "--batch-size", "2", "--max-iters", "2", "--lr", "1e-3",
            "--eval-iters", "1", "--out-dir", str(out_dir), "--run-name", name,
            "--no-progress", *options]
    assert finetune_main(argv) == 0
    return out_dir / name


def lora_size(model) -> int:
    """What rank-8 adapters on the targeted projections of `model` train: r (in + out) each."""
    return sum(LORA_RANK * (m.weight.shape[0] + m.weight.shape[1])
               for name, m in model.named_modules() if name.rsplit(".", 1)[-1] in TARGETS)


def assert_only_lora_changed(tuned: Llama, base: Llama) -> None:
    """Every tensor of `tuned` is `base`'s, but the targeted projections, which differ from it
    by a correction of rank at most 8 (W + (alpha/r) A B: what LoRA trains)."""
    tuned_state, base_state = tuned.state_dict(), base.state_dict()
    assert tuned_state.keys() == base_state.keys()
    for name, weight in tuned_state.items():
        if name.split(".")[-2] in TARGETS:
            change = weight.astype(np.float64) - base_state[name]
            singular = np.linalg.svd(change, compute_uv=False)
            assert singular[0] > 0, name
            assert np.sum(singular > 1e-3 * singular[0]) <= LORA_RANK, name
        else:
            assert np.array_equal(weight, base_state[name]), name


# -- LoRA and the trainable parts of a Llama --------------------------------------------------------

TINY = LlamaConfig(vocab_size=40, block_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=16,
                   intermediate_size=24, qk_norm=True)


def test_lora_adapts_the_attention_and_mlp_projections_of_a_llama():
    model = Llama(TINY, rng=np.random.default_rng(0))
    wrapped = apply_lora(model, rank=2, alpha=2.0, rng=np.random.default_rng(1))
    assert wrapped == [f"layers.{i}.{part}.{name}" for i in range(2)
                       for part, names in (("self_attn", TARGETS[:4]), ("mlp", TARGETS[4:]))
                       for name in names]
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{name}.lora_{m}" for name in wrapped for m in "AB"}
    assert isinstance(model.layers[1].mlp.down_proj, LoRALinear)


def test_last_k_trains_the_last_blocks_and_the_final_norm_of_a_llama():
    model = Llama(TINY, rng=np.random.default_rng(0))
    select_trainable(model, "last", 1)
    trainable = {name.split(".")[0] + ("." + name.split(".")[1] if name.startswith("layers")
                                       else "") for name, p in model.named_parameters()
                 if p.requires_grad}
    assert trainable == {"layers.1", "norm"}


# -- every task on a tiny Llama trained here (our tokenizer, <|endoftext|>) ------------------------


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("llama-finetune")
    rows = records(40)
    sms = "".join(f"{'spam' if i % 3 == 0 else 'ham'}\t{'WIN cash prize now' if i % 3 == 0 else 'see you at lunch'} {i}\n"
                  for i in range(60))
    (root / "sms.tsv").write_text(sms)
    (root / "records.json").write_text(json.dumps(rows))
    tokenizer = Tokenizer.train(sms + json.dumps(rows) + format_input(rows[0]) * 3, 300,
                                special_tokens=["<|endoftext|>"], progress=False)
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, block_size=160, n_layer=2, n_head=4,
                         n_kv_head=2, n_embd=16, intermediate_size=32)
    save_checkpoint(root / "base", Llama(config, rng=np.random.default_rng(1)), tokenizer)
    return root


def run(workspace, task, name, **overrides):
    settings = dict(task=task, init=str(workspace / "base"), batch_size=4, max_iters=3,
                    eval_interval=3, eval_iters=1, out_dir=str(workspace / "runs"),
                    run_name=name, progress=False, lr=3e-3, test_responses=1,
                    max_new_tokens=4)
    return run_task(FinetuneSettings(**{**settings, **overrides}), log=lambda *_: None)


@pytest.mark.parametrize("task, options", [
    ("classify", dict(data="sms.tsv", trainable="last-1")),
    ("classify", dict(data="sms.tsv", trainable="lora", lora_rank=2)),
    ("instruct", dict(data="records.json", lora_rank=2, mask_prompt=True)),
    ("dpo", dict(data="records.json", lora_rank=2)),
])
def test_each_task_runs_on_a_llama(workspace, task, options):
    name = f"{task}-{options.get('trainable', 'lora')}"
    results = run(workspace, task, name, **{**options, "data": str(workspace / options["data"])})
    assert results["steps"] == 3
    base = load_pretrained(workspace / "base")
    tuned = load_pretrained(workspace / "runs" / name)
    assert isinstance(tuned, Llama) and tuned.config == base.config
    if options.get("lora_rank"):
        assert results["trainable_parameters"] == lora_size(base) // 4 + \
            (2 * 16 + 2 if task == "classify" else 0)            # rank 2; the classifier head
        assert not any(isinstance(m, LoRALinear) for m in tuned.modules())
    if task != "classify":                  # the Alpaca layout: this model has no chat template
        state = json.loads((workspace / "runs" / name / "latest" / "train_state.json")
                           .read_text())
        assert state["chat_template"] == "alpaca"
        assert len(json.loads((workspace / "runs" / name / RESPONSES_FILE).read_text())) == 1


# -- Qwen3: its chat template, stop tokens and tokenizer, from training to chatting ---------------


@pytest.fixture(scope="module")
def qwen3_source(tmp_path_factory):
    return hf_source(tmp_path_factory.mktemp("qwen3"), "hf-qwen3-tiny", "qwen3", 151936,
                     QWEN3_CHAIN)


def test_a_chat_models_records_are_laid_out_in_its_own_template(qwen3_source):
    model, tokenizer = load_pretrained(qwen3_source), load_tokenizer_from(qwen3_source)
    prompt_format = prompt_format_for(model, tokenizer, qwen3_source)
    entry = {"instruction": "Name the capital.", "input": "France", "output": "Paris"}
    prompt = prompt_format.prompt_ids(entry)
    assert prompt_format.template == "qwen3"
    assert prompt_format.end_id == tokenizer.token_id("<|im_end|>")
    # Prompt + answer + end is Qwen3's own rendering of the exchange, to the answer's end.
    exchange = [{"role": "user", "content": "Name the capital.\n\nFrance"},
                {"role": "assistant", "content": "Paris"}]
    assert tokenizer.decode(prompt + prompt_format.text_ids("Paris") + [prompt_format.end_id]) \
        == get_template("qwen3").render(exchange).removesuffix("\n<|im_start|>assistant\n")
    assert tokenizer.decode(prompt).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_instruct_with_lora_on_qwen3_chats_and_exports(qwen3_source, tmp_path, capsys):
    run_dir = instruct(qwen3_source, tmp_path, "qwen3-lora", "--test-responses", "1")
    printed = capsys.readouterr().out
    assert "'qwen3' layout" in printed and f"(LoRA rank {LORA_RANK})" in printed
    results = json.loads((run_dir / "results.json").read_text())
    base = load_pretrained(qwen3_source)
    assert results["trainable_parameters"] == lora_size(base)
    assert results["chat_template"] == "qwen3"

    # The export: a plain Qwen3 checkpoint; only what LoRA trains has changed.
    tuned = load_pretrained(run_dir)
    assert isinstance(tuned, Llama) and tuned.config == base.config
    assert not any(isinstance(m, LoRALinear) for m in tuned.modules())
    assert_only_lora_changed(tuned, base)

    # It keeps its source's files: the tokenizer as Hugging Face's files (not ours), the
    # template, generation_config.json and the real special ids (eos <|im_end|>, not
    # <|endoftext|>).
    checkpoint = run_dir / "latest"
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                 "generation_config.json"):
        assert (checkpoint / name).read_bytes() == (qwen3_source / name).read_bytes(), name
    assert not (checkpoint / "tokenizer.du.json").exists()
    config = json.loads((checkpoint / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"]) == (151643, 151645)
    assert chat_template_for(run_dir) == "qwen3"
    assert stop_token_ids(checkpoint) == (151645, 151643)

    # It chats: Qwen3's template (thinking on), stopping at <|im_end|>, with the checkpoint's
    # sampling settings; the test answer was asked with thinking off.
    engine = ChatEngine.from_checkpoint(run_dir)
    assert engine.template.name == "qwen3" and 151645 in engine.stop_tokens()
    assert engine.sampling_defaults == {"temperature": 0.6, "top_k": 20, "top_p": 0.95}
    generation = engine.chat([{"role": "user", "content": "Capital of France?"}], GREEDY)
    assert generation.read() == "<think>Hmm</think>Paris" and generation.finish_reason == "stop"
    answers = json.loads((run_dir / RESPONSES_FILE).read_text())
    assert [a["model_response"] for a in answers] == ["Paris"]
    out = io.StringIO()
    assert chat_main(["--ckpt", str(run_dir), "--temperature", "0"],
                     stdin=io.StringIO("Capital of France?\n"), stdout=out) == 0
    assert out.getvalue() == "Paris\n"


# -- Llama 3: no <|endoftext|> in its tokenizer, <|eot_id|> ends a turn ---------------------------


def test_instruct_with_lora_on_llama3_ends_turns_with_eot_id(tmp_path):
    # "\n\n" 271 -> "Paris" 60704 -> <|end_of_text|> 128001, an eos of generation_config.json
    source = hf_source(tmp_path / "source", "hf-llama-tiny", "llama3", 128256,
                       [(271, 60704), (60704, 128001)],
                       {"bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009]})
    tokenizer = load_tokenizer_from(source)
    assert tokenizer.eot_id is None                       # Llama 3 has no <|endoftext|>
    prompt_format = prompt_format_for(load_pretrained(source), tokenizer, source)
    assert prompt_format.template == "llama3" and prompt_format.end_id == 128009
    run_dir = instruct(source, tmp_path, "llama3-lora", "--test-responses", "0")
    assert_only_lora_changed(load_pretrained(run_dir), load_pretrained(source))
    checkpoint = run_dir / "latest"
    for name in ("tokenizer.model", "tokenizer_config.json", "chat_template.jinja",
                 "generation_config.json"):
        assert (checkpoint / name).is_file(), name
    config = json.loads((checkpoint / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"]) == (128000, [128001, 128008, 128009])
    engine = ChatEngine.from_checkpoint(run_dir, options=TemplateOptions())
    assert engine.template.name == "llama3"
    assert {128001, 128008, 128009} <= set(engine.stop_tokens())
    generation = engine.chat([{"role": "user", "content": "Capital of France?"}], GREEDY)
    assert generation.read() == "Paris" and generation.finish_reason == "stop"
