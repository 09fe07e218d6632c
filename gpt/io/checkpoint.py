"""Checkpoints: a directory a model can be rebuilt from, and a run can resume from.

    config.json          the model's shape, in Hugging Face GPT-2 keys plus our own
    model.safetensors    the weights, named as Hugging Face names GPT-2's (`transformer.h.0...`)
                         (or shards and model.safetensors.index.json, as large models come)
    tokenizer.du.json    our tokenizer file (Hugging Face's `tokenizer.json` is another format)
    vocab.json, merges.txt   GPT-2's tokenizer files, when the tokenizer is GPT-2's
    optimizer.npz        optimizer state (training checkpoints only)
    train_state.json     step, best validation loss, settings (training checkpoints only)

The first two are exactly what `transformers.GPT2LMHeadModel.from_pretrained` reads, so a
directory written by `save_pretrained` opens there, and a Hugging Face GPT-2 directory opens here.
The Llama family (gpt.core.llama: Llama 3, SmolLM2, Qwen3) uses the same files in Hugging Face's
Llama/Qwen3 layout; config.json's model_type says which family, and gpt.io.hf_llama maps it.

A training run directory holds two checkpoints, `latest/` and `best/` (lowest validation loss).
Each is written to a temporary directory first and swapped into place with renames, so a run
killed at any moment leaves the previous checkpoint whole.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from autograd.nn import skip_init
from autograd.optim import join_arrays, split_arrays
from bpe import Tokenizer, load_tokenizer
from bpe.gpt2 import find_gpt2_files, gpt2_files_problem, save_gpt2_files
from bpe.huggingface import load_hf_tokenizer
from gpt.core.config import GPTConfig
from gpt.core.llama import Llama, LlamaConfig
from gpt.core.model import GPT
from gpt.errors import GPTError
from gpt.io.files import atomic_write, default_model_dir
from gpt.io.hf_llama import (LLAMA_MODEL_TYPES, is_llama_config, llama_config_from_hf,
                              llama_config_to_hf, llama_hf_state_dict, llama_weights_from_hf,
                              to_our_layout)
from gpt.io.safetensors import SafetensorsError, load_file, load_sharded, save_file

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"     # the shards of a large checkpoint
TOKENIZER_FILE = "tokenizer.du.json"
OPTIMIZER_FILE = "optimizer.npz"
STATE_FILE = "train_state.json"
HF_PREFIX = "transformer."
# Buffers (the causal mask) that some GPT-2 checkpoints store: not parameters, skipped.
_HF_BUFFER = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")
# What a downloadable model's name looks like: "gpt2-medium" or a Hugging Face id "ORG/NAME".
_MODEL_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_GPT2_NAME = re.compile(r"gpt2(-medium|-large|-xl)?")


class CheckpointError(GPTError, ValueError):
    """A checkpoint directory is missing, incomplete, corrupt, or does not fit the model."""


# ----------------------------------------------------------------------------------------------
# config.json


def config_to_hf(config: GPTConfig, eot_id: int | None = None) -> dict[str, Any]:
    """config.json in Hugging Face's GPT-2 keys, with our full config under `deep_understanding`."""
    hf = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",          # the tanh approximation, as GPT-2 uses
        "layer_norm_epsilon": config.layer_norm_epsilon,
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "tie_word_embeddings": True,
        "deep_understanding": config.to_dict(),
    }
    if eot_id is not None:
        hf["bos_token_id"] = hf["eos_token_id"] = eot_id
    return hf


