"""9. ``modify.convert`` of ``transformers`` models: conversion time and eager training step.

* Converting a 124M ``GPT2LMHeadModel`` (GPT-2 small's config, random weights): ``convert(model,
  (ids,), {"use_cache": False})`` (``torch.export`` capture, the tree, the check on the example)
  against ``transformers``' ``from_pretrained`` of the same model from a local folder. Targets:
  at most 2 s and at most 2x ``from_pretrained``.
* The floor of that ratio (:func:`convert_floor`): in the same rounds, ``from_pretrained`` beside
  the parts no conversion through ``torch.export`` can skip: the export of the two-block stand-in
  (static, and with dynamic batch and sequence axes, torch's default settings and
  ``convert``'s), and the check on the example (one forward of each model).
* One eager training step (forward, cross entropy, backward) of a converted GPT-2 and Llama
  against the original ``transformers`` model, same weights. Target: at most 1.05x.
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
import warnings

import torch
import torch.nn.functional as F
import transformers

import modify
from modify.conversion.export import _Selected, dynamic_axes, lean_tracing
from modify.conversion.repeats import stand_in
from modify.conversion.units import pick
from modify.conversion.verify import verify

from .timing import compare, table, us

TRAIN_TARGET, CONVERT_SECONDS, CONVERT_RATIO = 1.05, 2.0, 2.0


def _seconds(fn) -> float:
    """CPU seconds of the whole process (``from_pretrained`` loads in a thread pool, which
    ``time.thread_time`` would miss; torch runs one thread here), steady under other load."""
    start = time.process_time()
    fn()
    return time.process_time() - start


def convert_time(rounds: int = 3) -> list[object]:
    """Seconds to convert a 124M GPT-2 and to ``from_pretrained`` it from a local folder.

    Each round builds a fresh model (untimed) and converts it, beside one ``from_pretrained``;
    a first round warms both up (the process's first ``torch.export`` and load) and is left out.
    The figures are medians over rounds, the ratio the median of the per-round ratios.
    """
    config = transformers.GPT2Config()
    ids = torch.randint(0, config.vocab_size, (2, 16))
    loading, converting = [], []
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transformers.GPT2LMHeadModel(config).save_pretrained(folder)
        for _ in range(rounds + 1):
            loading.append(_seconds(lambda: transformers.GPT2LMHeadModel.from_pretrained(folder)))
            model = transformers.GPT2LMHeadModel(config).eval()
            converting.append(_seconds(lambda: modify.convert(model, (ids,), {"use_cache": False})))
    first = converting[0]
    loading, converting = loading[1:], converting[1:]
    seconds = statistics.median(converting)
    ratio = statistics.median(c / l for c, l in zip(converting, loading))
    met = seconds <= CONVERT_SECONDS and ratio <= CONVERT_RATIO
    return [f"convert GPT-2 124M (first in process {first:.2f} s)", f"{seconds:.2f} s",
            f"{statistics.median(loading):.2f} s (from_pretrained)",
            f"{ratio:.2f}x", f"<= {CONVERT_SECONDS:.0f} s and <= {CONVERT_RATIO:.0f}x", "yes" if met else "no"]


def _export(model: torch.nn.Module, ids: torch.Tensor, dynamic: bool, lean: bool):
    """``torch.export`` of ``model``'s two-block stand-in as ``convert`` captures it."""
    selected = _Selected(stand_in(model, "transformer.h"), {"use_cache": False}, lambda out: pick(out, None, "GPT2"))
    shapes = ((dynamic_axes(ids),),) if dynamic else None
    with lean_tracing() if lean else contextlib.nullcontext():
        return torch.export.export(selected, (ids,), dynamic_shapes=shapes, strict=False)


def convert_floor(rounds: int = 3) -> list[list[object]]:
    """CPU seconds of ``from_pretrained`` and of each part of ``convert`` no export-based conversion
    skips, interleaved in each round after a warm-up round; medians, and the median of the per-round
    ratios to ``from_pretrained``. The floor row is a static export plus the check."""
    config = transformers.GPT2Config()
    ids = torch.randint(0, config.vocab_size, (2, 16))
    model = transformers.GPT2LMHeadModel(config).eval()
    converted = modify.convert(model, (ids,), {"use_cache": False})
    static, check = "export of the 2-block stand-in, static", "check on the example (verify: 2 forwards)"
    parts = {
        static: lambda: _export(model, ids, False, True),
        "export, dynamic B and T, torch's settings": lambda: _export(model, ids, True, False),
        "export, dynamic B and T, convert's (lean_tracing)": lambda: _export(model, ids, True, True),
        check: lambda: verify(model, converted, (ids,), {"use_cache": False}, None),
        "convert (all of it)": lambda: modify.convert(model, (ids,), {"use_cache": False}),
    }
    seconds: dict[str, list[float]] = {name: [] for name in ["from_pretrained", *parts]}
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(folder)
        parts["from_pretrained"] = lambda: transformers.GPT2LMHeadModel.from_pretrained(folder)
        for r in range(rounds + 1):
            for name in list(seconds) if r % 2 == 0 else list(seconds)[::-1]:
                seconds[name].append(_seconds(parts[name]))
    seconds = {name: times[1:] for name, times in seconds.items()}
    loading = seconds.pop("from_pretrained")
    seconds["floor: static export + check"] = [a + b for a, b in zip(seconds[static], seconds[check])]
    rows = [["from_pretrained (local folder)", f"{statistics.median(loading):.2f} s", "1.00x"]]
    for name, times in seconds.items():
        ratio = statistics.median(t / l for t, l in zip(times, loading))
        rows.append([name, f"{statistics.median(times):.2f} s", f"{ratio:.2f}x"])
    return rows


def _models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    small = dict(vocab_size=512, num_hidden_layers=4, num_attention_heads=4, pad_token_id=0, bos_token_id=0, eos_token_id=0)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=256, n_layer=4, n_head=4, vocab_size=512, bos_token_id=0, eos_token_id=0))
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(hidden_size=256, intermediate_size=688, num_key_value_heads=2, **small))
    return {"GPT-2": gpt2, "Llama": llama}


def training_rows(quick: bool) -> list[list[object]]:
    rows = []
    ids = torch.randint(1, 512, (8, 129))
    for name, model in _models().items():
        converted = modify.convert(model.eval(), (ids[:2, :16].clone(),), {"use_cache": False})  # a contiguous example
        model.train(), converted.train()
        for m in (model, converted):  # same function in train mode: no dropout on either side
            for d in m.modules():
                if isinstance(d, (torch.nn.Dropout, modify.Dropout)):
                    d.p = 0.0

        def step(run):
            def go():
                logits = run(ids[:, :-1])
                F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()).backward()
            return go

        sides = {"original": step(lambda x: model(x, use_cache=False).logits), "converted": step(converted)}
        timing = compare(sides, 5 if quick else 11, 2)
        ratio = timing.ratio("converted", "original")
        rows.append([f"training step {name}", us(timing.seconds("converted")), us(timing.seconds("original")) + " (original)",
                     f"{ratio:.3f}x", f"<= {TRAIN_TARGET:.2f}x", "yes" if ratio <= TRAIN_TARGET else "no"])
    return rows


def run(quick: bool) -> str:
    rows = [convert_time(2 if quick else 5), *training_rows(quick)]
    floor = convert_floor(2 if quick else 5)
    return table(["what", "modify", "reference", "ratio", "target", "met"], rows) + "\n\n" + table(
        ["part of convert (CPU time, one thread)", "seconds", "/ from_pretrained"], floor
    )
