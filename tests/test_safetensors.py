"""gpt.io.safetensors: the reference GPT-2 file, round trips, widening, and every kind of bad file."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from _paths import reference_file

from gpt.io.safetensors import SafetensorsError, TensorInfo, load_file, read_header, save_file


def write_raw(path, header: dict, data: bytes, pad: bool = True) -> None:
    """Write a safetensors file by hand, so tests control every byte."""
    text = json.dumps(header).encode()
    if pad:
        text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def test_reference_gpt2_file_loads_memory_mapped():
    path = reference_file("hf-gpt2-tiny/model.safetensors")
    tensors = load_file(path)
    assert len(tensors) == 2 * 12 + 4  # 12 per block, ln_f weight/bias, wte, wpe; lm_head is tied
    assert tensors["transformer.wte.weight"].shape == (512, 64)
    assert tensors["transformer.wpe.weight"].shape == (64, 64)
    assert tensors["transformer.h.0.attn.c_attn.weight"].shape == (64, 192)  # Conv1D: (in, out)
    assert all(a.dtype == np.float32 for a in tensors.values())
    wte = tensors["transformer.wte.weight"]
    assert not wte.flags.writeable and not wte.flags.owndata  # a view of the mapping, not a copy
    _, metadata = read_header(path)
    assert metadata == {"format": "pt"}


def test_save_then_load_reproduces_the_reference_file_byte_for_byte(tmp_path):
    path = reference_file("hf-gpt2-tiny/model.safetensors")
    tensors = load_file(path)
    out = tmp_path / "copy.safetensors"
    save_file(tensors, out, metadata={"format": "pt"})
    assert out.read_bytes() == path.read_bytes()
    again = load_file(out)
    assert list(again) == list(tensors)
    for name in tensors:
        np.testing.assert_array_equal(again[name], tensors[name])


def test_round_trip_of_every_dtype_and_odd_shapes(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {
        "f64": rng.standard_normal((3, 5)),
        "f32_scalar": np.array(1.5, dtype=np.float32),
        "f16": rng.standard_normal(7).astype(np.float16),
        "i64": np.arange(-3, 3, dtype=np.int64),
        "i32_transposed": np.arange(12, dtype=np.int32).reshape(3, 4).T,  # not contiguous
        "u8": np.arange(5, dtype=np.uint8),
        "bool": np.array([True, False, True]),
        "empty": np.zeros((0, 4), dtype=np.float32),
        "big_endian": np.arange(4, dtype=">f4"),
    }
    path = tmp_path / "all.safetensors"
    save_file(tensors, path, metadata={"note": "hello"})
    loaded = load_file(path, widen=False)
    for name, array in tensors.items():
        assert loaded[name].shape == array.shape
        np.testing.assert_array_equal(loaded[name], array)
    assert loaded["f16"].dtype == np.float16
    assert load_file(path)["f16"].dtype == np.float32  # widened
    header, metadata = read_header(path)
    assert header["i32_transposed"] == TensorInfo("I32", (4, 3), header["i32_transposed"].begin,
                                                  header["i32_transposed"].begin + 48)
    assert metadata == {"note": "hello"}
    assert (8 + struct.unpack("<Q", path.read_bytes()[:8])[0]) % 8 == 0  # data is 8-aligned


def test_bf16_and_f16_written_by_hand_are_widened(tmp_path):
    values = np.array([1.0, -2.5, 3.140625, 0.0], dtype=np.float32)  # exact in bfloat16
    bf16_bits = (values.view(np.uint32) >> 16).astype("<u2")
    f16 = values.astype("<f2")
    header = {
        "a_bf16": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]},
        "b_f16": {"dtype": "F16", "shape": [4], "data_offsets": [8, 16]},
    }
    path = tmp_path / "half.safetensors"
    write_raw(path, header, bf16_bits.tobytes() + f16.tobytes())
    wide = load_file(path)
    assert wide["a_bf16"].dtype == np.float32 and wide["a_bf16"].shape == (2, 2)
    np.testing.assert_array_equal(wide["a_bf16"].ravel(), values)
    np.testing.assert_array_equal(wide["b_f16"], values)
    raw = load_file(path, widen=False)
    assert raw["a_bf16"].dtype == np.uint16 and raw["b_f16"].dtype == np.float16


# Every one of the 65,536 16-bit patterns, laid out as a (256, 256) matrix: as bfloat16 and as
# float16 they hold both zeros, negatives, subnormals, both infinities and NaNs with payloads.
EVERY_PATTERN = np.arange(2**16, dtype=np.uint32).astype("<u2").reshape(256, 256)


def bfloat16_reference(bits: np.ndarray) -> np.ndarray:
    """The plain widening: the 16 bits shifted into the top of a 32-bit word."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def write_every_pattern(path, dtype: str, shape=(256, 256)) -> None:
    write_raw(path, {"w": {"dtype": dtype, "shape": list(shape), "data_offsets": [0, 2**17]}},
              EVERY_PATTERN.tobytes())


