#!/usr/bin/env python3
"""Pretrain a GPT from scratch (the main job), or fine-tune one.

    python train.py                                   # TinyStories, BPE 4096, ~15 minutes:
                                                      # pretraining, then a storyteller
    python train.py --recipe gpt2                     # the book's GPT-2 recipe (the old default)
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
from gpt.train.loop import SCHEDULES, TrainingError
from gpt.train.pretrain import RECIPES, TrainSettings

# `python train.py <task> ...` runs a fine-tuning task instead (gpt.finetune.cli).
# Defaults of the main job, chosen for a 2-core laptop CPU (see the README's figures); the
# model and its training come from the recipe (gpt.train.pretrain.RECIPES).
MAIN_JOB = dict(data="tinystories", tokenizer="bpe", vocab_size=4096)
MAIN_RECIPE = "modern"


def build_parser(recipe: str = MAIN_RECIPE) -> argparse.ArgumentParser:
    defaults = TrainSettings(**MAIN_JOB, **RECIPES[recipe])
    p = argparse.ArgumentParser(
        description="Pretrain a GPT from scratch on a text corpus (NumPy only). Fine-tuning: "
                    "python train.py classify|instruct|dpo|chat --help",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--recipe", choices=list(RECIPES), default=recipe,
                   help="the defaults of every option below: 'modern' (the Llama-style model "
                        "with Muon, a budget in minutes) or 'gpt2' (the book's GPT-2 with "
                        "AdamW, a budget in steps: the old default, and what --preset "
                        "implies); shown here for the recipe given")
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
    model.add_argument("--arch", choices=["gpt2", "llama"], default=defaults.arch,
                       help="gpt2: learned positions, LayerNorm, GELU, tied head; llama: "
                            "rotary positions, RMSNorm, no biases and the options below")
    model.add_argument("--preset", default=defaults.preset,
                       help="start from a GPTConfig preset (e.g. shakespeare-char, gpt2), "
                            "with the gpt2 recipe unless --recipe says otherwise; the size "
                            "options below override it")
    model.add_argument("--n-layer", type=int, default=defaults.n_layer,
                       help="default: the preset's, else gpt.train.pretrain.DEFAULT_MODEL's")
    model.add_argument("--n-head", type=int, default=defaults.n_head,
                       help="default: the preset's, else gpt.train.pretrain.DEFAULT_MODEL's")
    model.add_argument("--n-embd", type=int, default=defaults.n_embd,
                       help="default: the preset's, else gpt.train.pretrain.DEFAULT_MODEL's")
    model.add_argument("--block-size", type=int, default=defaults.block_size,
                       help="context length in tokens (default: the preset's, else "
                            "gpt.train.pretrain.DEFAULT_MODEL's)")
    model.add_argument("--dropout", type=float, default=defaults.dropout)
    model.add_argument("--no-bias", dest="bias", action="store_false",
                       help="gpt2: no biases in Linear and LayerNorm layers")
    llama = p.add_argument_group("model, --arch llama")
    llama.add_argument("--n-kv-head", type=int, default=defaults.n_kv_head,
                       help="key/value heads, shared by groups of query heads (default: n_head)")
    llama.add_argument("--mlp", choices=["relu2", "swiglu"], default=defaults.mlp,
                       help="relu2: down(relu(up(x))^2); swiglu: down(silu(gate(x)) * up(x))")
    llama.add_argument("--intermediate-size", type=int, default=defaults.intermediate_size,
                       help="the MLP's width (default: 4 n_embd for relu2, 8/3 n_embd for "
                            "swiglu)")
    llama.add_argument("--qk-norm", action=argparse.BooleanOptionalAction,
                       default=defaults.qk_norm, help="RMSNorm of each head's queries and keys")
    llama.add_argument("--untied-head", action=argparse.BooleanOptionalAction,
                       default=defaults.untied_head,
                       help="an output head of its own (--no-untied-head: the token embedding)")
    llama.add_argument("--zero-init-proj", action=argparse.BooleanOptionalAction,
                       default=defaults.zero_init_proj,
                       help="the blocks' output projections start at zero")
    llama.add_argument("--softcap", type=float, default=defaults.softcap,
                       help="cap logits smoothly at +-this (cap * tanh(logits / cap))")
    llama.add_argument("--rope-theta", type=float, default=defaults.rope_theta,
                       help="RoPE's base: the slowest rotation's wavelength")
    model.add_argument("--init", default=None,
                       help="initialise from a checkpoint or Hugging Face GPT-2 directory")
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--batch-size", type=int, default=defaults.batch_size)
    opt.add_argument("--grad-accum", type=int, default=defaults.grad_accum,
                     help="micro-batches per optimizer step")
    opt.add_argument("--max-iters", type=int, default=defaults.max_iters,
                     help="optimizer steps in the whole run (0: none; with --max-minutes "
                          "too, the one reached first ends the run and its schedule)")
    opt.add_argument("--max-minutes", type=float, default=defaults.max_minutes,
                     help="wall-clock budget of the training loop, evaluations included (0: "
                          "none): the schedule decays to its end there")
    opt.add_argument("--optimizer", choices=["adamw", "muon"], default=defaults.optimizer,
                     help="adamw for everything, or muon for the blocks' matrices with AdamW "
                          "for embedding, head and gains")
    opt.add_argument("--lr", type=float, default=defaults.lr,
                     help="AdamW's peak learning rate (with muon: of the gains)")
    opt.add_argument("--min-lr", type=float, default=defaults.min_lr,
                     help="--lr's value at the end of the decay; every other learning rate "
                          "ends at the same fraction of its peak")
    opt.add_argument("--muon-lr", type=float, default=defaults.muon_lr,
                     help="muon: peak learning rate of the blocks' matrices")
    opt.add_argument("--muon-momentum", type=float, default=defaults.muon_momentum)
    opt.add_argument("--embedding-lr", type=float, default=defaults.embedding_lr,
                     help="muon: AdamW's peak learning rate of the token embedding "
                          "(default: --lr)")
    opt.add_argument("--head-lr", type=float, default=defaults.head_lr,
                     help="muon: AdamW's peak learning rate of an untied head (default: --lr)")
    opt.add_argument("--schedule", choices=SCHEDULES,
                     default=defaults.schedule,
                     help="after warmup: cosine decay, or wsd (constant, then a linear decay "
                          "over the last --decay-fraction of the run), or constant")
    opt.add_argument("--decay-fraction", type=float, default=defaults.decay_fraction,
                     help="wsd: the fraction of the run spent decaying")
    opt.add_argument("--warmup-iters", type=int, default=defaults.warmup_iters)
    opt.add_argument("--weight-decay", type=float, default=defaults.weight_decay,
                     help="AdamW's decoupled weight decay of matrices (with muon: of the "
                          "embedding and head)")
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


# Reads --recipe (and --preset) alone, to know the defaults of the full parser (which checks
# their values). A preset is a GPT-2 shape: without --recipe it implies the gpt2 recipe.
RECIPE_PARSER = argparse.ArgumentParser(add_help=False)
RECIPE_PARSER.add_argument("--recipe")
RECIPE_PARSER.add_argument("--preset")


def parse_settings(argv: list[str]) -> tuple[TrainSettings, str | None]:
    """(settings, the run directory to resume or None) from pretraining's command line."""
    known = RECIPE_PARSER.parse_known_args(argv)[0]
    recipe = known.recipe or ("gpt2" if known.preset else MAIN_RECIPE)
    # An unknown recipe: the full parser, of the main recipe's defaults, refuses it by name.
    args = vars(build_parser(recipe if recipe in RECIPES else MAIN_RECIPE).parse_args(argv))
    for name in ("max_iters", "max_minutes"):          # 0: no limit of that kind
        if args[name] == 0:
            args[name] = None
    fields = {f.name for f in dataclasses.fields(TrainSettings)}
    return TrainSettings(**{k: v for k, v in args.items() if k in fields}), args["resume"]


# What may change when a run is resumed: when it stops and how it shows progress. Anything
# else is the saved run's, and giving it again would be silently ignored: it is refused.
RESUME_OPTIONS = ("--resume", "--stop-after", "--no-progress")


def refuse_ignored_options(argv: list[str]) -> None:
    """With --resume, refuse options that the saved run's settings would override."""
    given = [arg.split("=")[0] for arg in argv if arg.startswith("--")]
    ignored = [arg for arg in given if arg not in RESUME_OPTIONS]
    if "--resume" in given and ignored:
        raise TrainingError(f"--resume continues a run with its saved settings; "
                            f"{', '.join(ignored)} would be ignored (only --stop-after and "
                            f"--no-progress may change): drop {'it' if len(ignored) == 1 else 'them'}"
                            f", or start a new run")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    keep_freed_memory()         # malloc keeps the step's freed arrays for the next step
    if argv and argv[0] in FINETUNE_TASKS:
        return finetune_main(argv)
    refuse_ignored_options(argv)
    settings, resume = parse_settings(argv)
    pretrain_then_chat(settings, resume=resume)
    return 0


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