def config_from_hf(values: dict[str, Any], source: object = "config.json") -> GPTConfig:
    """Our GPTConfig from a config.json: ours if present, else mapped from GPT-2's keys."""
    model_type = values.get("model_type", "gpt2")
    if model_type != "gpt2":
        raise CheckpointError(f"{source}: model_type {model_type!r} is not supported (supported: "
                              f"{', '.join(['gpt2', *LLAMA_MODEL_TYPES])})")
    if "deep_understanding" in values:
        return GPTConfig.from_dict(values["deep_understanding"])
    try:
        n_embd = values["n_embd"]
        if values.get("n_inner") not in (None, 4 * n_embd):
            raise CheckpointError(f"{source}: n_inner={values['n_inner']} is not 4 * n_embd; "
                                  f"only GPT-2's 4x MLP is supported")
        activation = values.get("activation_function", "gelu_new")
        if activation not in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
            raise CheckpointError(f"{source}: activation_function {activation!r} is not "
                                  f"GPT-2's tanh GELU")
        if values.get("tie_word_embeddings", True) is False:
            raise CheckpointError(f"{source}: untied output heads are not supported")
        return GPTConfig(vocab_size=values["vocab_size"], block_size=values["n_positions"],
                         n_layer=values["n_layer"], n_head=values["n_head"], n_embd=n_embd,
                         dropout=float(values.get("resid_pdrop", 0.0)),
                         layer_norm_epsilon=float(values.get("layer_norm_epsilon", 1e-5)))
    except KeyError as missing:
        raise CheckpointError(f"{source}: missing key {missing} (not a GPT-2 config)") from None


def read_config(directory: Path) -> GPTConfig | LlamaConfig:
    path = directory / CONFIG_FILE
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{directory}: no {CONFIG_FILE}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(values, dict):
        raise CheckpointError(f"{path} does not hold a JSON object")
    try:
        if is_llama_config(values):
            return llama_config_from_hf(values)
        return config_from_hf(values, path)
    except (TypeError, ValueError) as error:
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(f"{path}: {error}") from None


def _write_json(path: Path, values: Any) -> None:
    with atomic_write(path) as f:
        f.write((json.dumps(values, indent=2) + "\n").encode("utf-8"))


# ----------------------------------------------------------------------------------------------
# Weights


def hf_state_dict(model: GPT) -> dict[str, np.ndarray]:
    """Our parameters under Hugging Face GPT-2 names (the `transformer.` prefix)."""
    return {HF_PREFIX + name: array for name, array in model.state_dict().items()}


def weights_from_hf(tensors: dict[str, np.ndarray], source: object) -> dict[str, np.ndarray]:
    """Map a GPT-2 safetensors dict to our parameter names.

    Accepts keys with or without the `transformer.` prefix, skips the attention-mask buffers,
    and accepts an `lm_head.weight` only if it is the token embedding (a tied head).
    """
    state: dict[str, np.ndarray] = {}
    head = None
    for key, array in tensors.items():
        name = key[len(HF_PREFIX):] if key.startswith(HF_PREFIX) else key
        if name == "lm_head.weight":
            head = array
        elif not _HF_BUFFER.match(name):
            state[name] = array
    if head is not None and "wte.weight" in state and not _same_values(head, state["wte.weight"]):
        raise CheckpointError(f"{source}: lm_head.weight differs from wte.weight; only tied "
                              f"output heads are supported (GPT-2's output layer is its token "
                              f"embedding)")
    return state


def _same_values(a: np.ndarray, b: np.ndarray, rows: int = 4096) -> bool:
    # Block by block: np.array_equal would make a boolean temporary as large as the matrix.
    if a.shape != b.shape:
        return False
    return all(np.array_equal(a[i:i + rows], b[i:i + rows]) for i in range(0, len(a), rows))


