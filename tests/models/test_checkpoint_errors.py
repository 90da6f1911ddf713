"""Bad checkpoints: one ``CheckpointError`` naming the file or folder and what arrived, before any allocation."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import save_file

from modify.models import GPT, CheckpointError, Llama, ResNet
from modify.models.llama import HF_KEYS

LLAMA = dict(
    vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=32,
)  # fmt: skip


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """A valid Llama folder written by transformers."""
    folder = tmp_path_factory.mktemp("good")
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA)).save_pretrained(folder)
    return folder


def copy_of(good: Path, tmp_path: Path) -> Path:
    for file in good.iterdir():
        (tmp_path / file.name).write_bytes(file.read_bytes())
    return tmp_path


def expect_error(source, match: str, *names: str):
    """``Llama.from_pretrained(source)`` raises a ``CheckpointError`` matching ``match`` and naming ``names``."""
    with pytest.raises(CheckpointError, match=match) as caught:
        Llama.from_pretrained(source)
    for name in names:
        assert str(name) in str(caught.value)
    return caught.value


@pytest.mark.parametrize(
    "content, match",
    [
        (b"[1, 2]", "holds a JSON list, not an object"),
        (b'"llama"', "holds a JSON str, not an object"),
        (b"42", "holds a JSON int, not an object"),
        (b"null", "holds a JSON NoneType, not an object"),
        (b'{"model_type": "llama",', "is not a JSON config.json"),
        (bytes(range(256)), "is not a JSON config.json"),
        (b"", "is not a JSON config.json"),
    ],
)
def test_config_json_that_is_not_an_object(content, match, good, tmp_path):
    folder = copy_of(good, tmp_path)
    (folder / "config.json").write_bytes(content)
    expect_error(folder, match, folder / "config.json")


@pytest.mark.parametrize(
    "index, match",
    [
        ({"metadata": {}}, "has no 'weight_map' object"),
        ({"weight_map": ["model.safetensors"]}, "has no 'weight_map' object"),
        ({"weight_map": {}}, "has no 'weight_map' object"),
        ({"weight_map": {"lm_head.weight": 3}}, "maps keys to non-file names"),
        ({"weight_map": {"lm_head.weight": None}}, "maps keys to non-file names"),
        ({"weight_map": {"lm_head.weight": "model-00002.safetensors"}}, "names the shard 'model-00002.safetensors'"),
        ({"weight_map": {"lm_head.weight": "model.safetensors.index.json"}}, "not a weights file beside it"),
        ({"weight_map": {"lm_head.weight": "../model.safetensors"}}, "not a weights file beside it"),
        ({"weight_map": {"lm_head.weight": "shard.safetensors", "not.in.shard": "shard.safetensors"}},
         r"maps keys their shards lack: \['not.in.shard'\]"),
    ],
)  # fmt: skip
def test_malformed_sharded_index(index, match, good, tmp_path):
    folder = copy_of(good, tmp_path)
    (folder / "model.safetensors").rename(folder / "shard.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    expect_error(folder, match, folder / "model.safetensors.index.json")


def truncated(path: Path) -> bytes:
    data = path.read_bytes()
    return data[: len(data) // 2]


@pytest.mark.parametrize("kind", ["empty", "garbage", "truncated", "header only"])
def test_unreadable_safetensors_names_the_file(kind, good, tmp_path):
    folder = copy_of(good, tmp_path)
    file = folder / "model.safetensors"
    content = {"empty": b"", "garbage": b"\x00garbage" * 100, "truncated": truncated(file)}.get(kind)
    file.write_bytes(content if content is not None else file.read_bytes()[:200])
    expect_error(folder, "is not a readable safetensors file", file)


@pytest.mark.parametrize("kind", ["empty", "garbage", "truncated"])
def test_unreadable_bin_names_the_file(kind, good, tmp_path):
    file = tmp_path / "pytorch_model.bin"
    torch.save(Llama.from_pretrained(good).state_dict(), file)
    content = {"empty": b"", "garbage": b"e" + b"\x65garbage" * 100, "truncated": truncated(file)}[kind]
    file.write_bytes(content)
    (tmp_path / "config.json").write_bytes((good / "config.json").read_bytes())
    expect_error(tmp_path, "is not a readable torch.save file", file)


def test_state_dict_with_non_string_keys_or_complex_tensors(good, tmp_path):
    state = dict(Llama.from_pretrained(good).state_dict())
    expect_error({**state, 101: torch.zeros(1)}, r"non-string keys \[101\]", "the state_dict given")
    torch.save({**state, 101: torch.zeros(1)}, tmp_path / "weights.bin")
    expect_error(tmp_path / "weights.bin", r"non-string keys \[101\]", tmp_path / "weights.bin")
    complex_state = {**state, "lm_head.weight": torch.zeros(64, 32, dtype=torch.complex64)}
    expect_error(complex_state, r"complex tensors \['lm_head.weight'\]")
    save_file(complex_state, tmp_path / "complex.safetensors")
    expect_error(tmp_path / "complex.safetensors", r"holds complex tensors.*lm_head.weight", tmp_path / "complex.safetensors")


def test_key_problems_are_one_error_naming_the_folder(good, tmp_path):
    folder = copy_of(good, tmp_path)
    state = dict(Llama.from_pretrained(good).state_dict())
    reference = {HF_KEYS.reference_key(k): v.contiguous() for k, v in state.items()}
    del reference["model.norm.weight"]
    reference["model.extra"] = torch.zeros(1)
    reference["lm_head.weight"] = torch.zeros(64, 31)
    reference["model.embed_tokens.weight"] = torch.zeros(64, 32, dtype=torch.int32)
    save_file(reference, folder / "model.safetensors")
    error = expect_error(folder, "does not fit the model", folder)
    assert error.missing == ["model.norm.weight"] and error.unexpected == ["model.extra"]
    assert [line.split(":")[0] for line in error.mismatched] == ["model.embed_tokens.weight", "lm_head.weight"]
    assert "checkpoint dtype torch.int32" in error.mismatched[0]


@pytest.mark.parametrize(
    "change, match",
    [
        ({"model_type": "gpt2"}, r"holds a 'gpt2' model \(config.json model_type\)"),
        ({"model_type": "bert"}, r"holds a 'bert' model"),
        ({"hidden_act": "gelu"}, "refuses: hidden_act 'gelu' is not supported"),
        ({"rope_parameters": {"rope_type": "yarn", "factor": 2.0}}, "rope_type 'yarn' is not supported"),
        ({"hidden_size": -32}, "hidden_size must be positive"),
        ({"num_hidden_layers": "two"}, "field 'num_hidden_layers'"),
    ],
)
def test_config_we_do_not_read_names_the_folder(change, match, good, tmp_path):
    folder = copy_of(good, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **change}))
    expect_error(folder, match, folder)


def test_other_models_refuse_each_others_folders(good):
    with pytest.raises(CheckpointError, match=r"holds a 'llama' model .* reads \['gpt2'\]"):
        GPT.from_pretrained(good)
    with pytest.raises(CheckpointError, match=r"holds a 'llama' model .* reads \['resnet'\]"):
        ResNet.from_pretrained(good)


LIMITED = """
import json, resource, sys, torch
from modify.models import CheckpointError, Llama
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
used = int(status["VmSize"].split()[0]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (used + (512 << 20), resource.RLIM_INFINITY))  # 512 MiB more
try:
    torch.empty(1 << 30, dtype=torch.uint8)  # the limit bites: 1 GiB cannot be allocated
    print("no limit")
except (MemoryError, RuntimeError):
    pass
try:
    Llama.from_pretrained(sys.argv[1])
except CheckpointError as error:
    print("CheckpointError:", error)
"""


@pytest.mark.parametrize("kind", ["a GPT-2 folder", "Llama-7B config, tiny weights"])
def test_bad_big_loads_fail_before_allocating(kind, good, tmp_path):
    if kind == "a GPT-2 folder":
        config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)
        transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path)
        config = json.loads((tmp_path / "config.json").read_text())
        config = {k: v for k, v in config.items() if k != "n_embd"}  # Llama would fall back to 7B sizes
        (tmp_path / "config.json").write_text(json.dumps(config))
        expected = "holds a 'gpt2' model"
    else:
        copy_of(good, tmp_path)
        seven_b = transformers.LlamaConfig().to_dict()  # 32 layers of 4096: 27 GB in float32
        (tmp_path / "config.json").write_text(json.dumps(seven_b))
        expected = "does not fit the model"
    script = textwrap.dedent(LIMITED)
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "no limit" not in result.stdout
    assert expected in result.stdout and str(tmp_path) in result.stdout
