"""Chat speed and memory of the Llama family against the machine's limit and against
Hugging Face transformers + PyTorch: decode tokens/s, prefill, time to first token, peak memory.

    python benchmarks/chat_models.py --model qwen3-0.6b --rounds 3
    python benchmarks/chat_models.py --model all --hf-python /tmp/hfvenv/bin/python --rounds 3
    python benchmarks/chat_models.py --threads 1 ...      # both sides on one core

Models: random weights of the real shapes of SmolLM2-360M(-Instruct), Qwen3-0.6B and
Llama-3.2-1B (speed and memory do not depend on what the weights say). Each is written once,
as its hub checkpoint is (config.json and a BF16 model.safetensors), into --dir (default
/tmp/du-chat-models/NAME) and kept for the next run. Both sides load that same file and
compute in float32.

Each round runs, one after another: the machine's copy bandwidth (a large np.copyto split over
two threads, best of 5), ours in a fresh process, then transformers in a fresh process (with
--hf-python: a Python that has torch and transformers; they are not this project's
dependencies, and without the flag that column is skipped). The machine is shared and its
speed drifts, so rounds alternate and the table shows each figure's median over rounds.

What a process does, batch of one, as a chat does:
- load the checkpoint (ours: gpt.load_pretrained; theirs: AutoModelForCausalLM.from_pretrained
  with dtype float32) and report the peak resident memory (VmHWM) after loading;
- warm up on a short prompt;
- time to first token: a --prompt-token prompt of random ids, prefilled into a fresh KV cache,
  and the first token picked greedily; prefill tokens/s is --prompt over that time;
- decode: --new more tokens, one at a time through the cache (greedy); tokens/s over the steps
  after the first token.
Ours goes through gpt.core.generate.generate_tokens, the path chat.py takes; theirs is the
same loop written with the model's forward (logits of the last position only) and a
DynamicCache. --threads sets both sides' threads (ours: Llama.inference_threads; theirs:
torch.set_num_threads); by default each uses one per core.

The limit: decoding one token reads every weight of the model once (the embedding only for
one row, unless it is also the output head), so tokens/s can be no more than copy bandwidth /
bytes of weights. Copy bandwidth counts bytes read plus bytes written, as the STREAM
benchmark does; that is the bound the project aims at (80 % of it). Beside it, the read-only
bound: read bandwidth (two threads summing an array, which only read, as a decode step does)
/ bytes of weights. Where the two differ (on this project's VMs reads alone reach 60-80 % of
the copy figure), the read-only bound is what a decode step can reach at best. The KV cache
read per token (given beside it) is left out of both.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import struct
import sys
import threading
import time
from pathlib import Path

from load_memory import status_kb
from train import _child

ROOT = Path(__file__).resolve().parents[1]
MB = 1 << 20

# The shapes of the hub checkpoints' config.json (SmolLM2-360M-Instruct, Qwen3-0.6B,
# Llama-3.2-1B-Instruct); the keys that do not change what is computed are left out.
_COMMON = {"attention_bias": False, "attention_dropout": 0.0, "hidden_act": "silu",
           "torch_dtype": "bfloat16", "tie_word_embeddings": True, "use_cache": True}
MODELS: dict[str, dict] = {
    "smollm2-360m": {**_COMMON, "architectures": ["LlamaForCausalLM"], "model_type": "llama",
                     "hidden_size": 960, "intermediate_size": 2560, "num_hidden_layers": 32,
                     "num_attention_heads": 15, "num_key_value_heads": 5, "vocab_size": 49152,
                     "max_position_embeddings": 8192, "rms_norm_eps": 1e-05,
                     "rope_theta": 100000, "rope_scaling": None, "mlp_bias": False,
                     "bos_token_id": 1, "eos_token_id": 2},
    "qwen3-0.6b": {**_COMMON, "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
                   "hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28,
                   "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
                   "vocab_size": 151936, "max_position_embeddings": 40960,
                   "rms_norm_eps": 1e-06, "rope_theta": 1000000, "rope_scaling": None,
                   "use_sliding_window": False, "sliding_window": None,
                   "bos_token_id": 151643, "eos_token_id": 151645},
    "llama-3.2-1b": {**_COMMON, "architectures": ["LlamaForCausalLM"], "model_type": "llama",
                     "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
                     "vocab_size": 128256, "max_position_embeddings": 131072,
                     "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "mlp_bias": False,
                     "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0,
                                      "low_freq_factor": 1.0,
                                      "original_max_position_embeddings": 8192,
                                      "rope_type": "llama3"},
                     "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009]},
}


# ----------------------------------------------------------------------------------------------
# The checkpoints: random BF16 weights in the hub's layout


def weight_shapes(hf_config: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor of the Hugging Face checkpoint, name -> shape (Linear weights (out, in)),
    read off our model built without weights."""
    sys.path.insert(0, str(ROOT))
    from autograd.nn import skip_init
    from gpt.core.llama import Llama
    from gpt.io.hf_llama import llama_config_from_hf, llama_hf_state_dict

    with skip_init():
        model = Llama(llama_config_from_hf(hf_config))
    return {name: array.shape for name, array in llama_hf_state_dict(model).items()}