def adopt_weights(model: GPT, state: dict[str, np.ndarray], dtype=np.float32,
                  source: object = "weights") -> None:
    """Make the arrays of `state` the model's parameters, copying only what must be copied.

    Unlike `Module.load_state_dict`, which copies into the arrays a model already has, this
    *rebinds* each `Parameter.data` to the given array when it is already what a parameter
    must be: `dtype`, C-contiguous, aligned and writeable. A copy-on-write memory map of a
    float32 checkpoint passes, so the model's parameters are the file's pages: no second copy.
    F16/BF16 tensors (widened by the reader), other dtypes and misaligned data are copied.

    Every name and shape is checked before anything changes; a mismatch raises a
    CheckpointError listing the missing, unexpected and mis-shaped tensors.
    """
    dtype = np.dtype(dtype)
    params = dict(model.named_parameters())
    missing = [name for name in params if name not in state]
    unexpected = [name for name in state if name not in params]
    mismatched = [(name, params[name].shape, tuple(state[name].shape))
                  for name in params if name in state and params[name].shape != state[name].shape]
    not_float = [(name, state[name].dtype) for name in params
                 if name in state and state[name].dtype.kind != "f"]
    if missing or unexpected or mismatched or not_float:
        lines = [f"{source}: the weights do not fit the config in {CONFIG_FILE}:"]
        if missing:
            lines.append(f"  missing tensors ({len(missing)}): {_some(missing)}")
        if unexpected:
            lines.append(f"  unexpected tensors ({len(unexpected)}): {_some(unexpected)}")
        for name, expected, got in mismatched[:10]:
            lines.append(f"  shape mismatch for '{name}': the config needs {expected}, the file "
                         f"has {got}")
        for name, got in not_float[:10]:
            lines.append(f"  '{name}' holds {got}, not floating-point numbers")
        raise CheckpointError("\n".join(lines))
    for name, p in params.items():
        array = state[name]
        flags = array.flags
        if not (array.dtype == dtype and flags.c_contiguous and flags.aligned and flags.writeable):
            array = np.array(array, dtype=dtype, order="C")
        p.data = array
        p.grad = None


