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

A training run directory holds settings.json and two checkpoints, `latest/` and `best/` (lowest
validation loss). Each checkpoint is written to a staging directory, marked complete last
(complete.json), and swapped into place with renames: a run killed at any moment leaves the
previous checkpoint or the new one whole, and `recover_run` puts the run in order on resume.
A damaged file is a CheckpointError that names the file and what is wrong with it.
"""
from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import re
import shutil
import signal
import types
import typing
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from autograd.nn import skip_init
from autograd.optim import join_arrays, split_arrays
from bpe import Tokenizer, load_tokenizer
from bpe.gpt2 import find_gpt2_files, gpt2_files_problem, save_gpt2_files
from bpe.huggingface import load_hf_tokenizer
from gpt.core.config import GPTConfig
from gpt.core.llama import Llama, LlamaConfig
from gpt.core.memory import check_fits, weights_estimate
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
COMPLETE_FILE = "complete.json"     # written last: the names of the checkpoint's files
FAULT_ENV = "DU_FAULT_KILL_AT"       # fault tests only: see _fault_point
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
    must be: `dtype`, contiguous (in C order, or in Fortran order: the transpose of a stored
    matrix, as a Llama checkpoint's Linear weights are read), aligned and writeable. A
    copy-on-write memory map of a float32 checkpoint passes, so the model's parameters are the
    file's pages: no second copy. Other dtypes, strided views and misaligned data are copied.

    Every name and shape is checked before anything changes; a mismatch raises a
    CheckpointError listing the missing, unexpected and mis-shaped tensors, and a tensor that
    holds NaN or an infinity is refused by name.
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
    # A NaN or an infinity in a weight makes every output NaN: say which tensor, not
    # "the reply was empty". (One pass over the weights, the cost of reading them once.)
    for name in params:
        if not np.isfinite(state[name]).all():
            raise CheckpointError(f"{source}: tensor '{name}' holds NaN or infinite values; "
                                  f"the checkpoint is damaged")
    for name, p in params.items():
        array = state[name]
        flags = array.flags
        contiguous = flags.c_contiguous or flags.f_contiguous
        if not (array.dtype == dtype and contiguous and flags.aligned and flags.writeable):
            array = np.array(array, dtype=dtype, order="K")   # keeps a transpose's order
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
    A checkpoint X that a run was killed in the middle of saving is found by its name: of what
    the crash left (`.X.tmp`, `X`, `X.old`), the newest complete version (see
    `newest_complete_checkpoint`), which is also what the run resumes from.
    """
    name, path = str(path), Path(path).expanduser()
    if (found := newest_complete_checkpoint(path)) is not None:
        return found
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
    for name in ("best", "latest"):
        if (found := newest_complete_checkpoint(path / name)) is not None:
            return found
        if _has_weights(path / name):          # damaged: loading it says how
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
    check_fits(weights_estimate(config.num_parameters()),
               f"{directory} holds a model too big for this machine's memory")
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
#
# A checkpoint X is written into the staging directory .X.tmp, which is complete once its last
# file, complete.json (the names of the others), is written. Then X is renamed X.old, .X.tmp
# renamed X, and X.old deleted. A crash can leave any of the three; newest first: a complete
# .X.tmp, X, X.old. No version is deleted unless it is incomplete or a newer complete one is in
# place, so a run killed at any moment keeps its newest complete checkpoint, and the next save
# (or `recover_run`) first finishes what the crash interrupted.


def save_checkpoint(directory: str | os.PathLike, model: GPT, tokenizer=None,
                    optimizer_state: dict | None = None, train_state: dict | None = None,
                    add_files: Callable[[Path], None] | None = None) -> Path:
    """Write a full checkpoint into `directory`, atomically replacing any previous one.

    `add_files(staging)` may add or edit files of the checkpoint before it is marked complete
    (fine-tuning keeps its source's tokenizer files there: gpt.finetune.common.save_model).

    A write that fails (a full disk, a read-only directory) is a CheckpointError that says
    whether the previous checkpoint is intact, and leaves no staging directory behind.
    """
    directory = Path(directory)

    def write(staging: Path) -> None:
        save_pretrained(model, staging, tokenizer)
        _fault_point(directory, "writing")
        if optimizer_state is not None:
            structure, arrays = split_arrays(optimizer_state)
            with atomic_write(staging / OPTIMIZER_FILE) as f:
                np.savez(f, __structure__=np.array(json.dumps(structure)), **arrays)
        if train_state is not None:
            _write_json(staging / STATE_FILE, train_state)
        if add_files is not None:
            add_files(staging)

    return _write_checkpoint(directory, write)


