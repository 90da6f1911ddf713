"""Small GPT-2 and Llama pairs: a random ``transformers`` model and ours loaded from its ``state_dict``."""

from __future__ import annotations

import torch
import transformers

from modify.models import GPT, Llama

GPT2 = dict(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=None)
LLAMA = dict(
    vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=32, rms_norm_eps=1e-5, bos_token_id=0, eos_token_id=None,
)  # fmt: skip


def perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """Norm weights and biases away from ones and zeros, so every weight matters."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or ".ln_" in name or name.endswith("bias"):
                p.copy_(p.detach() + 0.2 * torch.randn(p.shape, generator=gen))
    return model.eval()


def gpt_pair() -> tuple[transformers.GPT2LMHeadModel, GPT]:
    torch.manual_seed(0)
    reference = perturbed(transformers.GPT2LMHeadModel(transformers.GPT2Config(**GPT2)))
    ours = GPT.from_pretrained(reference.state_dict(), vocab_size=64, block_size=32, n_embd=32, n_layer=2, n_head=4)
    return reference, ours


def llama_pair(**overrides) -> tuple[transformers.LlamaForCausalLM, Llama]:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(**{**LLAMA, **overrides})
    reference = perturbed(transformers.LlamaForCausalLM(config))
    fields = {k: v for k, v in {**LLAMA, **overrides}.items() if k not in ("bos_token_id", "eos_token_id")}
    return reference, Llama.from_pretrained(reference.state_dict(), **fields)
