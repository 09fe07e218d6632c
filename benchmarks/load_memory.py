"""How much memory does loading a GPT-2 checkpoint take? Peak resident set vs the file size.

    python benchmarks/load_memory.py                    # GPT-2 124M shape, random weights
    python benchmarks/load_memory.py --preset gpt2-medium --dir /tmp/du-355m
    python benchmarks/load_memory.py --ckpt ~/.cache/deep-understanding/models/gpt2   # real ones

Real GPT-2 weights need a download; the shape is what matters for memory, so by default this
writes random weights of the 124M shape with our own exporter (`save_pretrained`, ~500 MB, in
/tmp unless --dir says otherwise; kept for the next run) and an F16 copy of them.

Each way of loading runs in a fresh Python process, which reports its resident set (RSS) after
the imports, and its peak RSS (`VmHWM`, the figure `ru_maxrss` gives) after loading, after
reading every weight once (every page of the file is then resident), and after one forward
pass over 64 tokens. The methods:

- `from_pretrained`: what the project does. The file is memory-mapped copy-on-write and the
  parameters are views of it; the model is built under `skip_init()`, so nothing is drawn at
  random and thrown away. Pages come in as they are read, and count once.
- `init+copy`: the naive way, for comparison: build `GPT(config)` with its random
  initialisation, then `load_state_dict` copies the mapped arrays into it. The random draws
  make float64 temporaries, and the model's own arrays are a second copy of the file.
- `from_pretrained` on the F16 file: widening to float32 makes new arrays (a copy cannot be
  avoided: NumPy computes in float32), so memory is twice the F16 file.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

MB = 1 << 20


def status_kb(field: str) -> int:
    """A field of /proc/self/status in kB (VmRSS: resident now; VmHWM: peak resident)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def child(method: str, directory: str) -> None:
    """Measure one way of loading, in this (fresh) process; print one JSON line."""
    import numpy as np

    from autograd import no_grad
    from autograd.allocator import keep_freed_memory
    from gpt import GPT
    from gpt.io.checkpoint import load_pretrained, read_config, weights_from_hf
    from gpt.io.safetensors import load_file

    keep_freed_memory()                   # as chat.py does before it loads a model
    row = {"method": method, "after_imports_mb": status_kb("VmRSS") / 1024}
    start = time.perf_counter()
    if method == "init+copy":
        model = GPT(read_config(Path(directory)))
        state = weights_from_hf(load_file(Path(directory) / "model.safetensors"), directory)
        model.load_state_dict(state)
        del state
    else:
        model = load_pretrained(directory)
    row["load_seconds"] = time.perf_counter() - start
    row["peak_after_load_mb"] = status_kb("VmHWM") / 1024
    checksum = sum(float(p.data.sum(dtype=np.float64)) for p in model.parameters())
    row["peak_after_reading_all_mb"] = status_kb("VmHWM") / 1024
    with no_grad():
        model(np.arange(64)[None] % model.config.vocab_size)
    row["peak_after_forward_mb"] = status_kb("VmHWM") / 1024
    row["rss_end_mb"] = status_kb("VmRSS") / 1024
    row["checksum"] = checksum
    print(json.dumps(row))


def write_random_checkpoint(preset: str, directory: Path) -> None:
    """Random weights of a preset's shape, written by our exporter (and an F16 copy)."""
    import numpy as np

    from autograd.nn import skip_init
    from gpt import GPT, GPTConfig, save_pretrained
    from gpt.io.safetensors import load_file, save_file

    rng = np.random.default_rng(0)
    with skip_init():                     # shapes only; filled below, tensor by tensor
        model = GPT(GPTConfig.preset(preset))
    for p in model.parameters():
        p.data[...] = rng.standard_normal(p.shape, dtype=np.float32) * 0.02
    save_pretrained(model, directory / "f32")
    del model
    half = directory / "f16"
    half.mkdir(parents=True, exist_ok=True)
    (half / "config.json").write_bytes((directory / "f32" / "config.json").read_bytes())
    tensors = load_file(directory / "f32" / "model.safetensors")
    save_file({k: a.astype(np.float16) for k, a in tensors.items()},
              half / "model.safetensors", metadata={"format": "pt"})


def run_child(method: str, directory: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", method, str(directory)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="gpt2", help="GPTConfig preset for the random weights")
    p.add_argument("--dir", default=None, help="where to write them (default /tmp/du-load-<preset>)")
    p.add_argument("--ckpt", default=None, help="measure this checkpoint directory instead")
    p.add_argument("--no-naive", action="store_true", help="skip the init+copy comparison")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(*args.child)
        return

    runs: list[tuple[str, Path]] = []
    if args.ckpt:
        runs.append(("from_pretrained", Path(args.ckpt).expanduser()))
        if not args.no_naive:
            runs.append(("init+copy", Path(args.ckpt).expanduser()))
    else:
        base = Path(args.dir or f"/tmp/du-load-{args.preset}")
        if not (base / "f16" / "model.safetensors").is_file():
            print(f"writing random {args.preset} weights to {base} ...", flush=True)
            write_random_checkpoint(args.preset, base)
        runs.append(("from_pretrained", base / "f32"))
        if not args.no_naive:
            runs.append(("init+copy", base / "f32"))
        runs.append(("from_pretrained", base / "f16"))

    print(f"{'method':<16} {'file':>10} {'file MB':>8} {'imports':>8} {'load':>8} "
          f"{'+read all':>10} {'+forward':>9} {'(peak-imports)/file':>20} {'load s':>7}")
    for method, directory in runs:
        size = os.path.getsize(directory / "model.safetensors") / MB
        row = run_child(method, directory)
        peak = row["peak_after_forward_mb"]
        ratio = (row["peak_after_reading_all_mb"] - row["after_imports_mb"]) / size
        kind = "F16" if directory.name == "f16" else "F32"
        print(f"{method:<16} {kind:>10} {size:8.0f} {row['after_imports_mb']:8.0f} "
              f"{row['peak_after_load_mb']:8.0f} {row['peak_after_reading_all_mb']:10.0f} "
              f"{peak:9.0f} {ratio:20.2f} {row['load_seconds']:7.2f}")
    print("(MB of peak resident memory, VmHWM = ru_maxrss; 'imports' is the RSS before loading; "
          "the ratio is measured after every weight was read)")


if __name__ == "__main__":
    main()
