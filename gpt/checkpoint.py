"""Checkpoints: a directory a model can be rebuilt from, and a run can resume from.

    config.json          the model's shape, in Hugging Face GPT-2 keys plus our own
    model.safetensors    the weights, named as Hugging Face names GPT-2's (`transformer.h.0...`)
    tokenizer.du.json    our tokenizer file (Hugging Face's `tokenizer.json` is another format)
    vocab.json, merges.txt   GPT-2's tokenizer files, when the tokenizer is GPT-2's
    optimizer.npz        optimizer state (training checkpoints only)
    train_state.json     step, best validation loss, settings (training checkpoints only)

The first two are exactly what `transformers.GPT2LMHeadModel.from_pretrained` reads, so a
directory written by `save_pretrained` opens there, and a Hugging Face GPT-2 directory opens here.

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

from autograd.nn import StateDictError
from autograd.optim import join_arrays, split_arrays

from .config import GPTConfig
from .files import atomic_write
from .model import GPT
from .safetensors import SafetensorsError, load_file, save_file

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.du.json"
OPTIMIZER_FILE = "optimizer.npz"
STATE_FILE = "train_state.json"
HF_PREFIX = "transformer."
# Buffers (the causal mask) that some GPT-2 checkpoints store: not parameters, skipped.
_HF_BUFFER = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")


class CheckpointError(ValueError):
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


def read_config(directory: Path) -> GPTConfig:
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
    if head is not None and "wte.weight" in state and not np.array_equal(head, state["wte.weight"]):
        raise CheckpointError(f"{source}: lm_head.weight differs from wte.weight; only tied "
                              f"output heads are supported")
    return state


def save_pretrained(model: GPT, directory: str | os.PathLike, tokenizer=None) -> Path:
    """Write config.json + model.safetensors (+ tokenizer files) into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    eot = getattr(tokenizer, "eot_id", None) if tokenizer is not None else None
    _write_json(directory / CONFIG_FILE, config_to_hf(model.config, eot))
    save_file(hf_state_dict(model), directory / WEIGHTS_FILE, metadata={"format": "pt"})
    if tokenizer is not None:
        save_tokenizer(tokenizer, directory)
    return directory


def save_tokenizer(tokenizer, directory: Path) -> None:
    tokenizer.save(directory / TOKENIZER_FILE)
    export = getattr(tokenizer, "save_gpt2_files", None)
    if export is not None and getattr(tokenizer, "is_gpt2_layout", False):
        export(directory)


def load_tokenizer_from(directory: str | os.PathLike):
    """The tokenizer stored in a checkpoint directory (ours, or GPT-2's files), or None."""
    from bpe import Tokenizer, load_tokenizer
    from bpe.gpt2 import find_gpt2_files

    directory = Path(directory)
    if (directory / TOKENIZER_FILE).is_file():
        return load_tokenizer(directory / TOKENIZER_FILE)
    try:
        vocab, merges = find_gpt2_files(directory)
    except FileNotFoundError:
        return None
    return Tokenizer.from_gpt2(vocab, merges)


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint directory meant by `path`: itself, or a run directory's best/ or latest/.

    A run killed in the middle of swapping a checkpoint into place may have left only the
    previous one, renamed `*.old`: it is used then.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} is not a directory (expected a directory "
                              f"holding {CONFIG_FILE} and {WEIGHTS_FILE}, or a run directory)")
    if (path / WEIGHTS_FILE).is_file():
        return path
    for name in ("best", "latest", "best.old", "latest.old"):
        if (path / name / WEIGHTS_FILE).is_file():
            return path / name
    raise CheckpointError(f"no checkpoint in {path}: expected {CONFIG_FILE} and {WEIGHTS_FILE}, "
                          f"or a run directory with best/ or latest/")


def load_pretrained(path: str | os.PathLike, dtype=np.float32, **config_overrides) -> GPT:
    """Build a GPT from a checkpoint directory (ours or Hugging Face's GPT-2 layout)."""
    directory = resolve_checkpoint(path)
    config = read_config(directory)
    if config_overrides:
        config = GPTConfig(**{**config.to_dict(), **config_overrides})
    try:
        tensors = load_file(directory / WEIGHTS_FILE)
    except SafetensorsError as error:
        raise CheckpointError(f"{directory / WEIGHTS_FILE}: {error}") from None
    state = weights_from_hf(tensors, directory / WEIGHTS_FILE)
    model = GPT(config)
    try:
        model.load_state_dict(state)
    except StateDictError as error:
        raise CheckpointError(f"{directory}: the weights do not fit the config in "
                              f"{CONFIG_FILE}:\n{error}") from None
    del tensors, state                     # release the memory map
    return model.to(dtype) if dtype != np.float32 else model


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
