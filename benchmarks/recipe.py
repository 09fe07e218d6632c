"""Ablations for the main job's recipe: which ideas lower validation bits per byte for the same
training time, on the main job's data (TinyStories, the 4,096-token BPE).

    python benchmarks/recipe.py --list
    python benchmarks/recipe.py --minutes 4 --variants gpt2,llama,muon --jobs 2
    python benchmarks/recipe.py --report                # the table of every result so far

Method. A wall-clock budget on a shared machine measures the load as much as the recipe, so
each variant is measured in two parts that the load cannot mix up:

1. Speed: the CPU time of a training step of the variant's model and optimizer (train.py's
   step: forward, backward, clipping, optimizer, on the main job's batch shape; one thread),
   the median of a few steps, relative to the baseline's. CPU time, unlike wall time, hardly
   depends on what else the machine runs; the variants are measured in turn, in rounds.
2. Quality: `train.py` with the variant's options for as many steps as its speed fits into
   the budget (`--max-iters N`: a schedule in steps, so the run is deterministic and may run
   anywhere, at any load, e.g. two at once on one core each). Then bits per byte of the
   final weights on the whole validation split (gpt.train.evaluate, windows of the model's
   context).

The speeds are the baseline's (`--reference-tokens-per-s`: 7,000 tokens/s, the old default's
3,000 steps of 2,048 tokens in 14.5 minutes as the README measured it) times each variant's
speed ratio, so a variant half as fast as the baseline gets half its steps whatever the load
was: a budget of N minutes is N minutes of the old default's steps. Two limits: one thread's
CPU time understates what a larger model gains from the second thread (data-parallel shards
of bigger matrices scale better), so it is a yardstick for ideas at one size more than across
sizes; and an idle machine runs the old default faster than 7,000 tokens/s, so "N minutes" is
less wall time there. Sizes are compared at the main job's real budget instead
(`--reference-tokens-per-s` set to each size's measured two-thread speed).

Every result is appended to runs/recipe/results.jsonl (one JSON object per run); `--report`
prints them as a table.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "runs" / "recipe" / "results.jsonl"

# The modern recipe's starting point: train.py's options common to every llama variant below.
LLAMA = ["--arch", "llama", "--n-layer", "4", "--n-head", "4", "--n-embd", "128",
         "--block-size", "128", "--batch-size", "16"]
ADAMW = ["--optimizer", "adamw", "--lr", "4e-3", "--min-lr", "4e-4", "--beta1", "0.9",
         "--beta2", "0.99", "--weight-decay", "0.1"]
MUON = ["--optimizer", "muon", "--muon-lr", "0.02", "--lr", "4e-3", "--min-lr", "0",
        "--beta1", "0.8", "--beta2", "0.95", "--weight-decay", "0"]
PLAIN = ["--mlp", "swiglu", "--no-qk-norm", "--no-untied-head", "--no-zero-init-proj"]
ALL = LLAMA + MUON + ["--mlp", "relu2", "--qk-norm", "--untied-head", "--zero-init-proj",
                      "--schedule", "wsd", "--decay-fraction", "0.3"]

# name: (idea, train.py options). Later options override earlier ones, as on the command line.
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "gpt2": ("GPT-2 4x128, context 128, AdamW cosine (the old default, as a budget)",
             ["--recipe", "gpt2"]),
    "llama": ("RoPE + RMSNorm, no biases, SwiGLU, tied head (same size, AdamW cosine)",
              LLAMA + PLAIN + ADAMW + ["--schedule", "cosine"]),
    "relu2": ("+ ReLU² instead of SwiGLU",
              LLAMA + PLAIN + ADAMW + ["--schedule", "cosine", "--mlp", "relu2"]),
    "qknorm": ("+ QK-norm", LLAMA + PLAIN + ADAMW + ["--schedule", "cosine", "--qk-norm"]),
    "untied": ("+ untied head", LLAMA + PLAIN + ADAMW + ["--schedule", "cosine", "--untied-head"]),
    "zeroinit": ("+ zero-init output projections",
                 LLAMA + PLAIN + ADAMW + ["--schedule", "cosine", "--zero-init-proj"]),
    "muon": ("+ Muon for the block matrices (AdamW for the rest), cosine",
             LLAMA + PLAIN + MUON + ["--schedule", "cosine"]),
    "wsd": ("+ warmup-stable-decay instead of cosine (AdamW)",
            LLAMA + PLAIN + ADAMW + ["--schedule", "wsd", "--decay-fraction", "0.3"]),
    "all128": ("all of the above: ReLU², QK-norm, untied head, zero-init, Muon, wsd",
               ALL),
    # Each idea taken out of all128 again: does it still pay among the others?
    "all-swiglu": ("all128 with SwiGLU instead of ReLU²", ALL + ["--mlp", "swiglu"]),
    "all-noqk": ("all128 without QK-norm", ALL + ["--no-qk-norm"]),
    "all-tied": ("all128 with the head tied to the embedding", ALL + ["--no-untied-head"]),
    "all-nozero": ("all128 without zero-init projections", ALL + ["--no-zero-init-proj"]),
    "all-cosine": ("all128 with a cosine schedule instead of wsd", ALL + ["--schedule", "cosine"]),
    # Learning rates
    "all-muon04": ("all128, Muon lr 0.04", ALL + ["--muon-lr", "0.04"]),
    "all-muon01": ("all128, Muon lr 0.01", ALL + ["--muon-lr", "0.01"]),
    "all-emb": ("all128, AdamW lr 0.02 for the embedding, 0.004 for the head",
                ALL + ["--embedding-lr", "0.02", "--head-lr", "0.004"]),
    "all-adam8": ("all128, AdamW lr 8e-3 (embedding, head, gains)", ALL + ["--lr", "8e-3"]),
    # Size, context and batch
    "w192c256": ("all128 at 4 x 192, context 256",
                 ALL + ["--n-embd", "192", "--block-size", "256"]),
    "w192c128": ("all128 at 4 x 192, context 128, batch 32",
                 ALL + ["--n-embd", "192", "--batch-size", "32"]),
    "w256c256": ("all128 at 4 x 256, context 256",
                 ALL + ["--n-embd", "256", "--block-size", "256"]),
    "l6w192c256": ("all128 at 6 x 192, context 256",
                   ALL + ["--n-layer", "6", "--n-embd", "192", "--block-size", "256"]),
    "w192": ("all128 at 4 x 192", ALL + ["--n-embd", "192"]),
    "c256": ("all128 with context 256, batch 8",
             ALL + ["--block-size", "256", "--batch-size", "8"]),
    "l6": ("all128 with 6 layers", ALL + ["--n-layer", "6"]),
    "b8w192c256": ("all128 at 4 x 192, context 256, batch 8",
                   ALL + ["--n-embd", "192", "--block-size", "256", "--batch-size", "8"]),
}


def load_train_py():
    spec = importlib.util.spec_from_file_location("train_main", ROOT / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def settings_of(options: list[str]):
    return load_train_py().parse_settings(options)[0]


# ----------------------------------------------------------------------------------------------
# 1. Speed


def step_seconds(options: list[str], steps: int) -> float:
    """Median CPU seconds of a training step of the variant, in one thread (runs in a child
    process)."""
    from autograd.allocator import keep_freed_memory
    from autograd.optim import clip_grad_norm
    from autograd.parallel import limit_blas_threads
    from gpt.train.loop import backward_batches
    from gpt.train.pretrain import build_model, build_optimizer

    keep_freed_memory()
    settings = settings_of(options)
    model = build_model(settings, settings.vocab_size)
    optimizer = build_optimizer(model, settings)
    params = model.parameters()
    rng = np.random.default_rng(0)
    block = model.config.block_size
    batches = [(rng.integers(0, settings.vocab_size, (settings.batch_size, block)),
                rng.integers(0, settings.vocab_size, (settings.batch_size, block)))
               for _ in range(settings.grad_accum)]
    times = []
    with limit_blas_threads(1):
        for index in range(steps + 2):           # two steps of warm-up
            start = time.process_time()
            model.zero_grad()
            backward_batches(None, model.loss, batches, params, 0, 0)
            clip_grad_norm(params, settings.grad_clip)
            optimizer.step()
            if index >= 2:
                times.append(time.process_time() - start)
    return float(np.median(times))


def measure_speeds(names: list[str], baseline: str, rounds: int, steps: int) -> dict[str, float]:
    """Each variant's tokens/s relative to the baseline's, measured in alternation."""
    ratios: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        base = _child_seconds(baseline, steps)
        for name in names:
            seconds = base if name == baseline else _child_seconds(name, steps)
            ratios[name].append((tokens_per_step(name) / seconds) /
                                (tokens_per_step(baseline) / base))
    return {name: float(np.median(r)) for name, r in ratios.items()}


def _child_seconds(name: str, steps: int) -> float:
    out = subprocess.run([sys.executable, __file__, "--time-step", name, "--steps", str(steps)],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def tokens_per_step(name: str) -> int:
    from gpt.train.pretrain import model_config
    settings = settings_of(VARIANTS[name][1])
    block = model_config(settings, settings.vocab_size).block_size
    return settings.batch_size * settings.grad_accum * block


# ----------------------------------------------------------------------------------------------
# 2. Quality


def run_variant(name: str, steps: int, out_dir: Path, tag: str) -> dict:
    """Train the variant for `steps` steps (one thread) and evaluate it on all of val."""
    from gpt.io.checkpoint import load_pretrained, load_tokenizer_from, load_training_state
    from gpt.train.evaluate import evaluate_loss, load_eval_data, token_byte_lengths

    run_name = f"{tag}-{name}"
    warmup = max(10, steps // 20)
    command = [sys.executable, str(ROOT / "train.py"), *VARIANTS[name][1],
               "--max-iters", str(steps), "--max-minutes", "0", "--warmup-iters", str(warmup),
               "--eval-interval", str(-(-steps // 4)), "--eval-iters", "20",
               "--sample-tokens", "0", "--threads", "1", "--chat-iters", "0",
               "--out-dir", str(out_dir), "--run-name", run_name, "--no-progress"]
    started = time.perf_counter()
    directory = out_dir / run_name
    checkpoint = directory / "latest"
    if (checkpoint / "complete.json").is_file():
        # A run of this name saved before: finished (nothing to do), or stopped (go on).
        _, state = load_training_state(checkpoint)
        command = None if state["step"] >= steps else \
            [sys.executable, str(ROOT / "train.py"), "--resume", str(directory), "--no-progress"]
    if command is not None:
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{name}: train.py failed: {done.stderr.strip()[-500:]}")
    minutes = (time.perf_counter() - started) / 60
    model, tokenizer = load_pretrained(checkpoint), load_tokenizer_from(checkpoint)
    data = load_eval_data("tinystories", tokenizer, progress=False)
    result = evaluate_loss(model, data, "val", batch_size=16, average="tokens",
                           token_bytes=token_byte_lengths(tokenizer))
    return {"name": name, "idea": VARIANTS[name][0], "steps": steps,
            "val_loss": result.loss, "val_bpb": result.bits_per_byte,
            "params": model.num_parameters(), "run_minutes": minutes,
            "command": "python train.py " + " ".join(VARIANTS[name][1])}


# ----------------------------------------------------------------------------------------------


def report(path: Path = RESULTS) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    print("| idea | val bits/byte | tokens/s | steps | params | budget | command |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['idea']} ({r['name']}) | {r['val_bpb']:.4f} | {r['tokens_per_s']:,.0f} | "
              f"{r['steps']} | {r['params'] / 1e6:.2f}M | {r['minutes']:g} min | "
              f"`{r['command']}` |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="comma-separated names (see --list)")
    parser.add_argument("--baseline", default="gpt2")
    parser.add_argument("--minutes", type=float, default=4.0, help="the budget of each run")
    parser.add_argument("--reference-tokens-per-s", type=float, default=7000.0,
                        help="the baseline's speed on an idle machine, two threads")
    parser.add_argument("--rounds", type=int, default=2, help="speed measurement rounds")
    parser.add_argument("--steps", type=int, default=4, help="steps timed per measurement")
    parser.add_argument("--jobs", type=int, default=2, help="quality runs at once (1 core each)")
    parser.add_argument("--out-dir", default=str(ROOT / "runs" / "recipe"))
    parser.add_argument("--tag", default=time.strftime("%H%M"))
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--time-step", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.time_step:
        print(step_seconds(VARIANTS[args.time_step][1], args.steps))
        return
    if args.list:
        for name, (idea, options) in VARIANTS.items():
            print(f"{name:10} {idea}\n{'':10} {' '.join(options)}")
        return
    if args.report:
        report()
        return
    names = args.variants.split(",")
    unknown = [n for n in names + [args.baseline] if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; see --list")
    ratios = measure_speeds(names, args.baseline, args.rounds, args.steps)
    reference = args.reference_tokens_per_s
    plan = {}
    for name in names:
        speed = reference * ratios[name]
        plan[name] = (speed, max(20, round(args.minutes * 60 * speed / tokens_per_step(name))))
        print(f"{name}: {speed:,.0f} tokens/s ({ratios[name]:.2f}x {args.baseline}) -> "
              f"{plan[name][1]} steps", flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)

    def one(name: str) -> dict | None:
        try:
            result = run_variant(name, plan[name][1], Path(args.out_dir), args.tag)
        except SystemExit as error:          # one failed run does not stop the others
            print(error, flush=True)
            return None
        result.update(tokens_per_s=plan[name][0], minutes=args.minutes,
                      speed_ratio=ratios[name], date=time.strftime("%Y-%m-%d %H:%M"))
        with open(RESULTS, "a", encoding="utf-8") as f:
            f.write(json.dumps(result) + "\n")
        print(f"{name}: val bpb {result['val_bpb']:.4f} after {result['steps']} steps "
              f"({result['run_minutes']:.1f} min of one core)", flush=True)
        return result

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(one, names))
    report()


if __name__ == "__main__":
    main()
