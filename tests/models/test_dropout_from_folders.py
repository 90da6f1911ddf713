"""``from_pretrained`` honours the dropout a transformers folder was written with: GPT-2's
``resid_pdrop``/``embd_pdrop``/``attn_pdrop`` (one value when they agree, an error naming ``dropout=``
when they differ, an explicit ``dropout=`` winning), Llama's ``attention_dropout``."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

import modify
from modify.models import GPT, CheckpointError, Llama

GPT2_SIZES = dict(vocab_size=50, n_positions=16, n_embd=8, n_layer=2, n_head=2)
LLAMA_SIZES = dict(vocab_size=50, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                   num_key_value_heads=1, max_position_embeddings=16)


def gpt2_folder(path, **dropouts):
    transformers.GPT2LMHeadModel(transformers.GPT2Config(**GPT2_SIZES, **dropouts)).save_pretrained(path)
    return path


def dropouts_of(model: torch.nn.Module) -> list[float]:
    """Every dropout probability in the tree: Dropout leaves and attention's dropout on its weights."""
    leaves = [m.p for m in modify.select(model, modify.Dropout).modules()]
    return leaves + [m.dropout for m in modify.select(model, modify.ScaledDotProductAttention).modules()]


def test_gpt_takes_the_folders_dropout_where_transformers_applies_it(tmp_path):
    folder = gpt2_folder(tmp_path, resid_pdrop=0.2, embd_pdrop=0.2, attn_pdrop=0.2)
    gpt = GPT.from_pretrained(folder)
    reference = transformers.GPT2LMHeadModel.from_pretrained(folder)
    reference_drops = [m.p for m in reference.modules() if isinstance(m, torch.nn.Dropout)]
    assert gpt.config.dropout == 0.2 and sorted(dropouts_of(gpt)) == sorted(reference_drops)
    ids = torch.randint(0, 50, (2, 16))
    assert not gpt.training and torch.equal(gpt(ids), gpt(ids))  # eval: deterministic
    gpt.train()
    assert not torch.equal(gpt(ids), gpt(ids))  # training: dropout fires, as in transformers' fine-tuning


def test_gpt_reads_transformers_defaults_when_the_folder_has_no_dropout_keys(tmp_path):
    folder = gpt2_folder(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
        config.pop(name, None)
    (folder / "config.json").write_text(json.dumps(config))
    default = transformers.GPT2Config().resid_pdrop
    assert GPT.from_pretrained(folder).config.dropout == default


def test_gpt_refuses_unequal_dropouts_unless_dropout_is_given(tmp_path):
    folder = gpt2_folder(tmp_path, resid_pdrop=0.1, embd_pdrop=0.0, attn_pdrop=0.1)
    with pytest.raises(CheckpointError) as error:
        GPT.from_pretrained(folder)
    message = str(error.value)
    assert "resid_pdrop=0.1, embd_pdrop=0, attn_pdrop=0.1 differ" in message
    assert "pass dropout= explicitly, e.g. GPT.from_pretrained(folder, dropout=0.1)" in message
    gpt = GPT.from_pretrained(folder, dropout=0.05)
    assert gpt.config.dropout == 0.05 and set(dropouts_of(gpt)) == {0.05}


def test_an_explicit_dropout_wins_over_an_agreeing_folder(tmp_path):
    gpt = GPT.from_pretrained(gpt2_folder(tmp_path, resid_pdrop=0.3, embd_pdrop=0.3, attn_pdrop=0.3), dropout=0.0)
    assert set(dropouts_of(gpt)) == {0.0}


def test_gpt_saves_its_dropout_back_for_transformers(tmp_path):
    gpt = GPT.from_pretrained(gpt2_folder(tmp_path / "in", resid_pdrop=0.25, embd_pdrop=0.25, attn_pdrop=0.25))
    gpt.save_pretrained(tmp_path / "out")
    config = transformers.GPT2Config.from_pretrained(tmp_path / "out")
    assert (config.resid_pdrop, config.embd_pdrop, config.attn_pdrop) == (0.25, 0.25, 0.25)


def test_llama_takes_the_folders_attention_dropout(tmp_path):
    config = transformers.LlamaConfig(**LLAMA_SIZES, attention_dropout=0.15)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path)
    llama = Llama.from_pretrained(tmp_path)
    assert llama.config.attention_dropout == 0.15
    assert [m.dropout for m in modify.select(llama, modify.ScaledDotProductAttention).modules()] == [0.15]
    assert Llama.from_pretrained(tmp_path, attention_dropout=0.0).config.attention_dropout == 0.0
