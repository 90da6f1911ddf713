"""The demo, ``examples/gpt_lora.py``, end to end in a tiny configuration, and its bad-input errors."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "gpt_lora.py"
TINY = [
    "--steps", "3", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16",
    "--batch-size", "4", "--corpus-chars", "4000", "--eval-batches", "2", "--sample-tokens", "8",
    "--lora-rank", "2", "--device", "cpu",
]  # fmt: skip


@pytest.fixture(scope="module")
def demo():
    """The example file imported as a module (it is a script, not part of the package)."""
    return importlib.import_module("gpt_lora")  # examples/ is on the tests' path (pyproject.toml)


def run_demo(demo, capsys, argv: list[str]) -> str:
    assert demo.main(argv) == 0
    return capsys.readouterr().out


def table(out: str) -> dict[str, list[float]]:
    """The loss table's rows: {row label: [loss on corpus A, loss on corpus B]}."""
    lines = out.split("held-out loss")[1].splitlines()[2:4]
    return {line[:16].strip(): [float(v) for v in line[16:].split()] for line in lines}


def counts(out: str) -> dict[str, list[int]]:
    """The summary table's rows: {model: [total, trainable, shared with base, shared with adapted, adapters]}."""
    lines = out.split("parameters (exact counts")[1].splitlines()[2:4]
    rows = {}
    for line in lines:
        label, numbers = re.fullmatch(r"(.+?)\s+([\d,\s-]+)", line).groups()
        rows[label] = [int(v.replace(",", "")) if v != "-" else None for v in numbers.split()]
    return rows


def check_summary_and_files(out: str) -> None:
    rows = counts(out)
    (base_total, base_trainable, _, base_shared, base_adapters) = rows["base"]
    (total, trainable, shared, _, adapters) = rows["adapted (LoRA)"]
    assert base_shared == shared == base_total > 0 and base_adapters == 0 and base_trainable == 0  # frozen base
    assert adapters == trainable == total - base_total > 0
    reloaded, trained = re.search(r"a fresh sibling, loss (\S+) on held-out .*\(the trained sibling: (\S+)\)", out).groups()
    assert reloaded == trained


def test_tiny_run_prints_table_plot_sharing_and_merge(demo, capsys, tmp_path):
    out = run_demo(demo, capsys, [*TINY, "--out", str(tmp_path)])
    assert "A: Python code" in out and "B: docstrings" in out
    rows = table(out)
    assert list(rows) == ["base", "adapted (LoRA)"]
    assert all(len(v) == 2 and all(0 < x < 20 for x in v) for v in rows.values())
    check_summary_and_files(out)
    assert "base unchanged by the adaptation: True" in out
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    diff = float(re.search(r"logit difference (\S+);", out).group(1))
    assert diff < 1e-4
    assert "state_dict keys equal the base's: True" in out
    assert "gives back the base's own parameters: True" in out
    plot = tmp_path / "gpt_lora_loss.png"
    assert f"loss plot: {plot}" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    picture = tmp_path / "models.html"
    assert f"models side by side (open in a browser; shared parameters and LoRA blocks marked): {picture}" in out
    assert picture.read_text(encoding="utf-8").count("LoRA(") >= 1


def test_text_option_replaces_the_adaptation_corpus(demo, capsys, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 40, encoding="utf-8")
    out = run_demo(demo, capsys, [*TINY, "--text", str(text), "--out", str(tmp_path)])
    assert "B: notes.txt" in out and "docstrings" not in out
    assert list(table(out)) == ["base", "adapted (LoRA)"]


def test_embedded_corpora_are_deterministic_code_and_prose(demo):
    code, prose = demo.embedded_corpora(3000)
    assert (code, prose) == demo.embedded_corpora(3000)
    assert len(code) == len(prose) == 3000
    assert "def " in code and '"""' not in code  # docstrings were moved to the prose corpus
    assert "def " not in prose


def test_byte_tokenizer_uses_gpt2_byte_token_ids(demo):
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tokenizer = demo.GPT2ByteTokenizer()
    text = "héllo, wörld!\n\tend"
    # GPT-2's vocab.json lists its 256 byte tokens first, in bytes_to_unicode's order
    order = list(bytes_to_unicode())
    assert tokenizer.encode(text) == [order.index(b) for b in text.encode("utf-8")]
    assert tokenizer.encode(" \n!") == [220, 198, 0]  # space, newline, "!" in GPT-2
    assert tokenizer.decode(tokenizer.encode(text)) == text