def _some(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def save_pretrained(model: GPT | Llama, directory: str | os.PathLike, tokenizer=None) -> Path:
    """Write config.json + model.safetensors (+ tokenizer files) into `directory`, in Hugging
    Face's layout of the model's family (GPT-2, or Llama/Qwen3)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    eot = getattr(tokenizer, "eot_id", None) if tokenizer is not None else None
    if isinstance(model, Llama):
        config, tensors = llama_config_to_hf(model.config, eot, eot), llama_hf_state_dict(model)
    else:
        config, tensors = config_to_hf(model.config, eot), hf_state_dict(model)
    _write_json(directory / CONFIG_FILE, config)
    save_file(tensors, directory / WEIGHTS_FILE, metadata={"format": "pt"})
    if tokenizer is not None:
        save_tokenizer(tokenizer, directory)
    return directory


def save_tokenizer(tokenizer, directory: Path) -> None:
    """Our tokenizer file, plus GPT-2's vocab.json + merges.txt when the tokenizer fits them.

    Only a byte-level BPE with GPT-2's split pattern fits (GPT-2's own, or one trained here
    with `pattern="gpt2"`): Hugging Face's GPT2Tokenizer then encodes exactly as we do. For any
    other tokenizer, writing those files would give transformers a tokenizer that disagrees
    with the model, so none are written.
    """
    tokenizer.save(directory / TOKENIZER_FILE)
    if gpt2_files_problem(tokenizer) is None:
        save_gpt2_files(tokenizer, directory)


def load_tokenizer_from(directory: str | os.PathLike):
    """The tokenizer stored in a checkpoint directory, or None: ours (tokenizer.du.json);
    for a Llama/Qwen3 directory, or one without GPT-2's files, the Hugging Face tokenizer
    (tokenizer.json, vocab.json + merges.txt with tokenizer_config.json, Llama 3's
    tokenizer.model: `bpe.huggingface.load_hf_tokenizer`); else GPT-2's vocab.json + merges.txt.
    """
    directory = Path(directory)
    if (directory / TOKENIZER_FILE).is_file():
        return load_tokenizer(directory / TOKENIZER_FILE)
    try:
        vocab, merges = find_gpt2_files(directory)
    except FileNotFoundError:
        vocab = merges = None
    if vocab is None or _is_llama_directory(directory):
        try:
            return load_hf_tokenizer(directory)
        except FileNotFoundError:
            return None
        except (ValueError, UnicodeDecodeError) as error:   # TokenizerFileError is a ValueError
            raise CheckpointError(f"{directory}: {error}") from None
    try:
        return Tokenizer.from_gpt2(vocab, merges)
    except (ValueError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{directory}: the GPT-2 tokenizer files {vocab.name} and "
                              f"{merges.name} are damaged: {error}") from None


def _is_llama_directory(directory: Path) -> bool:
    """Whether config.json names a Llama-family model (a damaged one is read elsewhere)."""
    try:
        values = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(values, dict) and is_llama_config(values)


def resolve_checkpoint(path: str | os.PathLike,
                       data_dir: str | os.PathLike | None = None) -> Path:
    """The checkpoint directory meant by `path`: itself, or a run directory's best/ or latest/.

    A model name that is not a path here ("gpt2", "gpt2-medium", or a Hugging Face id such as
    "ORG/NAME") means the directory `python -m gpt.download NAME` fills (under `data_dir`,
    default the usual cache: `gpt.io.files.default_model_dir`).
    A run killed in the middle of swapping a checkpoint into place may have left only the
    previous one, renamed `*.old`: it is used then.
    """
    name, path = str(path), Path(path).expanduser()
    if not path.exists() and _MODEL_NAME.fullmatch(name):
        downloaded = default_model_dir(name, data_dir)
        if downloaded.exists():
            path = downloaded
        elif "/" in name or _GPT2_NAME.fullmatch(name):
            raise CheckpointError(f"{name} is not downloaded (looked in {downloaded}): run "
                                  f"`python -m gpt.download {name}` first, or pass the "
                                  f"directory that holds it")
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} is not a directory (expected a directory "
                              f"holding {CONFIG_FILE} and {WEIGHTS_FILE}, or a run directory)")
    if (path / WEIGHTS_FILE).is_file() or (path / INDEX_FILE).is_file():
        return path
    for name in ("best", "latest", "best.old", "latest.old"):
        if (path / name / WEIGHTS_FILE).is_file():
            return path / name
    if (path / "pytorch_model.bin").is_file():
        raise CheckpointError(f"{path} holds only pytorch_model.bin, a PyTorch pickle, which is "
                              f"not read here (unpickling runs code): get the {WEIGHTS_FILE} of "
                              f"the same model")
    raise CheckpointError(f"no checkpoint in {path}: expected {CONFIG_FILE} and {WEIGHTS_FILE}, "
                          f"or a run directory with best/ or latest/")


def load_pretrained(path: str | os.PathLike, dtype=np.float32,
                    **config_overrides) -> GPT | Llama:
    """Build a model from a checkpoint directory: a GPT (ours or Hugging Face's GPT-2 layout),
    or a Llama (Hugging Face's Llama/Qwen3 layout, ours of that family), by config.json's
    model_type. Sharded weights (model.safetensors.index.json) load shard by shard.

    `path` may also be a run directory (see `resolve_checkpoint`). `config_overrides` replace
    fields of the stored config: `dropout=0.1` for fine-tuning, or a smaller `block_size`,
    which keeps the first rows of the position embedding (GPT-2's 1024 positions cropped to
    256 make fine-tuning on a CPU affordable; a model never needs positions it is not shown).
    Any other shape field that disagrees with the weights is an error. `dtype=np.float64`
    gives a model for gradient checks.

    Memory: a float32 file costs about its own size, once. The file is memory-mapped
    copy-on-write and its arrays become the parameters themselves (`adopt_weights`); the
    model is built inside `skip_init()`, so no random weights are drawn only to be thrown
    away. Pages are read from disk as they are first used, and a page that training writes
    becomes private to this process; the file never changes. F16/BF16 files are widened to
    float32 (new arrays, twice the file's size). Llama-family files store Linear weights
    transposed: those are copied into our layout one tensor at a time as they are read.
    """
    if np.dtype(dtype) not in (np.float32, np.float64):
        raise ValueError(f"load_pretrained: dtype must be float32 or float64, got {dtype}")
    directory = resolve_checkpoint(path)
    config = read_config(directory)
    if config_overrides:
        try:
            config = type(config)(**{**config.to_dict(), **config_overrides})
        except (TypeError, ValueError) as error:
            raise CheckpointError(f"{directory}: cannot apply {config_overrides}: "
                                  f"{error}") from None
    llama = isinstance(config, LlamaConfig)
    transform = to_our_layout if llama else None
    try:
        if (directory / WEIGHTS_FILE).is_file():
            tensors = load_file(directory / WEIGHTS_FILE, writable=True, transform=transform)
        else:
            tensors = load_sharded(directory / INDEX_FILE, writable=True, transform=transform)
    except SafetensorsError as error:
        raise CheckpointError(f"{error}") from None
    if llama:
        with skip_init():
            model = Llama(config)
        adopt_weights(model, llama_weights_from_hf(tensors, config), dtype, source=directory)
        return model
    state = weights_from_hf(tensors, directory / WEIGHTS_FILE)
    positions = state.get("wpe.weight")
    if "block_size" in config_overrides and positions is not None \
            and config.block_size < len(positions):
        state["wpe.weight"] = positions[:config.block_size]     # still a view of the file
    with skip_init():
        model = GPT(config)
    adopt_weights(model, state, dtype, source=directory)
    return model


# ----------------------------------------------------------------------------------------------
# Training checkpoints: model + tokenizer + optimizer + run state, swapped in atomically


def save_checkpoint(directory: str | os.PathLike, model: GPT, tokenizer=None,
                    optimizer_state: dict | None = None, train_state: dict | None = None) -> Path:
    """Write a full checkpoint into `directory`, atomically replacing any previous one."""
    directory = Path(directory)
    tmp = directory.with_name(f".{directory.name}.tmp")
    old = directory.with_name(f"{directory.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_pretrained(model, tmp, tokenizer)
    if optimizer_state is not None:
        structure, arrays = split_arrays(optimizer_state)
        with atomic_write(tmp / OPTIMIZER_FILE) as f:
            np.savez(f, __structure__=np.array(json.dumps(structure)), **arrays)
    if train_state is not None:
        _write_json(tmp / STATE_FILE, train_state)
    # Swap: the old checkpoint stays whole (as *.old) until the new one is in place.
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)
    return directory


def load_training_state(directory: str | os.PathLike) -> tuple[dict | None, dict | None]:
    """(optimizer state, train state) of a training checkpoint; None for what is absent."""
    directory = resolve_checkpoint(directory)
    optimizer_state = train_state = None
    if (directory / OPTIMIZER_FILE).is_file():
        try:
            with np.load(directory / OPTIMIZER_FILE, allow_pickle=False) as data:
                structure = json.loads(str(data["__structure__"]))
                optimizer_state = join_arrays(structure, data)
        except (OSError, ValueError, KeyError) as error:
            raise CheckpointError(f"{directory / OPTIMIZER_FILE} is corrupt: {error}") from None
    if (directory / STATE_FILE).is_file():
        try:
            train_state = json.loads((directory / STATE_FILE).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise CheckpointError(f"{directory / STATE_FILE} is corrupt: {error}") from None
    return optimizer_state, train_state


def latest_run(out_dir: str | os.PathLike = "runs") -> Path | None:
    """The most recently written run directory under `out_dir` (for `chat.py` with no --ckpt)."""
    root = Path(out_dir).expanduser()
    if not root.is_dir():
        return None
    runs = [d for d in root.iterdir() if (d / "latest").is_dir() or (d / "best").is_dir()]
    return max(runs, key=lambda d: d.stat().st_mtime, default=None)
