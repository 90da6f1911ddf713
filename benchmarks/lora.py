"""2. LoRA: ``modify.lora`` against Hugging Face PEFT, each relative to its own base model.

One random ``GPT2LMHeadModel`` is the base of both: PEFT wraps a copy of it (``get_peft_model``,
``fan_in_fan_out=True`` for GPT-2's ``Conv1D``), and ``modify.models.GPT`` loads its weights and
gets ``modify.lora`` on the same layers (``c_attn``, ``c_proj``, ``c_fc``), rank 8, alpha 16, no
dropout. Each side's slowdown is its adapted model's time over its own base model's time, for a
forward pass (no grad) and for a training step (the base fully trainable; the adapted model with
the base frozen, as LoRA trains).
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from torch import nn

import modify
from modify.models import GPT

from .overhead import Size, hf_state
from .timing import compare, table, us

SIZE = Size("GPT-2 tiny", n_layer=4, n_head=4, n_embd=128, vocab_size=1024, batch=4, seq=64)
TARGETS = ("c_attn", "c_proj", "c_fc")
RANK, ALPHA = 8, 16.0


def hf_models() -> tuple[nn.Module, nn.Module]:
    """Hugging Face's base (all trainable) and PEFT's LoRA model on a copy of the same weights."""
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        n_positions=SIZE.seq, vocab_size=SIZE.vocab_size, n_layer=SIZE.n_layer, n_head=SIZE.n_head,
        n_embd=SIZE.n_embd, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
    )
    base = GPT2LMHeadModel(config)
    base.load_state_dict(hf_state(SIZE))
    lora_config = LoraConfig(
        r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=list(TARGETS), fan_in_fan_out=True, bias="none"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers' deprecations reached through PEFT
        adapted = get_peft_model(copy.deepcopy(base), lora_config)
    return base.train(), adapted.train()


def modify_models() -> tuple[nn.Module, nn.Module]:
    """Our base (all trainable, a copy) and the LoRA sibling of the base with the base frozen."""
    base = GPT.from_pretrained(hf_state(SIZE), **SIZE.config()).train()
    adapted = modify.lora(base, RANK, ALPHA, where=(lambda path, m: path.rsplit(".", 1)[-1] in TARGETS,))
    trainable_base = copy.deepcopy(base)
    for p in base.parameters():
        p.requires_grad_(False)
    return trainable_base, adapted


def logits_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return out if isinstance(out, torch.Tensor) else out.logits


def steps(model: nn.Module, train: bool):
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, SIZE.vocab_size, (SIZE.batch, SIZE.seq + 1), generator=gen)
    x, y = tokens[:, :-1], tokens[:, 1:].reshape(-1)

    def step():
        F.cross_entropy(logits_of(model, x).view(-1, SIZE.vocab_size), y).backward()

    def forward():
        with torch.no_grad():
            logits_of(model, x)

    return step if train else forward


def run(quick: bool) -> str:
    hf_base, peft_model = hf_models()
    our_base, ours = modify_models()
    x = torch.randint(0, SIZE.vocab_size, (2, SIZE.seq))
    with torch.no_grad():
        error = (logits_of(hf_base, x) - logits_of(our_base, x)).abs().max().item()
    if error > 1e-4:
        raise RuntimeError(f"lora benchmark: modify GPT and GPT2LMHeadModel differ by {error}")
    models = {"hf base": hf_base, "peft": peft_model, "modify base": our_base, "modify lora": ours}
    rounds, number = (7, 2) if quick else (15, 4)
    rows = []
    for mode, train in (("forward (no grad)", False), ("training step", True)):
        timing = compare({k: steps(m, train) for k, m in models.items()}, rounds, number)
        peft, mine = timing.ratio("peft", "hf base"), timing.ratio("modify lora", "modify base")
        rows.append([mode, f"{peft:.3f}x", f"{mine:.3f}x", "yes" if mine <= peft else "no"])
    headers = ["LoRA on GPT-2 tiny (r=8, c_attn/c_proj/c_fc)", "PEFT / HF base", "modify.lora / modify base", "ours <= PEFT"]
    return table(headers, rows)


ADAPTERS = 4


def mixed_models() -> tuple[nn.Module, nn.Module, nn.Module, list[str]]:
    """PEFT's model with 4 adapters, our MixedLoRA over 4 siblings holding the same adapter weights, and
    our base model alone (the floor of MixedLoRA's time: what its adapters add is the difference)."""
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from transformers import GPT2Config, GPT2LMHeadModel

    from modify.adapters.files import PREFIX, layer_names, peft_tensors

    config = GPT2Config(
        n_positions=SIZE.seq, vocab_size=SIZE.vocab_size, n_layer=SIZE.n_layer, n_head=SIZE.n_head,
        n_embd=SIZE.n_embd, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
    )
    hf = GPT2LMHeadModel(config)
    hf.load_state_dict(hf_state(SIZE))
    lora_config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=list(TARGETS), fan_in_fan_out=True)
    names = [f"a{k}" for k in range(ADAPTERS)]
    gen = torch.Generator().manual_seed(2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        peft_model = get_peft_model(hf, lora_config, adapter_name=names[0])
        for name in names[1:]:
            peft_model.add_adapter(name, lora_config)
    base = GPT.from_pretrained(hf_state(SIZE), **SIZE.config()).eval()
    siblings = []
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
        for name in names:
            state = get_peft_model_state_dict(peft_model, adapter_name=name)
            sibling = modify.lora(base, RANK, ALPHA, where=(lambda path, m: path.rsplit(".", 1)[-1] in TARGETS,))
            reference = layer_names(sibling)
            for path, block in modify.select(sibling, modify.LoRA):
                for suffix, tensor in peft_tensors(block).items():
                    tensor.copy_(state[f"{PREFIX}{reference[path]}.{suffix}"])
            siblings.append(sibling)
    return peft_model.eval(), modify.MixedLoRA(siblings).eval(), base, names


def run_mixed(quick: bool) -> str:
    peft_model, mixed, base, names = mixed_models()
    gen = torch.Generator().manual_seed(3)
    batch = 2 * (ADAPTERS + 1)
    ids = torch.arange(batch) % (ADAPTERS + 1) - 1  # -1 (base), 0, 1, 2, 3, -1, ...
    adapter_names = ["__base__" if i < 0 else names[i] for i in ids.tolist()]
    x = torch.randint(0, SIZE.vocab_size, (batch, SIZE.seq), generator=gen)
    with torch.no_grad():
        error = (peft_model(x, adapter_names=adapter_names).logits - mixed(x, ids)).abs().max().item()
    if error > 1e-4:
        raise RuntimeError(f"mixed benchmark: MixedLoRA and PEFT's mixed batch differ by {error}")

    def peft_forward():
        with torch.no_grad():
            peft_model(x, adapter_names=adapter_names)

    def ours_forward():
        with torch.no_grad():
            mixed(x, ids)

    def base_forward():
        with torch.no_grad():
            base(x)

    rounds, number = (7, 2) if quick else (15, 4)
    timing = compare({"peft": peft_forward, "modify": ours_forward, "base": base_forward}, rounds, number)
    headers = [f"mixed batch of {batch} on GPT-2 tiny, {ADAPTERS} adapters (r=8)", "PEFT adapter_names=",
               "modify.MixedLoRA", "MixedLoRA / PEFT", "modify base alone / PEFT"]  # fmt: skip
    row = ["forward (no grad)", us(timing.seconds("peft")), us(timing.seconds("modify")),
           f"{timing.ratio('modify', 'peft'):.3f}x", f"{timing.ratio('base', 'peft'):.3f}x"]  # fmt: skip
    return table(headers, [row])
