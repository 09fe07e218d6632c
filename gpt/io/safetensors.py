"""Read and write the safetensors format with NumPy alone.

A `.safetensors` file is three parts, one after the other:

    [8 bytes]  N, the length of the header: an unsigned 64-bit little-endian integer
    [N bytes]  a UTF-8 JSON object, one entry per tensor:
                   "name": {"dtype": "F32", "shape": [768, 2304], "data_offsets": [begin, end]}
               plus an optional "__metadata__": {"key": "value", ...} of strings
    [rest]     the raw bytes of every tensor, little-endian, C order; `begin`/`end` count
               from the start of this part

That is all: no pickles, no code, so a file from an untrusted source can only hold numbers.
Because the data is raw and aligned, `load_file` memory-maps the file and hands out NumPy
views of it: a 1.5B-parameter checkpoint "loads" without reading or copying 6 GB, and pages
come in from disk as the arrays are used. The views are read-only; `.copy()` one to change it.

The header is checked strictly before any data is touched (`SafetensorsError` says what is
wrong): the byte ranges must tile the data section exactly, in order, without gaps or
overlaps, each exactly `prod(shape) * itemsize` long. This is the same rule the reference
implementation enforces, so a file we accept is a file it accepts.

NumPy has no bfloat16. BF16 is the top half of a float32 (same exponent, 7-bit mantissa), so
widening is exact: put the 16 stored bits in the high half of a 32-bit word. `load_file` does it
in one pass per tensor, in the order the tensor is stored, writing the bits straight into the
high halves of a zeroed float32 array (`_widen`).

Large checkpoints come in shards: `model-00001-of-00002.safetensors`, ... and an index,
`model.safetensors.index.json`, whose "weight_map" names the shard of every tensor.
`load_sharded` reads them all through `load_file`, one shard after another.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
import sys
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from autograd.parallel import default_threads
from gpt.core.thread_team import thread_team
from gpt.errors import GPTError
from gpt.io.files import atomic_write

__all__ = [
    "DTYPES",
    "SafetensorsError",
    "TensorInfo",
    "load_file",
    "load_sharded",
    "read_header",
    "save_file",
]

# safetensors dtype name -> the NumPy dtype of the stored bytes (BF16 kept as raw uint16 bits).
DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_NAME_OF_DTYPE = {dt: name for name, dt in DTYPES.items() if name != "BF16"}
_HALF_PRECISION = ("F16", "BF16")
# Which uint16 of a float32 holds its sign, exponent and top mantissa bits: the second on a
# little-endian machine.
_HIGH_HALF = 1 if sys.byteorder == "little" else 0
_MAX_HEADER = 100 * 1024 * 1024  # the reference reader's limit; a larger header is corrupt
_METADATA = "__metadata__"


class SafetensorsError(GPTError, ValueError):
    """The file is not valid safetensors (or a tensor cannot be stored in it)."""


@dataclass(frozen=True)
class TensorInfo:
    """One header entry: dtype name, shape, and byte range within the data section."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def read_header(path: str | os.PathLike) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Read and validate only the header: ({name: TensorInfo}, metadata). Touches no tensor data."""
    tensors, metadata, _ = _read_header(path)
    return tensors, metadata


def _read_header(path: str | os.PathLike) -> tuple[dict[str, TensorInfo], dict[str, str], int]:
    """The header's tensors and metadata, and the file offset where the data section starts."""
    with open(path, "rb") as f:
        file_size = os.fstat(f.fileno()).st_size
        if file_size < 8:
            raise SafetensorsError(f"{path}: truncated, {file_size} bytes is shorter than the 8-byte header length")
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > _MAX_HEADER:
            raise SafetensorsError(f"{path}: header length {header_len:,} is absurd (the limit is {_MAX_HEADER:,})")
        if 8 + header_len > file_size:
            raise SafetensorsError(
                f"{path}: header length {header_len:,} runs past the end of the {file_size:,}-byte file (truncated?)"
            )
        raw = f.read(header_len)
    tensors, metadata = _parse_header(raw, data_size=file_size - 8 - header_len, path=path)
    return tensors, metadata, 8 + header_len