def newest_complete_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The newest complete version of checkpoint `directory` that a crash may have left:
    `.X.tmp` (a save that had written everything), `X`, or `X.old`; None if there is none."""
    directory = Path(directory)
    for version in (_staging(directory), directory, _previous(directory)):
        if version.is_dir() and _is_complete(version):
            return version
    return None


def recover_run(run_directory: str | os.PathLike) -> Path | None:
    """Put a run directory's checkpoints in order after a crash; the checkpoint to resume from.

    For latest/ and best/, the save a crash interrupted is finished: the newest complete
    version becomes the checkpoint, and what is incomplete or older is deleted. Then best/ is
    checked against latest/: a run saves latest/ and then, at a new best step, best/. Killed
    between the two, latest/'s train_state knows a lower validation loss than best/ holds, and
    latest/ is that best (a resume repairs at once, so no other step can be missing): it is
    copied to best/.

    Returns `run_directory/latest`, which may be damaged (loading it says how), or None when
    the run has no latest checkpoint.
    """
    run = Path(run_directory)
    latest, best = run / "latest", run / "best"
    try:
        for directory in (latest, best):
            _finish_interrupted_save(directory)
    except OSError as error:
        raise CheckpointError(f"cannot put the checkpoints of {run} in order: {error}") from None
    if not latest.is_dir():
        return None
    if _best_is_behind(latest, best):
        _write_checkpoint(best, lambda staging: _copy_files(latest, staging))
    return latest


def _staging(directory: Path) -> Path:
    return directory.with_name(f".{directory.name}.tmp")


def _previous(directory: Path) -> Path:
    return directory.with_name(f"{directory.name}.old")


def _has_weights(directory: Path) -> bool:
    return (directory / WEIGHTS_FILE).is_file() or (directory / INDEX_FILE).is_file()


def _is_complete(directory: Path) -> bool:
    """Whether `directory` holds every file its complete.json lists.

    Sizes are not recorded: every file is written before complete.json, so a kill cannot leave
    a listed one short, and a checkpoint may be edited after its save (a chat template is
    recorded in config.json). A file damaged later is for loading to report.

    A checkpoint without complete.json (written by `save_pretrained`, or before complete.json
    existed) counts when it has config.json and weights; a staging directory never does.
    """
    marker = directory / COMPLETE_FILE
    if not marker.is_file():
        return not directory.name.endswith(".tmp") and (directory / CONFIG_FILE).is_file() \
            and _has_weights(directory)
    try:
        names = json.loads(marker.read_text(encoding="utf-8"))["files"]
        return all(isinstance(name, str) and (directory / name).is_file() for name in names)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _write_checkpoint(directory: Path, write: Callable[[Path], None]) -> Path:
    """Write a checkpoint with `write(staging)`, mark it complete and swap it in as `directory`."""
    staging = _staging(directory)
    _fault_point(directory, "start")
    try:
        _finish_interrupted_save(directory)
        staging.mkdir(parents=True)
        write(staging)
        _fsync_directory(staging)                # the files' names before the marker's
        _write_json(staging / COMPLETE_FILE, {"files": sorted(p.name for p in staging.iterdir())})
        _fault_point(directory, "complete")
        _swap_in(directory)
    except Exception as error:
        if newest_complete_checkpoint(directory) != staging:
            shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, OSError):
            raise _save_error(directory, error) from None
        raise
    return directory


def _swap_in(directory: Path) -> None:
    """Rename the complete staging directory to `directory`; the checkpoint it replaces stays,
    as X.old, until then."""
    staging, previous = _staging(directory), _previous(directory)
    if directory.is_dir() and _is_complete(directory):
        shutil.rmtree(previous, ignore_errors=True)         # older than `directory`
        os.replace(directory, previous)
        _fault_point(directory, "moved_old")
    elif directory.exists():
        shutil.rmtree(directory)      # damaged; the last complete one, if any, is X.old: kept
    os.replace(staging, directory)
    _fsync_directory(directory.parent)
    _fault_point(directory, "swapped")
    shutil.rmtree(previous, ignore_errors=True)


def _finish_interrupted_save(directory: Path) -> None:
    """Leave only the newest complete version of `directory` (see the comment above)."""
    staging, previous = _staging(directory), _previous(directory)
    newest = newest_complete_checkpoint(directory)
    if newest == staging:
        _swap_in(directory)
        return
    shutil.rmtree(staging, ignore_errors=True)              # incomplete
    if newest == directory:
        shutil.rmtree(previous, ignore_errors=True)
    elif newest == previous and not directory.exists():
        os.replace(previous, directory)


def _fsync_directory(directory: Path) -> None:
    # Renames are in the directory's own data: without this, a power cut (not a kill) could
    # forget them. Windows cannot open a directory, and does not need it.
    if os.name == "nt":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save_error(directory: Path, error: OSError) -> CheckpointError:
    previous = newest_complete_checkpoint(directory)
    kept = (f"the previous checkpoint in {previous} is intact" if previous is not None
            else "there is no earlier checkpoint")
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return CheckpointError(f"disk full while saving {directory} ({error.strerror}); {kept}; "
                               f"free some space and run again")
    return CheckpointError(f"cannot save {directory}: {error}; {kept}")


def _copy_files(source: Path, staging: Path) -> None:
    for path in sorted(source.iterdir()):
        if path.is_file() and path.name != COMPLETE_FILE:
            with open(path, "rb") as f, atomic_write(staging / path.name) as copy:
                shutil.copyfileobj(f, copy)


def _best_is_behind(latest: Path, best: Path) -> bool:
    """Whether best/ lacks the best model, which latest/ then is (see `recover_run`)."""
    latest_best = _saved_best_val(latest)
    if latest_best is None or not math.isfinite(latest_best) or not _is_complete(latest):
        return False
    if not best.exists():
        return True
    best_best = _saved_best_val(best)
    return best_best is not None and latest_best < best_best


def _saved_best_val(directory: Path) -> float | None:
    try:
        value = json.loads((directory / STATE_FILE).read_text(encoding="utf-8"))["best_val_loss"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return float(value) if _is_number(value) else None


# ----------------------------------------------------------------------------------------------
# Fault injection, for the tests that kill a training run inside a save (tests/test_faults.py)

FAULT_POINTS = ("start", "writing", "complete", "moved_old", "swapped")
_faults_seen: dict[str, int] = {}


def _fault_point(directory: Path, point: str) -> None:
    """SIGKILL this process at the point of a save that $DU_FAULT_KILL_AT names; else nothing.

    DU_FAULT_KILL_AT="save:latest:complete" kills the process the first time a save of a
    checkpoint named latest reaches `complete`; "save:best:start:2" the second time a save of
    best/ starts. The points of a save of X, in order: start; writing (the weights are written,
    the rest not); complete (.X.tmp is complete, X untouched); moved_old (X is renamed X.old,
    the new one not yet X); swapped (the new one is X, X.old not yet deleted).
    """
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    fields = spec.split(":")
    if not (len(fields) in (3, 4) and fields[0] == "save" and fields[2] in FAULT_POINTS
            and (len(fields) == 3 or fields[3].isdigit())):
        raise CheckpointError(f"{FAULT_ENV}={spec!r}: expected save:CHECKPOINT:POINT[:N], POINT "
                              f"one of {', '.join(FAULT_POINTS)}")
    if fields[1:3] != [directory.name, point]:
        return
    key = f"{directory.name}:{point}"
    _faults_seen[key] = _faults_seen.get(key, 0) + 1
    if _faults_seen[key] == int(fields[3] if len(fields) == 4 else 1):
        _kill_this_process()


def _kill_this_process() -> None:
    os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))


# ----------------------------------------------------------------------------------------------
# Reading a run back: train_state.json, optimizer.npz, settings.json, each checked

def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# What each key of train_state.json holds. Pretraining writes step, best_val_loss and settings;
# fine-tuning writes task and step, and may add results and chat_template.
_STATE_KEYS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "step": ("a whole number >= 0", lambda v: _is_whole(v) and v >= 0),
    "best_val_loss": ("a number", _is_number),
    "settings": ("a JSON object", lambda v: isinstance(v, dict)),
    "task": ("a string", lambda v: isinstance(v, str)),
    "results": ("a JSON object", lambda v: isinstance(v, dict)),
    "chat_template": ("a string", lambda v: isinstance(v, str)),
}
_PRETRAINING_KEYS = ("step", "best_val_loss", "settings")
_FINETUNING_KEYS = ("task", "step")


def load_training_state(directory: str | os.PathLike) -> tuple[dict | None, dict | None]:
    """(optimizer state, train state) of a training checkpoint; None for what is absent.

    Both files are checked: a damaged optimizer.npz, or a train_state.json that is not UTF-8
    JSON, lacks a key, has an unknown one or a value of the wrong type, is a CheckpointError
    that names the file and the problem.
    """
    directory = resolve_checkpoint(directory)
    optimizer_state = train_state = None
    path = directory / OPTIMIZER_FILE
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as data:
                structure = json.loads(str(data["__structure__"]))
                optimizer_state = join_arrays(structure, data)
        except KeyError as error:          # "NAME is not a file in the archive"
            raise CheckpointError(f"{path} is damaged: {error.args[0]}") from None
        except (OSError, ValueError, EOFError, TypeError, zipfile.BadZipFile) as error:
            raise CheckpointError(f"{path} is damaged: {error or type(error).__name__}") from None
    path = directory / STATE_FILE
    if path.is_file():
        train_state = _read_json_object(path)
        required = _FINETUNING_KEYS if "task" in train_state else _PRETRAINING_KEYS
        problems = _key_problems(train_state, required, _STATE_KEYS)
        problems += [f"{name!r} must be {what}, got {json.dumps(train_state[name])}"
                     for name, (what, fits) in _STATE_KEYS.items()
                     if name in train_state and not fits(train_state[name])]
        if problems:
            raise CheckpointError(f"{path} is damaged: {'; '.join(problems)}")
    return optimizer_state, train_state


def read_settings_file(path: str | os.PathLike, settings_class: type) -> dict[str, Any]:
    """The values of a run's settings.json, checked against the dataclass `settings_class`.

    No key the class lacks, every field without a default present, and each value of its
    field's type (an int passes for a float); anything else is a CheckpointError naming the file
    and the problem. A field with a default that the file lacks (a run saved before that setting
    existed) takes its default.
    """
    path = Path(path)
    values = _read_json_object(path)
    hints = typing.get_type_hints(settings_class)
    fields = dataclasses.fields(settings_class)
    names = [field.name for field in fields]
    required = [field.name for field in fields if field.default is dataclasses.MISSING
                and field.default_factory is dataclasses.MISSING]
    problems = _key_problems(values, required, names)
    for name in names:
        if name in values and (what := _type_problem(hints[name], values[name])) is not None:
            problems.append(f"{name!r} must be {what}, got {json.dumps(values[name])}")
    if problems:
        raise CheckpointError(f"{path} is damaged: {'; '.join(problems)}")
    return values


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path} not found (is {path.parent} a run directory written "
                              f"by train.py?)") from None
    except OSError as error:
        raise CheckpointError(f"cannot read {path}: {error.strerror}") from None
    try:
        values = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise CheckpointError(f"{path} is damaged: not UTF-8 text ({error.reason} at byte "
                              f"{error.start})") from None
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path} is damaged: not valid JSON ({error})") from None
    except RecursionError:
        raise CheckpointError(f"{path} is damaged: JSON nested too deeply") from None
    if not isinstance(values, dict):
        raise CheckpointError(f"{path} is damaged: it does not hold a JSON object")
    return values


def _key_problems(values: dict, required, known) -> list[str]:
    missing = [name for name in required if name not in values]
    unknown = [name for name in values if name not in known]
    return [f"{what} key{'s' if len(names) > 1 else ''} {', '.join(map(repr, names))}"
            for what, names in (("missing", missing), ("unknown", unknown)) if names]


# The JSON values a settings field of each type may hold, and how to say so.
_JSON_TYPES: dict[type, tuple[str, Callable[[Any], bool]]] = {
    bool: ("true or false", lambda v: isinstance(v, bool)),
    int: ("a whole number", _is_whole),
    float: ("a number", _is_number),
    str: ("a string", lambda v: isinstance(v, str)),
    list: ("a JSON array", lambda v: isinstance(v, list)),
    dict: ("a JSON object", lambda v: isinstance(v, dict)),
}


def _type_problem(annotation: Any, value: Any) -> str | None:
    """What `value` must be to fit `annotation` (e.g. `int | None`), or None if it fits."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    options = typing.get_args(annotation) if union else (annotation,)
    nullable = type(None) in options
    kinds = [typing.get_origin(t) or t for t in options if t is not type(None)]
    if value is None and nullable:
        return None
    checks = [_JSON_TYPES[kind] for kind in kinds if kind in _JSON_TYPES]
    if len(checks) < len(kinds) or any(fits(value) for _, fits in checks):
        return None                               # a type this check does not know: not judged
    return " or ".join([what for what, _ in checks] + (["null"] if nullable else []))


def latest_run(out_dir: str | os.PathLike = "runs") -> Path | None:
    """The most recently written run directory under `out_dir` (for `chat.py` with no --ckpt)."""
    root = Path(out_dir).expanduser()
    if not root.is_dir():
        return None
    runs = [d for d in root.iterdir() if any((d / name).is_dir() or newest_complete_checkpoint(
        d / name) is not None for name in ("latest", "best"))]      # a crash may leave .latest.tmp
    return max(runs, key=lambda d: d.stat().st_mtime, default=None)