def write_checkpoint(name: str, directory: Path) -> None:
    """config.json and a BF16 model.safetensors of random weights, written tensor by tensor
    (gpt.io.safetensors.save_file holds every tensor at once, and writes no BF16)."""
    import numpy as np

    hf_config = MODELS[name]
    shapes = weight_shapes(hf_config)
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for tensor, shape in sorted(shapes.items()):
        size = 2 * math.prod(shape)
        header[tensor] = {"dtype": "BF16", "shape": list(shape),
                          "data_offsets": [offset, offset + size]}
        offset += size
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    partial = directory / "model.safetensors.partial"
    with open(partial, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)) + header_bytes)
        for tensor, shape in sorted(shapes.items()):
            if len(shape) == 1:                                  # an RMSNorm gain
                values = np.ones(shape, np.float32)
            else:
                values = rng.standard_normal(shape, dtype=np.float32)
                values *= np.float32(0.02)
            f.write((values.view(np.uint32) >> 16).astype(np.uint16).tobytes())  # BF16 bits
    partial.rename(directory / "model.safetensors")
    (directory / "config.json").write_text(json.dumps(hf_config, indent=2))


def weight_bytes_per_token(hf_config: dict) -> int:
    """float32 bytes of the weights one decode step reads: every tensor but the embedding,
    which is read whole only when it is also the output head (one row otherwise)."""
    shapes = weight_shapes(hf_config)
    count = sum(math.prod(s) for n, s in shapes.items() if "embed_tokens" not in n)
    vocab, width = shapes["model.embed_tokens.weight"]
    count += vocab * width if hf_config["tie_word_embeddings"] else width
    return 4 * count


def weight_bytes(hf_config: dict) -> int:
    """float32 bytes of every weight: the model's size in memory."""
    return 4 * sum(math.prod(s) for s in weight_shapes(hf_config).values())


