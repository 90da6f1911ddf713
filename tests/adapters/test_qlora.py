"""QLoRA: save_adapters over a quantized base writes the folder PEFT loads, with equal logits."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import modify
from modify.models import GPT, Llama
from tests.adapters.test_lora_files import GPT_SIZES, LLAMA_SIZES, logits, quiet, randomise

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")


def dequantized_reference(qlora: torch.nn.Module, hf: torch.nn.Module, folder) -> torch.nn.Module:
    """The transformers model holding the quantized base's dequantized weights."""
    plain = modify.merge_lora(modify.lora(modify.strip_lora(qlora), rank=1))  # B = 0: the dequantized base
    plain.save_pretrained(folder)
    with quiet():
        return type(hf).from_pretrained(folder).eval()


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_the_qlora_folder_is_the_float_one_and_loads_in_peft(name, tmp_path, gen):
    with quiet():
        if name == "gpt2":
            hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**GPT_SIZES, bos_token_id=0, eos_token_id=0))
            base = GPT.from_pretrained(hf.state_dict(), vocab_size=100, block_size=32, n_layer=2, n_head=2, n_embd=32)
        else:
            hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA_SIZES))
            base = Llama.from_pretrained(hf.state_dict(), **LLAMA_SIZES)
    qlora = modify.lora(modify.quantize(base, "nf4", block_size=32), 4, 8.0)
    randomise(modify.lora_parameters(qlora), gen)
    modify.save_adapters(qlora, tmp_path / "qlora")
    twin = modify.lora(base, 4, 8.0)  # the same adapters over the float base
    with torch.no_grad():
        for mine, theirs in zip(modify.lora_parameters(twin), modify.lora_parameters(qlora)):
            mine.copy_(theirs)
    modify.save_adapters(twin, tmp_path / "float")
    config = json.loads((tmp_path / "qlora" / "adapter_config.json").read_text())
    assert config == json.loads((tmp_path / "float" / "adapter_config.json").read_text())
    reference = dequantized_reference(qlora, hf, tmp_path / "base")
    with quiet():
        peft_model = peft.PeftModel.from_pretrained(copy.deepcopy(reference), tmp_path / "qlora").eval()
    ids = torch.randint(0, 100, (2, 16), generator=gen)
    expected = logits(peft_model, ids)
    assert_close = torch.testing.assert_close
    assert_close(logits(qlora, ids), expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(expected, logits(reference, ids), atol=1e-3)  # the adapters matter
