"""Direct preference optimisation (DPO; Rafailov et al. 2023), on our autograd.

    python train.py dpo --init runs/instruct-... --beta 0.1

Each record has an instruction (and an optional input) and two answers: `chosen`, the better
one, and `rejected`. DPO raises the probability of the chosen answer relative to the rejected
one, measured against a frozen *reference* model (the starting point), without a separate
reward model. For one record, with log pi(y|x) the policy's log-probability of an answer y
and log ref(y|x) the reference's:

    z    = beta * [ (log pi(chosen) - log ref(chosen)) - (log pi(rejected) - log ref(rejected)) ]
    loss = -log sigmoid(z)                          averaged over the batch

The loss falls as the policy moves probability toward chosen and away from rejected. `beta`
(default 0.1) sets how far it goes: the loss saturates once beta * margin is a few units, so a
large beta is satisfied by a small move and keeps the policy near the reference (DPO's beta is
the weight of the KL penalty in the RLHF objective it is derived from), while a small beta lets
it drift further. The reference is what keeps the policy from drifting into degenerate text.
At the start policy = reference, so z = 0 and the loss is log 2 = 0.6931.

Rewards, as the book reports them: the chosen reward is log pi(chosen) - log ref(chosen), the
rejected reward likewise, the margin their difference (z / beta), and the preference accuracy
the fraction of records whose margin is positive.

log pi(y|x) here is the *mean* log-probability per token of the answer given the prompt (the
book's `compute_logprobs`; the paper sums over tokens). Only the answer's tokens count: the
prompt and the padding are masked with -100 and ignored. Each answer ends with the
end-of-text token, so the preference covers where to stop too. A chat model (Qwen3, Llama 3,
SmolLM2) is shown the records in its own chat template instead, each answer ending with the
template's end-of-turn token, as instruction fine-tuning does (gpt.finetune.instruct.PromptFormat).

The reference never changes, so its log-probabilities are computed once, before training, for
every record: each step then needs one forward and backward pass of the policy over the chosen
and rejected answers, stacked into one batch.

`dpo_loss` is one fused node of the graph with its backward derived by hand:
    dL/dz_i = -sigmoid(-z_i) / N     (since d/dz [-log sigmoid(z)] = -(1 - sigmoid(z)))
    dL/d log pi(chosen_i)   = beta * dL/dz_i
    dL/d log pi(rejected_i) = -beta * dL/dz_i
(the reference terms are constants). `-log sigmoid(z)` is computed as log(1 + e^-z) with
`np.logaddexp(0, -z)`, which neither overflows for very negative z nor loses precision for
large z.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from autograd import Tensor, no_grad
from autograd import functional as F
from autograd.nn import Module
from gpt.data.corpora import DataError
from gpt.finetune.common import (IGNORE_INDEX, FinetuneSettings, evaluate_batches, fit, load_base,
                                 pad_rows, run_summary, save_model, start_run, write_results)
from gpt.finetune.instruct import (RESPONSES_FILE, PromptFormat, answer_test_split, load_records,
                                   prompt_format_for, split_records)

REQUIRED_FIELDS = ("instruction", "chosen", "rejected")


def load_preference_records(source: str, data_dir: str | None = None) -> list[dict[str, str]]:
    """Records with `instruction`, `chosen`, `rejected` (strings) and an optional `input`."""
    return load_records(source, data_dir, required=REQUIRED_FIELDS, optional=("input",))


def encode_preference(tokenizer, entry: dict, prompt_format: PromptFormat | None = None
                      ) -> tuple[list[int], list[int], list[int]]:
    """(prompt ids, chosen answer ids + end, rejected answer ids + end), in `prompt_format`
    (default: Alpaca, the end being end-of-text)."""
    prompt_format = prompt_format or PromptFormat(tokenizer)
    end = [prompt_format.end_id]
    return (prompt_format.prompt_ids(entry), prompt_format.text_ids(entry["chosen"]) + end,
            prompt_format.text_ids(entry["rejected"]) + end)


def collate_preference(examples: Sequence[tuple[list[int], list[int], list[int]]], pad: int,
                       max_length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) of shape (2B, T): the B chosen sequences, then the B rejected ones.

    A sequence is prompt + answer; inputs are it without the last token, targets it shifted by
    one, with -100 wherever the target is a prompt token or padding, so that only the answer's
    tokens count. Cut to `max_length` tokens.
    """
    rows, prompt_lengths = [], []
    for which in (1, 2):                            # chosen, then rejected
        for example in examples:
            rows.append(example[0] + example[which])
            prompt_lengths.append(len(example[0]))
    full = pad_rows(rows, pad)
    inputs, targets = full[:, :-1], full[:, 1:].copy()
    for i, (row, p) in enumerate(zip(rows, prompt_lengths)):
        targets[i, :max(p - 1, 0)] = IGNORE_INDEX   # target t is token t+1: prompt up to p-2
        targets[i, len(row) - 1:] = IGNORE_INDEX    # padding
    if max_length is not None:
        inputs, targets = inputs[:, :max_length], targets[:, :max_length]
    return np.ascontiguousarray(inputs), np.ascontiguousarray(targets)


