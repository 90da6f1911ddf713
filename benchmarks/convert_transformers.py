"""9. ``modify.convert`` of ``transformers`` models: conversion time and eager training step.

* Converting a 124M ``GPT2LMHeadModel`` (GPT-2 small's config, random weights): ``convert(model,
  (ids,), {"use_cache": False})`` (``torch.export`` capture, the tree, the check on the example)
  against ``transformers``' ``from_pretrained`` of the same model from a local folder. Targets:
  at most 2 s and at most 2x ``from_pretrained``.
* One eager training step (forward, cross entropy, backward) of a converted GPT-2 and Llama
  against the original ``transformers`` model, same weights. Target: at most 1.05x.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import warnings

import torch
import torch.nn.functional as F
import transformers

import modify

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
    return table(["what", "modify", "reference", "ratio", "target", "met"], rows)