def _parse_header(raw: bytes, data_size: int, path: object) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SafetensorsError(f"{path}: the header is not valid UTF-8 JSON ({err})") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: the header must be a JSON object, got {type(header).__name__}")

    metadata = header.pop(_METADATA, {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise SafetensorsError(f"{path}: __metadata__ must map strings to strings")

    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        where = f"{path}: tensor {name!r}"
        if not isinstance(entry, dict) or {"dtype", "shape", "data_offsets"} - entry.keys():
            raise SafetensorsError(f"{where}: entry must have dtype, shape and data_offsets, got {entry!r}")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in DTYPES:
            raise SafetensorsError(f"{where}: unknown dtype {dtype!r} (known: {', '.join(DTYPES)})")
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
            raise SafetensorsError(f"{where}: shape must be a list of non-negative integers, got {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
            raise SafetensorsError(f"{where}: data_offsets must be [begin, end], got {offsets!r}")
        begin, end = offsets
        if end < begin:
            raise SafetensorsError(f"{where}: data_offsets {offsets} end before they begin")
        expected = math.prod(shape) * DTYPES[dtype].itemsize
        if end - begin != expected:
            raise SafetensorsError(
                f"{where}: data_offsets {offsets} span {end - begin:,} bytes, but {dtype} "
                f"of shape {shape} needs {expected:,}"
            )
        tensors[name] = TensorInfo(dtype, tuple(shape), begin, end)

    # The byte ranges, taken in order, must tile the data section exactly.
    position = 0
    for name, info in sorted(tensors.items(), key=lambda item: (item[1].begin, item[1].end)):
        if info.begin != position:
            problem = "overlaps the previous tensor" if info.begin < position else "leaves a gap before it"
            raise SafetensorsError(
                f"{path}: tensor {name!r} starts at byte {info.begin:,} of the data, which {problem} "
                f"(expected {position:,})"
            )
        position = info.end
    if position != data_size:
        raise SafetensorsError(
            f"{path}: the tensors cover {position:,} bytes of data but the file holds {data_size:,} "
            "(truncated, or trailing bytes)"
        )
    return tensors, metadata


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def load_file(
    path: str | os.PathLike, *, widen: bool = True, writable: bool = False,
    transform: Callable[[str, np.ndarray], np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Load every tensor of a safetensors file, memory-mapped, in the file's order.

    Returned arrays are read-only views of the mapped file (no copy), except when
    `widen=True` turns F16 and BF16 tensors into new float32 arrays (exactly: every float16
    and bfloat16 value, infinities, NaNs and subnormals included, is a float32). With
    `widen=False`, F16 stays float16 and BF16 comes back as its raw uint16 bits (NumPy has
    no bfloat16).

    `writable=True` maps the file copy-on-write instead: the arrays can be written (a model
    can train them in place), a written page becomes a private copy in this process, and the
    file itself never changes. Pages that are only read stay shared with the operating
    system's file cache, so a model whose parameters *are* these arrays costs no second copy.
    The file must not be changed in place while mapped (replacing it by a rename, as
    `save_file` does, is safe: the mapping keeps the old file).

    `transform(name, array)`, if given, is applied to each tensor as it is read (after
    widening) and its result kept as it is: a view (a transpose, say) of the mapped file or of
    the widened array, or a new array.
    """
    tensors, _, data_start = _read_header(path)
    # Map the whole file once (the header makes it non-empty: mmap cannot map zero bytes). The
    # arrays keep the mapping alive; it is unmapped when the last of them is gone.
    with open(path, "rb") as f:
        mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY if writable else mmap.ACCESS_READ)
    mapped = np.frombuffer(mapping, dtype=np.uint8)
    out: dict[str, np.ndarray] = {}
    for name, info in tensors.items():
        begin, end = data_start + info.begin, data_start + info.end
        array = np.ndarray(info.shape, dtype=DTYPES[info.dtype], buffer=mapped[begin:end])
        _map_pages_now(mapping, begin, end)
        if widen and info.dtype in _HALF_PRECISION:
            array = _widen(array, from_bfloat16=info.dtype == "BF16")
        if transform is not None:
            array = transform(name, array)
        if not np.may_share_memory(array, mapped):      # a new array: the bytes are done with
            _release_pages(mapping, begin, end)
        out[name] = array
    return out


def load_sharded(
    index_path: str | os.PathLike, *, widen: bool = True, writable: bool = False,
    transform: Callable[[str, np.ndarray], np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Load every tensor of a sharded checkpoint from its index (`*.safetensors.index.json`).

    The index's "weight_map" maps each tensor name to the file that holds it, in the index's
    directory. Each shard is read by `load_file` (same options) and must hold exactly the
    tensors the index gives it: a shard that is missing, or that disagrees with the index, is
    an error naming it, not a model with a hole in it.
    """
    index_path = os.fspath(index_path)
    directory = os.path.dirname(index_path)
    try:
        with open(index_path, "rb") as f:
            index = json.loads(f.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SafetensorsError(f"{index_path}: not valid UTF-8 JSON ({err})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise SafetensorsError(f"{index_path}: needs a non-empty \"weight_map\" of tensor name -> file name")
    names_by_shard: dict[str, set[str]] = {}
    for name, shard in weight_map.items():
        names_by_shard.setdefault(shard, set()).add(name)
    out: dict[str, np.ndarray] = {}
    for shard, names in names_by_shard.items():
        if os.path.basename(shard) != shard or shard in (".", ".."):
            raise SafetensorsError(f"{index_path}: shard {shard!r} is not a file name in the index's directory")
        path = os.path.join(directory, shard)
        if not os.path.isfile(path):
            raise SafetensorsError(f"{index_path}: shard {shard} is missing (expected at {path})")
        tensors = load_file(path, widen=widen, writable=writable, transform=transform)
        if set(tensors) != names:
            missing, extra = sorted(names - set(tensors)), sorted(set(tensors) - names)
            raise SafetensorsError(
                f"{path} does not hold what {os.path.basename(index_path)} says: "
                f"missing {missing[:5]}, not in the index {extra[:5]}"
            )
        out.update(tensors)
    return out


def _widen(stored: np.ndarray, from_bfloat16: bool) -> np.ndarray:
    """A new C-ordered float32 array of the F16 or BF16 values `stored`, in one pass.

    `from_bfloat16=True`: `stored` holds bfloat16 bit patterns (uint16). A bfloat16 is the high
    half of the float32 of the same value, with a low half of zeros, so the bits are written
    straight into the high uint16 of each element of a zeroed float32 array (zeroed by the
    operating system as its pages are first touched): no uint32 intermediate, no shift, exact
    for every pattern (signs, infinities, NaN payloads, subnormals). Otherwise the assignment
    casts float16 to float32, which is exact too.

    A large tensor is split over a team of threads, one per core: most of the time goes to
    the first touch of the new pages, and each core takes its own page faults.
    """
    out = np.zeros(stored.shape, dtype=np.float32)
    out_flat, stored_flat = out.reshape(-1), stored.reshape(-1)     # views of every element

    def widen(part: slice) -> None:
        if from_bfloat16:
            out_flat[part].view(np.uint16).reshape(-1, 2)[:, _HIGH_HALF] = stored_flat[part]
        else:
            out_flat[part] = stored_flat[part]

    n = out_flat.size
    threads = default_threads() if stored.nbytes >= _WIDEN_SPLIT_BYTES else 1
    thread_team(threads).run(
        lambda rank, meeting: widen(slice(n * rank // threads, n * (rank + 1) // threads)))
    return out


# Half-precision tensors of at least this size are widened by several threads.
_WIDEN_SPLIT_BYTES = 1 << 20


# madvise(2)'s MADV_POPULATE_READ (Linux 5.14): Python's mmap module has no name for it.
_MADV_POPULATE_READ = 22


def _map_pages_now(mapping: mmap.mmap, begin: int, end: int) -> None:
    """Map the pages of bytes [begin, end) into this process in one call, before they are read.

    Otherwise the first read of each 4 KiB page stops for a page fault that maps it: half a
    million faults for a 2 GB file, each costing microseconds on a virtual machine, which made
    widening a BF16 file run at a quarter of its speed. Every tensor is read while loading
    (widened, or checked for NaN by the model's loader), so nothing is mapped that would not
    have been. On a kernel without it (or not Linux) this does nothing.
    """
    if sys.platform != "linux" or not hasattr(mapping, "madvise"):
        return
    start = begin - begin % mmap.PAGESIZE
    if end > start:
        try:
            mapping.madvise(_MADV_POPULATE_READ, start, end - start)
        except OSError:                         # EINVAL before Linux 5.14
            pass


def _release_pages(mapping: mmap.mmap, begin: int, end: int) -> None:
    """Take the pages of bytes [begin, end) out of this process's memory.

    A widened tensor is a new array; its half-precision bytes are not needed any more, but the
    pages read to make it would otherwise stay resident (counted in this process's memory)
    until the whole mapping goes: widening a large F16 file would peak at the file *plus*
    its float32 copy. The pages stay in the operating system's file cache, so a neighbouring
    tensor sharing a page at either end just reads it in again. Nothing of this mapping has
    been written yet, so nothing is lost. Where `madvise` is missing this does nothing.
    """
    if not hasattr(mapping, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return
    start = begin - begin % mmap.PAGESIZE
    stop = min(end + -end % mmap.PAGESIZE, len(mapping))
    if stop > start:
        mapping.madvise(mmap.MADV_DONTNEED, start, stop - start)


def save_file(
    tensors: Mapping[str, np.ndarray],
    path: str | os.PathLike,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write `tensors` (name -> array) to `path` atomically, in name order.

    The header is compact JSON (metadata first), padded with spaces so the data starts at a
    multiple of 8 bytes, as the reference writer does: every tensor can then be viewed in
    place without an unaligned read. Arrays are stored C-ordered and little-endian.
    """
    if _METADATA in tensors:
        raise SafetensorsError(f"{_METADATA!r} is reserved for metadata and cannot name a tensor")
    if metadata is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise SafetensorsError("metadata must map strings to strings")

    header: dict[str, object] = {}
    if metadata:
        header[_METADATA] = dict(metadata)
    arrays: list[tuple[np.ndarray, np.dtype]] = []
    offset = 0
    for name in sorted(tensors):
        array = np.asarray(tensors[name])
        stored = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
        if stored not in _NAME_OF_DTYPE:
            raise SafetensorsError(
                f"tensor {name!r} has dtype {array.dtype}, which safetensors cannot store "
                f"(supported: {', '.join(str(d) for d in _NAME_OF_DTYPE)})"
            )
        nbytes = array.size * stored.itemsize
        header[name] = {
            "dtype": _NAME_OF_DTYPE[stored],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
        arrays.append((array, stored))

    header_bytes = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)
    with atomic_write(path) as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for array, stored in arrays:
            # Made C-ordered and little-endian one tensor at a time, as it is written: tensors
            # given as views (transposed weights, say) cost one tensor of memory, not all of
            # them. A flat byte view then writes the buffer as it is, without a tobytes() copy.
            data = np.asarray(array, dtype=stored, order="C")  # keeps 0-d arrays 0-d
            f.write(memoryview(data.reshape(-1).view(np.uint8)))