def kv_bytes_per_token(hf_config: dict, context: int) -> int:
    """float32 bytes of the KV cache one decode step reads at `context` cached positions."""
    heads = hf_config["num_key_value_heads"]
    head_dim = hf_config.get("head_dim") or (hf_config["hidden_size"]
                                             // hf_config["num_attention_heads"])
    return 2 * 4 * hf_config["num_hidden_layers"] * heads * head_dim * context


def copy_bandwidth(megabytes: int = 512, repeats: int = 5) -> float:
    """Bytes read plus written per second by np.copyto of a large float32 array, one half per
    thread (both cores; NumPy lets go of the GIL while it copies): the best of `repeats`."""
    import numpy as np

    source = np.ones(megabytes * MB // 4, np.float32)
    target = np.zeros_like(source)
    seconds = _best_split_over_two_threads(lambda h: np.copyto(target[h], source[h]),
                                           source.size, repeats)
    return 2 * source.nbytes / seconds


def read_bandwidth(megabytes: int = 512, repeats: int = 5) -> float:
    """Bytes read per second by np.sum of a large float32 array, one half per thread: how fast
    these cores read memory when they only read, as a decode step does. On some machines
    (this project's 2-core VM) it is well below the copy bandwidth: a copy's stores stream
    out beside its loads, and two cores' loads alone do not fill the memory bus."""
    import numpy as np

    source = np.ones(megabytes * MB // 4, np.float32)
    seconds = _best_split_over_two_threads(lambda h: source[h].sum(), source.size, repeats)
    return source.nbytes / seconds


def _best_split_over_two_threads(work, size: int, repeats: int) -> float:
    """The best wall time of `repeats` runs of work(first half) beside work(second half)."""
    halves = [slice(0, size // 2), slice(size // 2, size)]
    best = math.inf
    for _ in range(repeats):
        threads = [threading.Thread(target=work, args=(h,)) for h in halves]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        best = min(best, time.perf_counter() - start)
    return best


# ----------------------------------------------------------------------------------------------
# One side, in its own process: print one JSON line


def run_ours(directory: str, n_prompt: int, n_new: int, threads: int | None) -> dict:
    sys.path.insert(0, str(ROOT))
    import numpy as np

    from autograd.allocator import keep_freed_memory
    from gpt import load_pretrained
    from gpt.core.generate import SamplingParams, generate_tokens

    keep_freed_memory()                                        # as chat.py does
    row = {"side": "ours", "imports_mb": status_kb("VmRSS") / 1024}
    start = time.perf_counter()
    model = load_pretrained(directory)
    model.inference_threads = threads
    row["load_s"] = time.perf_counter() - start
    row["peak_load_mb"] = status_kb("VmHWM") / 1024
    vocab = model.config.vocab_size
    rng = np.random.default_rng(1)
    greedy = SamplingParams(max_new_tokens=n_new, temperature=0)

    def timed_generation(prompt) -> list[float]:
        """The clock at the start and at each token generated."""
        times = [time.perf_counter()]
        for _ in generate_tokens(model, prompt, greedy):
            times.append(time.perf_counter())
        return times

    timed_generation(rng.integers(0, vocab, 16).tolist())                  # warm-up
    times = timed_generation(rng.integers(0, vocab, n_prompt).tolist())
    return {**row, **_speeds(times, n_prompt), "peak_mb": status_kb("VmHWM") / 1024}


def run_theirs(directory: str, n_prompt: int, n_new: int, threads: int | None) -> dict:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, DynamicCache

    if threads:
        torch.set_num_threads(threads)

    row = {"side": "transformers", "imports_mb": status_kb("VmRSS") / 1024,
           "version": f"transformers {transformers.__version__}, torch {torch.__version__}, "
                      f"{torch.get_num_threads()} threads"}
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    row["load_s"] = time.perf_counter() - start
    row["peak_load_mb"] = status_kb("VmHWM") / 1024
    vocab = model.config.vocab_size
    generator = torch.Generator().manual_seed(1)

    def timed_generation(prompt) -> list[float]:
        times = [time.perf_counter()]
        with torch.inference_mode():
            cache = DynamicCache(config=model.config)
            ids = prompt
            for _ in range(n_new):
                logits = model(input_ids=ids, cache=cache, use_cache=True,
                               logits_to_keep=1).logits
                ids = logits[:, -1].argmax(dim=-1, keepdim=True)         # (1, 1), greedy
                times.append(time.perf_counter())
        return times

    timed_generation(torch.randint(0, vocab, (1, 16), generator=generator))          # warm-up
    times = timed_generation(torch.randint(0, vocab, (1, n_prompt), generator=generator))
    return {**row, **_speeds(times, n_prompt), "peak_mb": status_kb("VmHWM") / 1024}


def _speeds(times: list[float], n_prompt: int) -> dict:
    first = times[1] - times[0]
    steps = [b - a for a, b in zip(times[1:], times[2:])]
    return {"ttft_s": first, "prefill_tps": n_prompt / first,
            "decode_tps": len(steps) / sum(steps),
            "decode_median_tps": 1 / statistics.median(steps)}


# ----------------------------------------------------------------------------------------------
# The rounds and the table


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def bench(name: str, args: argparse.Namespace) -> None:
    directory = Path(args.dir) / name
    if not (directory / "model.safetensors").is_file():
        print(f"writing random BF16 weights of {name}'s shape to {directory} ...", flush=True)
        write_checkpoint(name, directory)
    hf_config = MODELS[name]
    read_per_token = weight_bytes_per_token(hf_config)
    child_args = ["--dir", str(directory), "--prompt", str(args.prompt), "--new", str(args.new),
                  "--threads", str(args.threads or 0)]
    ours, theirs, bandwidths, read_bandwidths = [], [], [], []
    for round_ in range(args.rounds):
        bandwidths.append(copy_bandwidth())
        read_bandwidths.append(read_bandwidth())
        sides = [(ours, sys.executable, "ours")]
        if args.hf_python:
            sides.append((theirs, args.hf_python, "theirs"))
        for runs, python, side in sides[::-1] if round_ % 2 else sides:   # who goes first
            runs.append(_child([python, __file__, "--child", side, *child_args]))
        print(f"  round {round_ + 1} (load {_load()}): copy {bandwidths[-1] / 1e9:.1f} GB/s; "
              f"ours decode {ours[-1]['decode_tps']:.2f} tok/s, prefill "
              f"{ours[-1]['prefill_tps']:.1f} tok/s"
              + (f"; transformers decode {theirs[-1]['decode_tps']:.2f} tok/s, prefill "
                 f"{theirs[-1]['prefill_tps']:.1f} tok/s" if theirs else ""), flush=True)
    bandwidth = statistics.median(bandwidths)
    bound = bandwidth / read_per_token
    read_bound = statistics.median(read_bandwidths) / read_per_token
    context = args.prompt + args.new // 2
    kv_read = kv_bytes_per_token(hf_config, context)
    print(f"\n{name}: weights {weight_bytes(hf_config) / 1e9:.2f} GB float32; one decode step "
          f"reads {read_per_token / 1e9:.2f} GB of weights (+ {kv_read / 1e6:.0f} MB of KV "
          f"cache at {context} positions); copy bandwidth {bandwidth / 1e9:.1f} GB/s (median "
          f"of {args.rounds}) -> bound {bound:.2f} tokens/s; read bandwidth "
          f"{statistics.median(read_bandwidths) / 1e9:.1f} GB/s -> {read_bound:.2f} tokens/s")
    if theirs:
        print(f"transformers side: {theirs[0]['version']}")
    sides = [("ours", ours)] + ([("transformers", theirs)] if theirs else [])
    rows = [(f"decode tokens/s ({args.new - 1} steps)", "decode_tps", "{:.2f}"),
            ("decode tokens/s (the median step)", "decode_median_tps", "{:.2f}"),
            ("  % of the bandwidth bound", bound, "{:.0f} %"),
            ("  % of the read-only bound", read_bound, "{:.0f} %"),
            (f"prefill tokens/s ({args.prompt}-token prompt)", "prefill_tps", "{:.1f}"),
            ("time to first token, s", "ttft_s", "{:.2f}"),
            ("load time, s", "load_s", "{:.1f}"),
            ("peak memory after load, MB", "peak_load_mb", "{:.0f}"),
            ("peak memory at the end, MB", "peak_mb", "{:.0f}")]
    print(f"| {'median of ' + str(args.rounds) + ' rounds':<40} | "
          + " | ".join(f"{label:>12}" for label, _ in sides) + " |")
    print(f"|{'-' * 42}|" + "|".join("-" * 14 for _ in sides) + "|")
    for label, key, fmt in rows:
        cells = []
        for _, runs in sides:
            value = 100 * _median(runs, "decode_median_tps") / key \
                if isinstance(key, float) else _median(runs, key)
            cells.append(fmt.format(value))
        print(f"| {label:<40} | " + " | ".join(f"{c:>12}" for c in cells) + " |")
    print(f"(float32 weights: {weight_bytes(hf_config) / MB:.0f} MB)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen3-0.6b", choices=[*MODELS, "all"])
    parser.add_argument("--hf-python", metavar="PYTHON",
                        help="a Python with torch and transformers: measure them alongside")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompt", type=int, default=500, help="prompt tokens")
    parser.add_argument("--new", type=int, default=33,
                        help="tokens generated (the first comes from the prefill)")
    parser.add_argument("--threads", type=int, default=0,
                        help="threads for both sides (0: one per core)")
    parser.add_argument("--dir", default="/tmp/du-chat-models",
                        help="where the random checkpoints are written and kept")
    parser.add_argument("--child", choices=["ours", "theirs"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.new < 3:
        parser.error("--new must be at least 3 (the first token, then decode steps)")
    if args.child:
        run = run_ours if args.child == "ours" else run_theirs
        print(json.dumps(run(args.dir, args.prompt, args.new, args.threads or None)))
        return
    threads = args.threads or "one per core"
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, threads: {threads}; "
          f"load average {_load()}", flush=True)
    for name in MODELS if args.model == "all" else [args.model]:
        bench(name, args)
        print(f"{time.strftime('%H:%M')}, load average {_load()}\n", flush=True)


def _load() -> str:
    """The 1-, 5- and 15-minute load averages: the machine's other work, which slows both."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