def test_every_bfloat16_and_float16_pattern_widens_exactly(tmp_path):
    reference = bfloat16_reference(EVERY_PATTERN)
    tiny = np.finfo(np.float32).tiny
    kinds = {"negative": (reference < 0).sum(), "inf": np.isinf(reference).sum(),
             "nan": np.isnan(reference).sum(),
             "subnormal": ((reference != 0) & (np.abs(reference) < tiny)).sum()}
    assert kinds["inf"] == 2 and all(count > 0 for count in kinds.values()), kinds
    from_float16 = EVERY_PATTERN.view(np.float16).astype(np.float32)
    for dtype, expected in [("BF16", reference), ("F16", from_float16)]:
        path = tmp_path / f"{dtype}.safetensors"
        write_every_pattern(path, dtype)
        wide = load_file(path)["w"]
        assert wide.dtype == np.float32 and wide.flags.c_contiguous and wide.flags.owndata
        # Bit for bit, so that NaN payloads and the sign of zero count too.
        np.testing.assert_array_equal(wide.view(np.uint32), expected.view(np.uint32))
        # A transform sees the widened values; its transposed view is kept, not copied.
        transposed = load_file(path, transform=lambda name, a: a.T)["w"]
        assert transposed.dtype == np.float32 and transposed.flags.f_contiguous
        np.testing.assert_array_equal(transposed.view(np.uint32), expected.T.view(np.uint32))


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_a_large_tensor_is_widened_by_a_team_of_threads_exactly(tmp_path, monkeypatch, threads):
    # 16 copies of every pattern (2 MB as BF16): past the size at which the widening is split
    # over one thread per core; 3 threads split it unevenly, 1 takes it whole.
    import gpt.io.safetensors as safetensors
    monkeypatch.setattr(safetensors, "default_threads", lambda: threads)
    teams = []
    real_team = safetensors.thread_team
    monkeypatch.setattr(safetensors, "thread_team",
                        lambda ranks: teams.append(ranks) or real_team(ranks))
    bits = np.tile(EVERY_PATTERN.ravel(), 16).reshape(64, 16384)
    assert bits.nbytes >= safetensors._WIDEN_SPLIT_BYTES
    path = tmp_path / "large.safetensors"
    for dtype, expected in [("BF16", bfloat16_reference(bits)),
                            ("F16", bits.view(np.float16).astype(np.float32))]:
        write_raw(path, {"w": {"dtype": dtype, "shape": [64, 16384],
                               "data_offsets": [0, bits.nbytes]}}, bits.tobytes())
        wide = load_file(path)["w"]
        np.testing.assert_array_equal(wide.view(np.uint32), expected.view(np.uint32))
    assert teams == [threads, threads]