def write_tiny_gpt2(folder: Path, with_tokenizer: bool) -> None:
    """A random GPT2LMHeadModel (and optionally a byte-level GPT-2 tokenizer), as save_pretrained writes them."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    config = GPT2Config(vocab_size=260, n_positions=32, n_embd=16, n_layer=1, n_head=2)
    GPT2LMHeadModel(config).save_pretrained(folder)
    if with_tokenizer:
        vocab = {char: i for i, char in enumerate(bytes_to_unicode().values())}
        GPT2Tokenizer(vocab=vocab, merges=[]).save_pretrained(folder)


@pytest.mark.parametrize("with_tokenizer", [False, True], ids=["bytes", "bpe"])
def test_hf_checkpoint_adapts_gpt2_weights(demo, capsys, tmp_path, with_tokenizer):
    folder = tmp_path / "gpt2"
    write_tiny_gpt2(folder, with_tokenizer)
    out = run_demo(demo, capsys, [*TINY, "--hf-checkpoint", str(folder), "--out", str(tmp_path)])
    assert ("GPT2Tokenizer" in out) == with_tokenizer
    assert ("GPT-2 single-byte tokens" in out) != with_tokenizer
    assert "pretrain on" not in out  # starts from the checkpoint's weights
    check_summary_and_files(out)
    diff = float(re.search(r"in PEFT: PeftModel.from_pretrained\(.*\) loads it; max .* difference (\S+)", out).group(1))
    assert diff < 1e-4
    assert (tmp_path / "gpt_lora_loss.png").is_file()


def bad_inputs(tmp_path: Path) -> list[tuple[list[str], str]]:
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n", encoding="utf-8")
    short = tmp_path / "short.txt"
    short.write_text("too short", encoding="utf-8")
    binary = tmp_path / "data.bin"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 10)
    no_config = tmp_path / "no_config"
    no_config.mkdir()
    return [
        (["--steps", "0"], "argument --steps: must be a positive integer, got 0"),
        (["--steps", "many"], "argument --steps: invalid int value: 'many'"),
        (["--text", str(tmp_path / "missing.txt")], "missing.txt: no such file"),
        (["--text", str(empty)], "empty.txt is empty"),
        (["--text", str(binary)], "data.bin is not UTF-8 text"),
        (["--text", str(short)], "too short for --block-size 16"),
        (["--hf-checkpoint", str(no_config)], "has no config.json"),
        (["--hf-checkpoint", str(tmp_path / "nowhere")], "nowhere: no such folder"),
        (["--n-head", "3"], "--n-embd (16) must be divisible by --n-head (3)"),
        (["--device", "quantum"], "--device 'quantum' is not a device"),
        (["--ddp"], "--ddp needs the environment torchrun sets"),
        (["--threads", "-1"], "argument --threads: must be 0 (automatic) or a positive integer, got -1"),
        (["--lora-lr", "0"], "argument --lora-lr: must be a positive finite number, got 0"),
        (["--dropout", "1"], "argument --dropout: must be in [0, 1), got 1"),
        (["--val-fraction", "nan"], "argument --val-fraction: must be in (0, 1), got nan"),
    ]


def test_bad_input_exits_2_with_one_line(demo, capsys, tmp_path, monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"):
        monkeypatch.delenv(var, raising=False)
    for argv, message in bad_inputs(tmp_path):
        with pytest.raises(SystemExit) as exit_info:
            demo.main([*TINY, *argv])  # tiny, so that a missed error costs seconds
        err = capsys.readouterr().err
        assert exit_info.value.code == 2, argv
        assert err.startswith("gpt_lora.py: error: ") and err.count("\n") == 1, err
        assert message in err, (argv, err)


def test_bad_input_from_the_command_line_has_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--text", str(tmp_path / "missing.txt")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr == f"gpt_lora.py: error: --text {tmp_path / 'missing.txt'}: no such file\n"
    assert result.stdout == ""


def damaged_checkpoint(tmp_path: Path, name: str, content: bytes) -> Path:
    """A GPT-2 folder whose weights file ``name`` holds ``content`` (and no other weights file)."""
    folder = tmp_path / name.replace(".", "_")
    write_tiny_gpt2(folder, with_tokenizer=False)
    (folder / "model.safetensors").unlink()
    (folder / name).write_bytes(content)
    return folder


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("corrupt-safetensors", "could not be loaded: "),
        ("empty-bin", "could not be loaded: "),
        ("lr-inf", "argument --lr: must be a positive finite number, got inf"),
        ("lora-lr-inf", "argument --lora-lr: must be a positive finite number, got inf"),
        ("text-folder", "is a folder, not a text file"),
    ],
)
def test_bad_input_from_the_command_line_exits_2_with_one_line(tmp_path, case, message):
    """Issue 11's inputs, each in a fresh process: exit code 2, one line on stderr, nothing on stdout."""
    argv = {
        "corrupt-safetensors": lambda: ["--hf-checkpoint", str(damaged_checkpoint(tmp_path, "model.safetensors",
                                                                                  b"\x08" + b"garbage" * 20))],
        "empty-bin": lambda: ["--hf-checkpoint", str(damaged_checkpoint(tmp_path, "pytorch_model.bin", b""))],
        "lr-inf": lambda: ["--lr", "inf"],
        "lora-lr-inf": lambda: ["--lora-lr", "inf"],
        "text-folder": lambda: ["--text", str(tmp_path)],
    }[case]()
    result = subprocess.run([sys.executable, str(EXAMPLE), *TINY, *argv], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.startswith("gpt_lora.py: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr and result.stdout == ""


def test_ddp_under_torchrun_with_gloo(tmp_path):
    """Two CPU processes: rank 0 alone prints the report and writes the plot."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(EXAMPLE), *TINY, "--ddp", "--out", str(tmp_path)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("held-out loss") == 1
    assert (tmp_path / "gpt_lora_loss.png").is_file()
