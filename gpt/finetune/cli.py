"""The fine-tuning subcommands of train.py: `python train.py TASK --init DIR`.

    python train.py classify --init runs/pretrain      # spam classifier (gpt.finetune.classify)
    python train.py instruct --init runs/pretrain      # instruction following (gpt.finetune.instruct)
    python train.py dpo --init runs/instruct-...       # preference tuning (gpt.finetune.dpo)
    python train.py chat --init runs/pretrain          # a storyteller (gpt.finetune.stories)
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Callable, Sequence

from gpt.finetune.classify import run_classify
from gpt.finetune.common import TASK_DEFAULTS, TASKS, FinetuneSettings
from gpt.finetune.dpo import run_dpo
from gpt.finetune.instruct import run_instruct
from gpt.finetune.stories import run_chat
from gpt.train.loop import TrainingError


def build_parser(task: str) -> argparse.ArgumentParser:
    defaults = FinetuneSettings(task=task, init="", **TASK_DEFAULTS[task])
    descriptions = {
        "classify": "Fine-tune a pretrained GPT into a spam classifier (SMS Spam Collection): a "
                    "2-way head on the hidden state of the last non-padding token.",
        "instruct": "Instruction fine-tuning on Alpaca-style records "
                    "(instruction/input/output), the book's prompt layout.",
        "dpo": "Direct preference optimisation on records with chosen/rejected responses, "
               "against a frozen copy of the starting model.",
        "chat": "Supervised fine-tuning into a storyteller: conversations made from the "
                "stories of a corpus, in the chat template (<|user|>, <|assistant|>, <|end|>), "
                "the loss on the assistant's tokens only. python train.py runs it after "
                "pretraining.",
    }
    p = argparse.ArgumentParser(prog=f"train.py {task}", description=descriptions[task],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--init", required=True,
                   help="checkpoint or run directory to start from (pretrained with train.py, "
                        "a Hugging Face GPT-2 directory, or for dpo an instruct run"
                        + ("; for chat, its tokenizer needs the turn tokens, as train.py's has"
                           if task == "chat" else "") + ")")
    p.add_argument("--data", default=defaults.data,
                   help="named data set or a local file (" + {
                       "classify": ".tsv lines 'ham|spam<TAB>text', or the UCI .zip",
                       "instruct": "JSON list or JSONL of instruction/input/output records",
                       "dpo": "JSON list or JSONL of records with instruction, input, chosen, "
                              "rejected",
                       "chat": "a corpus of stories, each followed by <|endoftext|> (a name, a "
                               "file, a directory with train.txt and valid.txt), or a .jsonl of "
                               "conversations from python -m gpt.data.conversations --out"}[task]
                   + ")")
    p.add_argument("--data-dir", default=None, help="download/cache directory")
    opt = p.add_argument_group("optimisation")
    if task != "chat":          # chat counts steps: its data is made for them
        opt.add_argument("--epochs", type=int, default=defaults.epochs,
                         help="passes over the training records")
    opt.add_argument("--max-iters", type=int, default=defaults.max_iters,
                     help="optimizer steps (overrides --epochs)" + (
                         "; as many conversations are made as the steps see, each once"
                         if task == "chat" else ""))
    opt.add_argument("--batch-size", type=int, default=defaults.batch_size,
                     help="records per step")
    opt.add_argument("--lr", type=float, default=defaults.lr, help="(peak) learning rate")
    opt.add_argument("--schedule", choices=("constant", "cosine"), default=defaults.schedule,
                     help="learning rate after the warmup")
    opt.add_argument("--min-lr", type=float, default=defaults.min_lr,
                     help="end of the cosine schedule")
    opt.add_argument("--warmup-iters", type=int, default=defaults.warmup_iters,
                     help="steps of linear learning-rate warmup")
    opt.add_argument("--weight-decay", type=float, default=defaults.weight_decay,
                     help="AdamW's decoupled weight decay (matrices only)")
    opt.add_argument("--grad-clip", type=float, default=defaults.grad_clip,
                     help="clip the global gradient norm (0: off)")
    opt.add_argument("--dropout", type=float, default=defaults.dropout,
                     help="dropout rate of the model while fine-tuning")
    opt.add_argument("--max-length", type=int, default=None,
                     help="tokens per example; longer ones are cut (default: the model's "
                          "context" + (", or the longest training message" if task == "classify"
                                       else "") + ")" + (
                         "; for chat, stories are cut at a sentence and what does not fit "
                         "is left out" if task == "chat" else ""))
    if task != "chat":          # chat checkpoints as it goes: a plain model, no adapters
        lora = p.add_argument_group("LoRA")
        lora.add_argument("--lora-rank", type=int, default=None,
                          help="train rank-R LoRA adapters on every Linear of the blocks "
                               "instead of the weights" + (" (with --trainable lora; default "
                                                           "16)" if task == "classify" else ""))
        lora.add_argument("--lora-alpha", type=float, default=None,
                          help="LoRA scaling numerator: updates are scaled by alpha/rank "
                               "(default: alpha = rank)")
    if task == "classify":
        p.add_argument("--trainable", default=defaults.trainable,
                       help="what learns besides the new head: 'all', 'last-K' (the last K "
                            "blocks and the final LayerNorm; the book trains last-1 of GPT-2), "
                            "or 'lora'")
    if task == "instruct":
        p.add_argument("--mask-prompt", action="store_true",
                       help="no loss on the prompt tokens, only on the response")
    if task in ("instruct", "dpo"):
        p.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens,
                       help="length limit of the test-split responses")
        p.add_argument("--test-responses", type=int, default=None,
                       help="answer only the first N test records (0: none; default all)")
    if task == "chat":
        p.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens,
                       help="length limit of the sample replies at the end")
        p.add_argument("--threads", type=int, default=defaults.threads,
                       help="cores that share each batch (0: one per core)")
    if task == "dpo":
        p.add_argument("--beta", type=float, default=defaults.beta,
                       help="DPO's beta: the larger, the closer the policy stays to the "
                            "reference")
    run = p.add_argument_group("evaluation and output")
    run.add_argument("--eval-interval", type=int, default=defaults.eval_interval,
                     help="evaluate on train and validation batches every N steps")
    run.add_argument("--eval-iters", type=int, default=defaults.eval_iters,
                     help="batches per split in the periodic evaluations")
    run.add_argument("--out-dir", default=defaults.out_dir, help="where run directories go")
    run.add_argument("--run-name", default=None, help="default: task and time")
    run.add_argument("--seed", type=int, default=defaults.seed,
                     help="data split, batch order, new weights, dropout")
    run.add_argument("--no-progress", dest="progress", action="store_false",
                     help="no progress bars")
    return p


def settings_from_args(task: str, argv: Sequence[str]) -> FinetuneSettings:
    args = vars(build_parser(task).parse_args(list(argv)))
    fields = {f.name for f in dataclasses.fields(FinetuneSettings)}
    settings = FinetuneSettings(task=task, **{k: v for k, v in args.items() if k in fields})
    settings.validate()
    return settings


def run_task(settings: FinetuneSettings, log: Callable[[str], None] = print) -> dict:
    """Run one fine-tuning task to the end; returns its results (also in results.json)."""
    settings.validate()
    runners = {"classify": run_classify, "instruct": run_instruct, "dpo": run_dpo,
               "chat": run_chat}
    return runners[settings.task](settings, log)


def main(argv: Sequence[str]) -> int:
    """`train.py <task> [options]`: argv[0] is the task name."""
    if not argv or argv[0] not in TASKS:
        raise TrainingError(f"expected a fine-tuning task ({', '.join(TASKS)}) first")
    run_task(settings_from_args(argv[0], argv[1:]))
    return 0