def sequence_logprobs(logits: Tensor, targets: np.ndarray) -> Tensor:
    """(N,) mean log-probability of each row's counted targets (those that are not -100).

    -cross_entropy(reduction="none") is log softmax(logits)[target] at each position, 0 where
    ignored; the row sums divided by the row counts are the means. Every op here has its
    backward already (the fused cross-entropy, sum, division by a constant).
    """
    counts = (targets != IGNORE_INDEX).sum(axis=1)
    if counts.min() < 1:
        raise ValueError("sequence_logprobs: a row has no counted target (its answer was cut "
                         "off entirely)")
    logp = -F.cross_entropy(logits, targets, reduction="none")               # (N, T)
    return logp.sum(axis=1) / counts.astype(logits.dtype)


def dpo_statistics(policy_chosen: np.ndarray, policy_rejected: np.ndarray,
                   reference_chosen: np.ndarray, reference_rejected: np.ndarray,
                   beta: float) -> dict[str, np.ndarray]:
    """Per-record loss, rewards, margin and whether the preference is right (arrays (B,))."""
    chosen_reward = policy_chosen - reference_chosen
    rejected_reward = policy_rejected - reference_rejected
    margin = chosen_reward - rejected_reward
    return {"loss": np.logaddexp(0.0, -beta * margin), "chosen_reward": chosen_reward,
            "rejected_reward": rejected_reward, "margin": margin,
            "accuracy": (margin > 0).astype(np.float64)}


def dpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, reference_chosen: np.ndarray,
             reference_rejected: np.ndarray, beta: float = 0.1) -> Tensor:
    """mean_i -log sigmoid(beta * ((pc_i - rc_i) - (pr_i - rr_i))); backward in the module
    docstring. pc, pr: the policy's log-probabilities (B,) Tensors; rc, rr: the reference's."""
    pc, pr = policy_chosen.data, policy_rejected.data
    if not pc.shape == pr.shape == np.shape(reference_chosen) == np.shape(reference_rejected):
        raise ValueError(f"dpo_loss: shapes differ: policy {pc.shape} / {pr.shape}, reference "
                         f"{np.shape(reference_chosen)} / {np.shape(reference_rejected)}")
    z = beta * ((pc - reference_chosen) - (pr - reference_rejected))
    n = z.size
    loss = np.asarray(np.logaddexp(0.0, -z).mean(), dtype=pc.dtype)
    # sigmoid(-z) = 1 / (1 + e^z) = exp(-log(1 + e^z)), stable for either sign of z
    weight = np.exp(-np.logaddexp(0.0, z)).astype(pc.dtype)

    def backward(g):
        grad_chosen = (-beta / n) * g * weight
        return grad_chosen, -grad_chosen
    return Tensor._make(loss, (policy_chosen, policy_rejected), backward, "dpo_loss")


