"""examples/finetune.py: LoRA and QLoRA runs, from a built model and from a checkpoint folder."""

from __future__ import annotations

import importlib

import pytest
import torch

import modify
from modify.models import GPT, GPTConfig



@pytest.fixture(scope="module")
def finetune():
    return importlib.import_module("finetune")  # examples/ is on the tests' path (pyproject.toml)


@pytest.mark.parametrize("quantize", ["none", "nf4"])
def test_a_short_run_lowers_the_held_out_loss_and_saves_loadable_adapters(finetune, quantize, tmp_path, capsys):
    config = finetune.parse(["--steps", "15", "--quantize", quantize, "--out", str(tmp_path), "--new-tokens", "4"])
    losses = finetune.main(config)
    assert losses["after"] < losses["before"] - 0.05, losses
    base, _ = finetune.load_base(config)
    loaded = modify.load_adapters(base, tmp_path / "adapter")
    assert len(modify.lora_parameters(loaded)) == 2 * 7 * 2  # 7 projections in each of 2 blocks
    out = capsys.readouterr().out
    assert "held-out loss per byte" in out and out.count(" -> ") == config.prompts


def test_runs_from_a_gpt2_folder_with_a_quantized_base(finetune, tmp_path):
    gpt = GPT(GPTConfig(block_size=128, vocab_size=256, n_layer=2, n_head=2, n_embd=64))
    gpt.save_pretrained(tmp_path / "gpt2")
    argv = ["--checkpoint", str(tmp_path / "gpt2"), "--quantize", "nf4", "--steps", "10", "--out", str(tmp_path)]
    losses = finetune.main(finetune.parse(argv))
    assert losses["after"] < losses["before"], losses
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()


def test_right_padding_leaves_token_losses_unchanged(finetune):
    """Padded batch loss equals the token-weighted mean of each row's own loss (pads ignored)."""
    base, _ = finetune.load_base(finetune.parse([]))
    rows = [list(b"short"), list(b"a longer example line")]
    ids, mask = finetune.pad_right(rows)
    batch = finetune.token_loss(base, ids, mask)
    alone = [finetune.token_loss(base, *finetune.pad_right([row])) for row in rows]
    weights = torch.tensor([len(r) - 1 for r in rows], dtype=torch.float32)
    torch.testing.assert_close(batch, (torch.stack(alone) * weights).sum() / weights.sum(), atol=1e-5, rtol=1e-5)
    left, left_mask = finetune.pad_left(rows)
    assert left_mask[0].tolist() == [0] * 16 + [1] * 5 and left[0, -5:].tolist() == rows[0]


def test_bad_flags_are_refused(finetune):
    with pytest.raises(SystemExit):
        finetune.parse(["--quantize", "fp4"])
    with pytest.raises(SystemExit):
        finetune.parse(["--steps", "0"])


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_the_chunked_loss_equals_the_plain_loss_in_value_and_gradients(finetune, kind, tmp_path):
    if kind == "gpt2":
        GPT(GPTConfig(block_size=64, vocab_size=256, n_layer=2, n_head=2, n_embd=64)).save_pretrained(tmp_path / "gpt2")
    base, blocks = finetune.load_base(finetune.parse(["--checkpoint", str(tmp_path / "gpt2")] * (kind == "gpt2")))
    model = modify.checkpoint_activations(modify.lora(base, 4, where=(modify.Linear, blocks)), where=blocks)
    with torch.no_grad():
        for p in modify.lora_parameters(model):
            p.normal_(std=0.05)
    ids, mask = finetune.pad_right([list(b"short"), list(b"a longer example line")])
    plain, chunked = finetune.token_loss(model, ids, mask), finetune.token_loss(model, ids, mask, chunk=7)
    torch.testing.assert_close(chunked, plain, atol=1e-6, rtol=1e-6)
    adapters = modify.lora_parameters(model)
    for mine, theirs in zip(torch.autograd.grad(chunked, adapters), torch.autograd.grad(plain, adapters)):
        torch.testing.assert_close(mine, theirs, atol=1e-6, rtol=1e-5)
