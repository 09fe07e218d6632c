#!/usr/bin/env python3
"""Pretrain a GPT from scratch (the main job), or fine-tune one.

    python train.py                                   # TinyStories, BPE 4096, ~15 minutes:
                                                      # pretraining, then a storyteller
    python train.py --data tinyshakespeare --tokenizer char --preset shakespeare-char
    python train.py --resume runs/20261125-120000     # continue a run exactly where it stopped
    python train.py classify --init runs/X            # fine-tune: spam classifier
    python train.py instruct --init runs/X            #            instruction following
    python train.py dpo --init runs/Y                 #            preference tuning
    python train.py chat --init runs/X                #            a storyteller

All the logic lives in the gpt package (gpt.train.pretrain, whose loop is gpt.train.loop, then
the chat stage of gpt.finetune.stories); this file only reads the command line. A training
script of one page to read first: examples/train_shakespeare.py.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

from autograd.allocator import keep_freed_memory
from gpt.cli import fail_cleanly
from gpt.finetune.cli import main as finetune_main
from gpt.finetune.common import TASKS as FINETUNE_TASKS
from gpt.finetune.stories import pretrain_then_chat
from gpt.train.pretrain import TrainSettings

# `python train.py <task> ...` runs a fine-tuning task instead (gpt.finetune.cli).
# Defaults of the main job, chosen for a 2-core laptop CPU (see the README's figures).
MAIN_JOB = dict(data="tinystories", tokenizer="bpe", vocab_size=4096)


def build_parser() -> argparse.ArgumentParser:
    defaults = TrainSettings(**MAIN_JOB)
    p = argparse.ArgumentParser(
        description="Pretrain a GPT from scratch on a text corpus (NumPy only). Fine-tuning: "
                    "python train.py classify|instruct|dpo|chat --help",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = p.add_argument_group("data")
    data.add_argument("--data", default=defaults.data,
                      help="corpus name (tinystories, tinyshakespeare, the-verdict) or a local "
                           "text file, or a directory with train.txt and valid.txt")
    data.add_argument("--data-dir", default=None,
                      help="download/cache directory (default $DU_DATA_DIR or "
                           "~/.cache/deep-understanding)")
    data.add_argument("--tokenizer", default=defaults.tokenizer,
                      help="'bpe' (train a byte-level BPE on the corpus), 'char', 'gpt2', or "
                           "a tokenizer file / checkpoint directory")
    data.add_argument("--vocab-size", type=int, default=defaults.vocab_size,
                      help="vocabulary size of a trained BPE")
    model = p.add_argument_group("model")
    model.add_argument("--preset", default=defaults.preset,
                       help="start from a GPTConfig preset (e.g. shakespeare-char, gpt2); the "
                            "size options below override it")
    model.add_argument("--n-layer", type=int, default=None,
                       help="default: the preset's, else gpt.train.pretrain.DEFAULT_MODEL's")
    model.add_argument("--n-head", type=int, default=None,
                       help="default: the preset's, else gpt.train.pretrain.DEFAULT_MODEL's")
    model.add_argument("--n-embd", type=int, default=None,
                       help="default: the preset's, else gpt.train.pretrain.DEFAULT_MODEL's")
    model.add_argument("--block-size", type=int, default=None,
                       help="context length in tokens (default: the preset's, else "
                            "gpt.train.pretrain.DEFAULT_MODEL's)")
    model.add_argument("--dropout", type=float, default=defaults.dropout)
    model.add_argument("--no-bias", dest="bias", action="store_false",
                       help="no biases in Linear and LayerNorm layers")
    model.add_argument("--init", default=None,
                       help="initialise from a checkpoint or Hugging Face GPT-2 directory")
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--batch-size", type=int, default=defaults.batch_size)
    opt.add_argument("--grad-accum", type=int, default=defaults.grad_accum,
                     help="micro-batches per optimizer step")
    opt.add_argument("--max-iters", type=int, default=defaults.max_iters,
                     help="optimizer steps in the whole run (the schedule's length)")
    opt.add_argument("--lr", type=float, default=defaults.lr, help="peak learning rate")
    opt.add_argument("--min-lr", type=float, default=defaults.min_lr,
                     help="learning rate at the end of the cosine decay")
    opt.add_argument("--warmup-iters", type=int, default=defaults.warmup_iters)
    opt.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    opt.add_argument("--beta1", type=float, default=defaults.beta1)
    opt.add_argument("--beta2", type=float, default=defaults.beta2)
    opt.add_argument("--grad-clip", type=float, default=defaults.grad_clip,
                     help="clip the global gradient norm to this (0: no clipping)")
    chat = p.add_argument_group("chat stage (after pretraining, when the tokenizer is a trained "
                                "BPE and the corpus is stories: gpt.finetune.stories)")
    chat.add_argument("--chat-iters", type=int, default=defaults.chat_iters,
                      help="steps of fine-tuning on conversations made from the corpus, into "
                           "the storyteller that chat.py opens; the plain pretrained model "
                           "is kept in RUN/pretrained (0: no chat stage)")
    chat.add_argument("--chat-lr", type=float, default=defaults.chat_lr,
                      help="its peak learning rate")
    run = p.add_argument_group("evaluation and output")
    run.add_argument("--eval-interval", type=int, default=defaults.eval_interval,
                     help="evaluate, sample and checkpoint every N steps")
    run.add_argument("--eval-iters", type=int, default=defaults.eval_iters,
                     help="batches per split in each evaluation")
    run.add_argument("--sample-tokens", type=int, default=defaults.sample_tokens,
                     help="tokens of text sampled at each evaluation (0: none)")
    run.add_argument("--sample-prompt", default=defaults.sample_prompt)
    run.add_argument("--out-dir", default=defaults.out_dir, help="where run directories go")
    run.add_argument("--run-name", default=None, help="run directory name (default: the time)")
    run.add_argument("--seed", type=int, default=defaults.seed)
    run.add_argument("--threads", type=int, default=defaults.threads,
                     help="cores to use: threads that share each batch, each running its "
                          "shard's matrix products on one core (0: one per core; 1 when "
                          "another job needs the other core)")
    run.add_argument("--stop-after", type=int, default=None,
                     help="stop after this step with a checkpoint (resume later with --resume); "
                          "the chat stage's steps count on after pretraining's")
    run.add_argument("--resume", default=None, metavar="RUN_DIR",
                     help="continue the run in RUN_DIR exactly where it stopped")
    run.add_argument("--no-progress", dest="progress", action="store_false",
                     help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    keep_freed_memory()         # malloc keeps the step's freed arrays for the next step
    if argv and argv[0] in FINETUNE_TASKS:
        return finetune_main(argv)
    args = vars(build_parser().parse_args(argv))
    resume = args.pop("resume")
    fields = {f.name for f in dataclasses.fields(TrainSettings)}
    settings = TrainSettings(**{k: v for k, v in args.items() if k in fields})
    pretrain_then_chat(settings, resume=resume)
    return 0


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