@no_grad()
def reference_logprobs(model: Module, examples: Sequence, pad: int, max_length: int,
                       batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The (frozen) model's mean log-probabilities of every chosen and rejected answer."""
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    try:
        for start in range(0, len(examples), batch_size):
            part = examples[start:start + batch_size]
            inputs, targets = collate_preference(part, pad, max_length)
            logp = sequence_logprobs(model(inputs), targets).data
            chosen.append(logp[:len(part)])
            rejected.append(logp[len(part):])
    finally:
        model.train(was_training)
    return np.concatenate(chosen), np.concatenate(rejected)


def run_dpo(settings: FinetuneSettings, log: Callable[[str], None] = print) -> dict:
    """`python train.py dpo`: preference-tune from --init against a frozen copy of it."""
    model, tokenizer, init_dir = load_base(settings)
    splits = split_records(load_preference_records(settings.data, settings.data_dir))
    prompt_format = prompt_format_for(model, tokenizer, init_dir, log)
    pad = prompt_format.end_id
    max_length = min(settings.max_length or model.config.block_size, model.config.block_size)
    examples, dropped = {}, 0
    for name, entries in splits.items():
        encoded = [encode_preference(tokenizer, e, prompt_format) for e in entries]
        # The first answer token must be inside the window, or the record has nothing to score.
        examples[name] = [e for e in encoded if len(e[0]) <= max_length]
        dropped += len(encoded) - len(examples[name])
    if dropped:
        log(f"{dropped} records dropped: their prompt alone fills the {max_length}-token window")
    if not examples["train"]:
        raise DataError(f"{settings.data}: no training record fits in {max_length} tokens")

    log("computing the reference model's log-probabilities...")
    reference = {name: reference_logprobs(model, ex, pad, max_length, settings.batch_size)
                 for name, ex in examples.items() if ex}
    directory, counts = start_run(model, settings, log)
    log(f"data: {', '.join(f'{len(v)} {k}' for k, v in examples.items())} records; beta "
        f"{settings.beta}")

    def policy(split: str, indices: np.ndarray):
        part = [examples[split][i] for i in indices]
        inputs, targets = collate_preference(part, pad, max_length)
        logp = sequence_logprobs(model(inputs), targets)
        ref_chosen, ref_rejected = (r[indices] for r in reference[split])
        return logp[:len(part)], logp[len(part):], ref_chosen, ref_rejected, inputs.size

    def step_loss(indices: np.ndarray):
        chosen, rejected, ref_chosen, ref_rejected, n_tokens = policy("train", indices)
        stats = dpo_statistics(chosen.data, rejected.data, ref_chosen, ref_rejected,
                               settings.beta)
        loss = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, settings.beta)
        return loss, {"tokens": n_tokens, "margin": float(stats["margin"].mean()),
                      "accuracy": float(stats["accuracy"].mean())}

    def evaluate(split: str, max_batches: int | None) -> dict[str, float]:
        def one_batch(indices):
            chosen, rejected, ref_chosen, ref_rejected, _ = policy(split, indices)
            stats = dpo_statistics(chosen.data.astype(np.float64),
                                   rejected.data.astype(np.float64), ref_chosen, ref_rejected,
                                   settings.beta)
            return {k: (float(v.sum()), v.size) for k, v in stats.items()}
        return evaluate_batches(model, len(examples[split]), settings.batch_size, max_batches,
                                one_batch)

    result = fit(model, settings, len(examples["train"]), step_loss, evaluate, directory, log)
    final = {split: evaluate(split, None) for split in ("train", "val", "test")
             if examples[split]}
    first = result.history[0] if result.history else {}
    results = {"task": "dpo", "init": str(init_dir), "beta": settings.beta,
               "lora_rank": settings.lora_rank, **run_summary(result, counts),
               "initial_val": {k[len("eval_val_"):]: v for k, v in first.items()
                               if k.startswith("eval_val_")},
               **{split: {k: round(v, 5) for k, v in m.items()} for split, m in final.items()},
               "split_sizes": {k: len(v) for k, v in examples.items()}, "max_length": max_length}
    checkpoint = save_model(directory, model, tokenizer,
                            {"task": "dpo", "step": result.steps,
                             "chat_template": prompt_format.template, "results": results},
                            source=init_dir)
    if answer_test_split(directory, model, tokenizer, splits["test"], settings, prompt_format):
        results["test_responses"] = str(directory / RESPONSES_FILE)
    write_results(directory, results)
    val = final.get("val", {})
    log(f"validation: loss {val.get('loss', float('nan')):.4f}, reward margin "
        f"{val.get('margin', float('nan')):.4f} (chosen {val.get('chosen_reward', 0):.4f}, "
        f"rejected {val.get('rejected_reward', 0):.4f}), preference accuracy "
        f"{100 * val.get('accuracy', float('nan')):.1f} %; {result.steps} steps in "
        f"{result.seconds:.1f} s; checkpoint {checkpoint}")
    return results
