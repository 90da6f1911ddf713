"""LoRA on converted ``transformers`` models against PEFT: adapter folders both ways, merge, compile.

A converted GPT-2 (``c_attn``, a ``Conv1D``: ``TransposedLinear``, PEFT's ``fan_in_fan_out``) and
Llama (``q_proj``, ``v_proj``) are adapted with globs on the original names; ``save_adapters``
writes the original names, so ``PeftModel.from_pretrained(original, folder)`` gives the same
logits, and ``load_adapters(converted, folder)`` reads the folder PEFT saves for the original.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from fnmatch import fnmatch

import pytest
import torch

import modify

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

CASES = {
    "gpt2": (
        lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=64, bos_token_id=0, eos_token_id=0)),
        ("*.c_attn",),
        ["c_attn"],
    ),
    "llama": (
        lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, intermediate_size=32, max_position_embeddings=64, pad_token_id=0, bos_token_id=0, eos_token_id=0)),
        ("*.q_proj", "*.v_proj"),
        ["q_proj", "v_proj"],
    ),
}


@contextlib.contextmanager
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers' and PEFT's own notices (deprecations)
        yield


def converted_pair(name: str, gen: torch.Generator):
    torch.manual_seed(0)
    original = CASES[name][0]().eval()
    ids = torch.randint(1, 64, (2, 8), generator=gen)
    return original, modify.convert(original, (ids,), {"use_cache": False}), ids


def logits(model, ids):
    with torch.no_grad():
        return model(ids, use_cache=False).logits


@pytest.mark.parametrize("name", list(CASES))
def test_save_adapters_of_a_converted_model_loads_in_peft_on_the_original(name, gen, tmp_path):
    original, converted, ids = converted_pair(name, gen)
    globs = CASES[name][1]  # modify.any_of(*globs) once the house branch is merged
    adapted = modify.lora(converted, 4, alpha=8, where=lambda path, m: any(fnmatch(path, g) for g in globs))
    with torch.no_grad():
        for p in modify.lora_parameters(adapted):
            p.normal_(0, 0.2, generator=gen)
    modify.save_adapters(adapted, tmp_path)
    with quiet():
        reference = peft.PeftModel.from_pretrained(copy.deepcopy(original), tmp_path).eval()
    with torch.no_grad():
        expected = reference(input_ids=ids, use_cache=False).logits
        torch.testing.assert_close(adapted(ids), expected, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(expected, logits(original, ids), atol=1e-3)  # the adapters matter


@pytest.mark.parametrize("name", list(CASES))
def test_load_adapters_reads_a_peft_folder_saved_for_the_original(name, gen, tmp_path):
    original, converted, ids = converted_pair(name, gen)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=CASES[name][2], fan_in_fan_out=name == "gpt2", init_lora_weights=False)
    with quiet():
        reference = peft.get_peft_model(copy.deepcopy(original), config).eval()
        reference.save_pretrained(tmp_path)
    with torch.no_grad():
        expected = reference(input_ids=ids, use_cache=False).logits
    loaded = modify.load_adapters(converted, tmp_path)
    with torch.no_grad():
        got = loaded(ids)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        merged = modify.merge_lora(loaded)
        torch.testing.assert_close(merged(ids), got, atol=1e-5, rtol=1e-5)
    assert list(merged.state_dict()) == list(converted.state_dict())


def test_a_converted_llama_compiles_without_graph_breaks(gen):
    original, converted, ids = converted_pair("llama", gen)
    torch._dynamo.reset()
    compiled = torch.compile(converted, backend="eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(ids), logits(original, ids), atol=1e-5, rtol=1e-5)
