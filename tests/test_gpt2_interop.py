"""GPT-2 interop: Hugging Face checkpoints in, our checkpoints out, and every way to get it wrong.

The heart is the comparison with `shared/reference/hf-gpt2-tiny`: a small random GPT-2 that
`transformers` saved, with the logits, loss and gradients PyTorch computed for one batch. Our
model loaded from that directory must agree to 1e-4.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from _paths import data_file, reference_file

from autograd import Tensor, no_grad
from autograd import functional as F
from autograd.nn import skip_init
from bpe import Tokenizer
from bpe.gpt2 import gpt2_files_problem, save_gpt2_files
from gpt import GPT, GPTConfig
from gpt.core.generate import generate
from gpt.io.checkpoint import (CheckpointError, config_from_hf, config_to_hf, load_pretrained,
                               load_tokenizer_from, resolve_checkpoint, save_pretrained)
from gpt.io.safetensors import load_file, read_header, save_file

TOL = 1e-4


@pytest.fixture(scope="module")
def ref_dir() -> Path:
    return reference_file("hf-gpt2-tiny")


@pytest.fixture(scope="module")
def ref(ref_dir) -> dict[str, np.ndarray]:
    with np.load(ref_dir / "reference.npz") as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def ref_tensors(ref_dir) -> dict[str, np.ndarray]:
    """The reference weights as plain arrays, under their file names (`transformer.` ...)."""
    return {name: np.array(a) for name, a in load_file(ref_dir / "model.safetensors").items()}


def hf_dir(tmp_path: Path, ref_dir: Path, tensors: dict[str, np.ndarray] | None = None,
           config: dict | None = None, name: str = "hf") -> Path:
    """A Hugging Face-style directory: the reference config (or `config`) and these weights."""
    directory = tmp_path / name
    directory.mkdir()
    if config is None:
        shutil.copyfile(ref_dir / "config.json", directory / "config.json")
    else:
        (directory / "config.json").write_text(json.dumps(config))
    if tensors is None:
        shutil.copyfile(ref_dir / "model.safetensors", directory / "model.safetensors")
    else:
        save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    return directory


def loss_and_grads(model: GPT, x: np.ndarray, y: np.ndarray) -> tuple[Tensor, Tensor]:
    logits = model(x)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    model.zero_grad()
    loss.backward()
    return logits, loss


# ----------------------------------------------------------------------------------------------
# Against PyTorch


def test_logits_loss_and_gradients_match_pytorch(ref_dir, ref):
    model = load_pretrained(ref_dir)
    assert model.config == GPTConfig(vocab_size=512, block_size=64, n_layer=2, n_head=4, n_embd=64)
    logits, loss = loss_and_grads(model, ref["x"], ref["y"])
    assert logits.dtype == np.float32
    assert np.abs(logits.data - ref["logits"]).max() < TOL
    assert abs(float(loss.data) - float(ref["loss"])) < TOL
    names = [name for name, _ in model.named_parameters()]
    assert sorted("grad__transformer." + n for n in names) == \
        sorted(k for k in ref if k.startswith("grad__"))
    for name, p in model.named_parameters():
        expected = ref["grad__transformer." + name]
        scale = np.abs(expected).max()
        assert np.abs(p.grad - expected).max() / scale < TOL, name


def test_hidden_states_match_pytorch(ref_dir, ref):
    # transformers' hidden_states: the embeddings, the output of each block but the last, and
    # the last block's output after ln_f. A mismatch here says which layer went wrong.
    model = load_pretrained(ref_dir)
    x = ref["x"]
    with no_grad():
        h = model.wte(x) + model.wpe(np.arange(x.shape[1]))
        states = [h]
        for block in model.h:
            h = block(h)
            states.append(h)
        states[-1] = model.ln_f(h)
    for i, state in enumerate(states):
        assert np.abs(state.data - ref[f"hidden_states_{i}"]).max() < TOL, i


def test_float64_model_agrees_to_the_reference_float32_rounding(ref_dir, ref):
    # In float64 our own rounding vanishes; what is left is PyTorch's float32 rounding, about
    # 1e-6 here: the agreement above is not luck at the edge of the tolerance.
    model = load_pretrained(ref_dir, dtype=np.float64)
    assert all(p.dtype == np.float64 for p in model.parameters())
    logits, loss = loss_and_grads(model, ref["x"], ref["y"])
    assert np.abs(logits.data - ref["logits"]).max() < 1e-5
    assert abs(float(loss.data) - float(ref["loss"])) < 1e-5
    for name, p in model.named_parameters():
        expected = ref["grad__transformer." + name]
        assert np.abs(p.grad - expected).max() / np.abs(expected).max() < 1e-5, name


def test_keys_without_prefix_with_mask_buffers_and_tied_head_load(tmp_path, ref_dir, ref,
                                                                  ref_tensors):
    # The layout of the `gpt2` repository on the Hub: no `transformer.` prefix, the causal-mask
    # buffers stored, and (in some exports) the tied head written out as `lm_head.weight`.
    tensors = {name.removeprefix("transformer."): a for name, a in ref_tensors.items()}
    mask = np.tril(np.ones((64, 64), dtype=np.float32))[None, None]
    for layer in range(2):
        tensors[f"h.{layer}.attn.bias"] = mask
        tensors[f"h.{layer}.attn.masked_bias"] = np.array(-1e4, dtype=np.float32)
    tensors["lm_head.weight"] = tensors["wte.weight"]
    directory = hf_dir(tmp_path, ref_dir, tensors)
    with no_grad():
        logits = load_pretrained(directory)(ref["x"])
    assert np.abs(logits.data - ref["logits"]).max() < TOL


# ----------------------------------------------------------------------------------------------
# Export, import, memory mapping


def test_export_is_byte_identical_to_transformers_and_import_is_the_identity(tmp_path, ref_dir):
    model = load_pretrained(ref_dir)
    out = save_pretrained(model, tmp_path / "out")
    assert (out / "model.safetensors").read_bytes() == (ref_dir / "model.safetensors").read_bytes()
    again = load_pretrained(out)
    assert again.config == model.config
    for (name, a), (name2, b) in zip(model.named_parameters(), again.named_parameters()):
        assert name == name2 and a.dtype == b.dtype and np.array_equal(a.data, b.data)
    # A second round trip changes nothing either (our own config.json keys this time).
    save_pretrained(again, tmp_path / "out2")
    assert (tmp_path / "out2" / "model.safetensors").read_bytes() == \
        (out / "model.safetensors").read_bytes()


def test_exported_config_reads_back_as_the_same_config_through_gpt2_keys_alone():
    config = GPTConfig(vocab_size=300, block_size=48, n_layer=3, n_head=2, n_embd=16,
                       dropout=0.1, layer_norm_epsilon=1e-6)
    hf = config_to_hf(config, eot_id=299)
    assert (hf["n_layer"], hf["n_head"], hf["n_embd"], hf["n_positions"], hf["vocab_size"],
            hf["layer_norm_epsilon"], hf["tie_word_embeddings"]) == (3, 2, 16, 48, 300, 1e-6, True)
    assert hf["model_type"] == "gpt2" and hf["eos_token_id"] == 299
    assert config_from_hf(hf) == config
    del hf["deep_understanding"]                  # as transformers' own config.json would be
    assert config_from_hf(hf) == config


@pytest.mark.parametrize("change, message", [
    ({"n_inner": 100}, "n_inner=100 is not 4 \\* n_embd"),
    ({"activation_function": "relu"}, "activation_function 'relu'"),
    ({"tie_word_embeddings": False}, "untied output heads are not supported"),
])
def test_gpt2_configs_we_cannot_run_are_refused(ref_dir, change, message):
    values = json.loads((ref_dir / "config.json").read_text())
    with pytest.raises(CheckpointError, match=message):
        config_from_hf({**values, **change})


def test_parameters_are_the_mapped_file_and_writing_them_leaves_the_file_alone(tmp_path, ref_dir):
    directory = hf_dir(tmp_path, ref_dir)
    before = hashlib.sha256((directory / "model.safetensors").read_bytes()).hexdigest()
    model = load_pretrained(directory)
    for p in model.parameters():
        data = p.data
        assert data.dtype == np.float32 and data.flags.c_contiguous and data.flags.writeable
        assert not data.flags.owndata                      # a view of the mapping, not a copy
    model.wte.weight.data[...] = 0.0                       # what an optimizer step does
    model.h[0].mlp.c_fc.weight.data += 1.0
    after = hashlib.sha256((directory / "model.safetensors").read_bytes()).hexdigest()
    assert before == after
    assert not np.any(model.wte.weight.data)
    # Saving into the very directory it was loaded from replaces the file by a rename: the
    # mapping keeps the old file, so the parameters are intact while the new file is written.
    save_pretrained(model, directory)
    reloaded = load_pretrained(directory)
    assert not np.any(reloaded.wte.weight.data)
    assert np.array_equal(reloaded.h[0].mlp.c_fc.weight.data, model.h[0].mlp.c_fc.weight.data)


def test_skip_init_allocates_without_initialising():
    config = GPTConfig.preset("tiny")
    with skip_init():
        model = GPT(config)
    assert [p.shape for p in model.parameters()] == [p.shape for p in GPT(config).parameters()]
    assert all(p.dtype == np.float32 for p in model.parameters())


def _write_bf16(tensors: dict[str, np.ndarray], path: Path) -> None:
    # save_file has no BF16 (NumPy has no such dtype): lay the file out by hand, storing the
    # top 16 bits of each float32.
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        bits = (np.ascontiguousarray(tensors[name], dtype="<f4").view("<u4") >> 16).astype("<u2")
        header[name] = {"dtype": "BF16", "shape": list(bits.shape),
                        "data_offsets": [offset, offset + bits.nbytes]}
        blobs.append(bits.tobytes())
        offset += bits.nbytes
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


@pytest.mark.parametrize("dtype", ["F16", "BF16"])
def test_half_precision_files_load_widened_to_float32(tmp_path, ref_dir, ref, ref_tensors, dtype):
    directory = hf_dir(tmp_path, ref_dir)
    if dtype == "F16":
        save_file({k: a.astype(np.float16) for k, a in ref_tensors.items()},
                  directory / "model.safetensors")
        expected = {k: a.astype(np.float16).astype(np.float32) for k, a in ref_tensors.items()}
    else:
        _write_bf16(ref_tensors, directory / "model.safetensors")
        expected = {k: (a.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)
                    for k, a in ref_tensors.items()}
    assert {info.dtype for info in read_header(directory / "model.safetensors")[0].values()} == \
        {dtype}
    model = load_pretrained(directory)
    for name, p in model.named_parameters():
        assert p.dtype == np.float32 and p.data.flags.c_contiguous and p.data.flags.writeable
        assert np.array_equal(p.data, expected["transformer." + name]), name
    with no_grad():
        logits = model(ref["x"]).data
    assert np.abs(logits - ref["logits"]).max() < 0.1       # half precision's own error


# ----------------------------------------------------------------------------------------------
# Bad input: each says what is wrong


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_pretrained(tmp_path / "nowhere")


def test_a_file_is_not_a_checkpoint(tmp_path, ref_dir):
    with pytest.raises(CheckpointError, match="is not a directory"):
        load_pretrained(ref_dir / "model.safetensors")


def test_directory_without_weights(tmp_path, ref_dir):
    directory = tmp_path / "empty"
    directory.mkdir()
    shutil.copyfile(ref_dir / "config.json", directory / "config.json")
    with pytest.raises(CheckpointError, match="no checkpoint in .*model.safetensors"):
        load_pretrained(directory)
    (directory / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(CheckpointError, match="pytorch_model.bin, a PyTorch pickle"):
        load_pretrained(directory)


def test_directory_without_config(tmp_path, ref_dir):
    directory = hf_dir(tmp_path, ref_dir)
    (directory / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_pretrained(directory)


@pytest.mark.parametrize("text, message", [
    ('{"n_layer": 2,', "is not valid JSON"),
    ("[1, 2]", "does not hold a JSON object"),
    ('{"n_layer": 2, "n_head": 4, "n_embd": 64, "vocab_size": 512}', "missing key 'n_positions'"),
    ('{"n_layer": 2, "n_head": 3, "n_embd": 64, "n_positions": 64, "vocab_size": 512}',
     "not divisible"),
])
def test_corrupt_config(tmp_path, ref_dir, text, message):
    directory = hf_dir(tmp_path, ref_dir)
    (directory / "config.json").write_text(text)
    with pytest.raises(CheckpointError, match=message):
        load_pretrained(directory)


def test_weights_of_another_shape(tmp_path, ref_dir):
    config = json.loads((ref_dir / "config.json").read_text())
    directory = hf_dir(tmp_path, ref_dir, config={**config, "vocab_size": 500})
    with pytest.raises(CheckpointError, match=r"shape mismatch for 'wte.weight': the config "
                                              r"needs \(500, 64\), the file has \(512, 64\)"):
        load_pretrained(directory)


def test_missing_and_unexpected_tensors(tmp_path, ref_dir, ref_tensors):
    config = json.loads((ref_dir / "config.json").read_text())
    tensors = dict(ref_tensors)
    del tensors["transformer.ln_f.bias"]
    directory = hf_dir(tmp_path, ref_dir, tensors)
    with pytest.raises(CheckpointError, match=r"missing tensors \(1\): ln_f.bias"):
        load_pretrained(directory)
    deeper = hf_dir(tmp_path, ref_dir, config={**config, "n_layer": 1}, name="deeper")
    with pytest.raises(CheckpointError, match=r"unexpected tensors \(12\): h\.1\."):
        load_pretrained(deeper)


def test_integer_weights_are_refused(tmp_path, ref_dir, ref_tensors):
    tensors = {**ref_tensors, "transformer.ln_f.bias": np.zeros(64, dtype=np.int32)}
    with pytest.raises(CheckpointError, match="'ln_f.bias' holds int32"):
        load_pretrained(hf_dir(tmp_path, ref_dir, tensors))


def test_truncated_weights(tmp_path, ref_dir):
    directory = hf_dir(tmp_path, ref_dir)
    path = directory / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match=r"model.safetensors: the tensors cover .* \(truncated"):
        load_pretrained(directory)


def test_untied_head_is_refused(tmp_path, ref_dir, ref_tensors):
    tensors = {**ref_tensors, "lm_head.weight": ref_tensors["transformer.wte.weight"] + 1}
    with pytest.raises(CheckpointError, match="lm_head.weight differs from wte.weight"):
        load_pretrained(hf_dir(tmp_path, ref_dir, tensors))


def test_overrides_that_do_not_fit_are_reported(ref_dir):
    with pytest.raises(CheckpointError, match="cannot apply"):
        load_pretrained(ref_dir, dropout=2.0)
    model = load_pretrained(ref_dir, dropout=0.1)
    assert model.config.dropout == 0.1


# ----------------------------------------------------------------------------------------------
# Tokenizers


STORY = ("Once upon a time there was a little fox who liked to run in the snow. "
         "Every morning the fox ran to the river, and every evening it ran home again.\n") * 8


@pytest.fixture(scope="module")
def small_gpt2_style_tokenizer() -> Tokenizer:
    return Tokenizer.train(STORY, vocab_size=300, pattern="gpt2",
                           special_tokens=["<|endoftext|>"], progress=False)


def test_gpt2_files_round_trip_and_match_openais_bytes(tmp_path):
    encoder, merges = data_file("gpt2-encoder.json"), data_file("gpt2-vocab.bpe")
    tokenizer = Tokenizer.from_gpt2(encoder, merges)
    vocab_path, merges_path = save_gpt2_files(tokenizer, tmp_path)
    assert (vocab_path.name, merges_path.name) == ("vocab.json", "merges.txt")
    assert vocab_path.read_bytes() == encoder.read_bytes()
    assert merges_path.read_bytes() == merges.read_bytes()


def test_only_gpt2_pattern_tokenizers_are_written_as_gpt2_files(tmp_path,
                                                                small_gpt2_style_tokenizer):
    other = Tokenizer.train(STORY, vocab_size=300, pattern="gpt4", progress=False)
    assert "split pattern is not GPT-2's" in gpt2_files_problem(other)
    with pytest.raises(ValueError, match="split pattern"):
        save_gpt2_files(other, tmp_path)
    model = GPT(GPTConfig.preset("tiny", vocab_size=300))
    save_pretrained(model, tmp_path / "other", other)
    assert not (tmp_path / "other" / "vocab.json").exists()
    assert load_tokenizer_from(tmp_path / "other") == other       # from tokenizer.du.json

    assert gpt2_files_problem(small_gpt2_style_tokenizer) is None
    save_pretrained(model, tmp_path / "mine", small_gpt2_style_tokenizer)
    assert (tmp_path / "mine" / "merges.txt").is_file()
    (tmp_path / "mine" / "tokenizer.du.json").unlink()           # as a Hugging Face dir
    back = load_tokenizer_from(tmp_path / "mine")
    assert back.merges == small_gpt2_style_tokenizer.merges
    assert back.encode(STORY, allowed_special="all") == \
        small_gpt2_style_tokenizer.encode(STORY, allowed_special="all")
    assert back.eot_id == small_gpt2_style_tokenizer.eot_id


def test_damaged_gpt2_tokenizer_files_are_reported(tmp_path, small_gpt2_style_tokenizer):
    save_gpt2_files(small_gpt2_style_tokenizer, tmp_path)
    (tmp_path / "vocab.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="tokenizer files vocab.json and merges.txt are "
                                              "damaged"):
        load_tokenizer_from(tmp_path)


def make_hf_dir_with_tokenizer(tmp_path: Path, ref_dir: Path, ref_tensors: dict,
                               tokenizer: Tokenizer) -> Path:
    """What `python -m gpt.download` leaves: config.json, model.safetensors, vocab.json,
    merges.txt. Here: the tiny reference model cut down to a small GPT-2-style vocabulary."""
    config = json.loads((ref_dir / "config.json").read_text())
    config["vocab_size"] = vocab = tokenizer.vocab_size
    config["bos_token_id"] = config["eos_token_id"] = tokenizer.eot_id
    tensors = dict(ref_tensors)
    tensors["transformer.wte.weight"] = tensors["transformer.wte.weight"][:vocab]
    directory = hf_dir(tmp_path, ref_dir, tensors, config, name="hf-with-tokenizer")
    save_gpt2_files(tokenizer, directory)
    return directory


def test_a_hugging_face_directory_loads_for_chat(tmp_path, ref_dir, ref_tensors,
                                                 small_gpt2_style_tokenizer):
    # What chat.py does with --ckpt: the model and the tokenizer from one directory.
    directory = make_hf_dir_with_tokenizer(tmp_path, ref_dir, ref_tensors,
                                           small_gpt2_style_tokenizer)
    model = load_pretrained(directory)
    tokenizer = load_tokenizer_from(directory)
    assert resolve_checkpoint(directory) == directory
    assert tokenizer.vocab_size == 300 and tokenizer.eot_id == 299
    ids = generate(model, tokenizer.encode("Once upon a time"), max_new_tokens=5, temperature=0)
    assert len(ids) == 5 and all(0 <= i < model.config.vocab_size for i in ids)


def test_train_init_fine_tunes_a_hugging_face_directory(tmp_path, ref_dir, ref_tensors,
                                                       small_gpt2_style_tokenizer):
    from gpt.train.pretrain import TrainSettings, prepare_run, train

    directory = make_hf_dir_with_tokenizer(tmp_path, ref_dir, ref_tensors,
                                           small_gpt2_style_tokenizer)
    before = (directory / "model.safetensors").read_bytes()
    text = tmp_path / "story.txt"
    text.write_text(STORY * 4)
    settings = TrainSettings(data=str(text), data_dir=str(tmp_path / "cache"), init=str(directory),
                             max_iters=2, warmup_iters=0, eval_interval=2, eval_iters=1,
                             batch_size=2, sample_tokens=4, out_dir=str(tmp_path / "runs"),
                             run_name="ft", progress=False, lr=1e-3, block_size=32)
    run = prepare_run(settings, log=lambda message: None)
    assert run.model.config.block_size == 32                       # --block-size crops wpe
    assert run.tokenizer.merges == small_gpt2_style_tokenizer.merges    # taken from --init
    initial = ref_tensors["transformer.wte.weight"][:300]
    assert np.array_equal(run.model.wte.weight.data, initial)
    train(run)
    assert (directory / "model.safetensors").read_bytes() == before
    tuned = load_pretrained(tmp_path / "runs" / "ft")
    assert tuned.config == load_pretrained(directory, block_size=32).config
    assert not np.array_equal(tuned.wte.weight.data, initial)
    assert (tmp_path / "runs" / "ft" / "latest" / "vocab.json").is_file()


def test_a_gpt2_name_means_its_download_directory(tmp_path, ref_dir, monkeypatch):
    monkeypatch.delenv("DU_DATA_DIR", raising=False)
    with pytest.raises(CheckpointError, match="gpt2-medium is not downloaded .* `python -m "
                                              "gpt.download gpt2-medium"):
        resolve_checkpoint("gpt2-medium", data_dir=tmp_path)
    target = tmp_path / "models" / "gpt2"
    shutil.copytree(ref_dir, target)
    assert resolve_checkpoint("gpt2", data_dir=tmp_path) == target
    monkeypatch.setenv("DU_DATA_DIR", str(tmp_path))
    assert load_pretrained("gpt2").config.n_embd == 64


def test_a_smaller_block_size_crops_the_position_embedding(ref_dir, ref):
    model = load_pretrained(ref_dir, block_size=16)
    assert model.config.block_size == 16 and model.wpe.weight.shape == (16, 64)
    assert not model.wpe.weight.data.flags.owndata            # cropped in place: no copy
    with no_grad():                                           # the reference batch is 16 long
        assert np.abs(model(ref["x"]).data - ref["logits"]).max() < TOL
    with pytest.raises(CheckpointError, match=r"shape mismatch for 'wpe.weight'"):
        load_pretrained(ref_dir, block_size=128)