@pytest.mark.parametrize("shape", [(1, 65536), (65536, 1), (17, 3), (37, 1771)])
def test_a_transposing_transform_gives_the_transpose_as_a_view(tmp_path, shape):
    # A float32 tensor stays in the mapped file (writable: copy-on-write); a widened one is
    # a view of its new float32 array. Either way nothing is copied into another order.
    path = tmp_path / "w.safetensors"
    bits = EVERY_PATTERN.reshape(-1)[:np.prod(shape)].reshape(shape)
    for dtype, stored in [("BF16", bits), ("F32", bits.astype(np.float32))]:
        write_raw(path, {"w": {"dtype": dtype, "shape": list(shape),
                               "data_offsets": [0, stored.nbytes]}}, stored.tobytes())
        for widen in (True, False):
            loaded = load_file(path, widen=widen, writable=True,
                               transform=lambda name, a: a.T)["w"]
            expected = bfloat16_reference(stored) if dtype == "BF16" and widen else stored
            assert loaded.dtype == expected.dtype and loaded.shape == shape[::-1]
            assert loaded.flags.f_contiguous and not loaded.flags.owndata
            assert loaded.base is not None and loaded.flags.writeable
            np.testing.assert_array_equal(loaded.T.view(np.uint8), expected.view(np.uint8))


def test_a_transform_view_that_is_already_in_order_stays_a_view_of_the_file(tmp_path):
    # A float32 tensor that needs no rearranging is not copied: it stays in the mapped file.
    path = tmp_path / "f.safetensors"
    save_file({"v": np.arange(6, dtype=np.float32).reshape(2, 3)}, path)
    kept = load_file(path, transform=lambda name, a: a[1:])["v"]
    assert not kept.flags.owndata and not kept.flags.writeable
    np.testing.assert_array_equal(kept, [[3, 4, 5]])


def test_unsupported_array_dtype_is_refused(tmp_path):
    with pytest.raises(SafetensorsError, match="complex128"):
        save_file({"z": np.zeros(2, dtype=np.complex128)}, tmp_path / "z.safetensors")
    assert not (tmp_path / "z.safetensors").exists()


def test_metadata_name_is_reserved(tmp_path):
    with pytest.raises(SafetensorsError, match="reserved"):
        save_file({"__metadata__": np.zeros(1)}, tmp_path / "m.safetensors")


F32_2 = {"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}


@pytest.mark.parametrize(
    "header, data, message",
    [
        (F32_2, b"\0" * 4, "cover 8 bytes of data but the file holds 4"),
        (F32_2, b"\0" * 12, "cover 8 bytes of data but the file holds 12"),
        ({"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, "needs 12"),
        ({"x": {"dtype": "Q8", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, "unknown dtype 'Q8'"),
        ({"x": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8, "non-negative"),
        ({"x": {"dtype": "F32", "shape": [2]}}, b"\0" * 8, "must have dtype, shape and data_offsets"),
        ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, b"\0" * 8, "end before"),
        (
            {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
             "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}},
            b"\0" * 12, "overlaps",
        ),
        (
            {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
             "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}},
            b"\0" * 12, "gap",
        ),
        ({"__metadata__": {"n": 1}, **F32_2}, b"\0" * 8, "strings to strings"),
        ([1, 2], b"", "must be a JSON object"),
    ],
)
def test_lying_headers_are_rejected(tmp_path, header, data, message):
    path = tmp_path / "bad.safetensors"
    write_raw(path, header, data)
    with pytest.raises(SafetensorsError, match=message):
        load_file(path)


def test_truncated_and_garbled_files_are_rejected(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x10\0\0")
    with pytest.raises(SafetensorsError, match="truncated, 3 bytes"):
        read_header(path)
    path.write_bytes(struct.pack("<Q", 1000) + b"{}")
    with pytest.raises(SafetensorsError, match="header length 1,000 runs past the end of the 10-byte file"):
        read_header(path)
    path.write_bytes(struct.pack("<Q", 2**40) + b"{}")
    with pytest.raises(SafetensorsError, match="absurd"):
        read_header(path)
    path.write_bytes(struct.pack("<Q", 8) + b"{not json")
    with pytest.raises(SafetensorsError, match="not valid UTF-8 JSON"):
        read_header(path)
    assert issubclass(SafetensorsError, ValueError)
