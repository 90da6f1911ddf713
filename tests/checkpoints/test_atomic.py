"""``atomic_folder`` under ``save_pretrained`` and ``save_adapters``: killed or failing saves lose nothing.

Faults are real, not mocked: :mod:`fault_worker` saves in forked children under
``RLIMIT_FSIZE``, killed by ``SIGXFSZ`` at a chosen byte or, with ``SIGXFSZ`` ignored, failing
there with ``EFBIG`` as on a full disk. Every fault hits a folder that holds the previous
checkpoint (a smaller model or a lower rank, so a mix of the two cannot load); afterwards the
folder must load as that checkpoint, with equal tensors and no stray file, and a later save
must succeed and leave nothing beside the folder.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

import fault_worker as worker
import modify
from modify.checkpoints import atomic_folder
from modify.checkpoints.atomic import REPLACED, STAGING
from modify.models import GPT

KINDS = ("single", "sharded", "adapters")
OLD, NEW = 0, 1
UNREACHED = 10**9  # bytes: a file-size limit no save here reaches


def loaded(kind: str, folder: Path) -> dict[str, torch.Tensor]:
    """The tensors that ``folder`` loads as: the GPT's state, or the adapters over ``make_gpt(0)``."""
    if kind == "adapters":
        return dict(modify.load_adapters(worker.make_gpt(OLD), folder).state_dict())
    return dict(GPT.from_pretrained(folder).state_dict())


def expected(kind: str, seed: int) -> dict[str, torch.Tensor]:
    model = worker.make_adapted(seed) if kind == "adapters" else worker.make_gpt(seed)
    return dict(model.state_dict())


def assert_holds(kind: str, folder: Path, seed: int) -> None:
    """``folder`` loads as checkpoint ``seed`` of ``kind``, tensor for tensor, and holds exactly its files."""
    got, want = loaded(kind, folder), expected(kind, seed)
    assert got.keys() == want.keys()
    assert all(torch.equal(got[key], want[key]) for key in want)
    with tempfile.TemporaryDirectory() as reference:
        worker.save(kind, seed, reference)
        assert sorted(os.listdir(folder)) == sorted(os.listdir(reference))


def largest_file(kind: str, tmp: Path) -> int:
    """Bytes in the largest file of the new checkpoint of ``kind``."""
    worker.save(kind, NEW, tmp / f"probe-{kind}")
    return max(path.stat().st_size for path in (tmp / f"probe-{kind}").iterdir())


@pytest.fixture(scope="module")
def faults(tmp_path_factory) -> list[dict]:
    """Every kind, killed and failing at four bytes of its largest file, each over its own old checkpoint;
    and under a limit it never reaches (the control: the fault setup itself lets a save through)."""
    tmp = tmp_path_factory.mktemp("faults")
    jobs = []
    for kind in KINDS:
        size = largest_file(kind, tmp)
        for mode in ("kill", "efbig"):
            for limit in (0, 100, size // 2, size - 1, UNREACHED):
                folder = tmp / f"{kind}-{mode}-{limit}" / "checkpoint"
                worker.save(kind, OLD, folder)
                jobs.append({"kind": kind, "mode": mode, "limit": limit, "seed": NEW, "folder": str(folder)})
    (tmp / "jobs.json").write_text(json.dumps(jobs))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.run([sys.executable, worker.__file__, str(tmp / "jobs.json")], capture_output=True, text=True,
                         env=env, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr
    return [json.loads(line) for line in run.stdout.splitlines()]


@pytest.mark.parametrize("kind", KINDS)
def test_a_save_killed_at_any_byte_leaves_the_previous_checkpoint(faults, kind):
    for fault in (f for f in faults if f["kind"] == kind and f["mode"] == "kill" and f["limit"] != UNREACHED):
        assert fault["signal"] == "SIGXFSZ", fault
        assert_holds(kind, Path(fault["folder"]), OLD)


@pytest.mark.parametrize("kind", KINDS)
def test_a_failed_write_is_an_oserror_naming_the_folder_and_leaves_the_previous_checkpoint(faults, kind):
    for fault in (f for f in faults if f["kind"] == kind and f["mode"] == "efbig" and f["limit"] != UNREACHED):
        assert fault["signal"] is None and not fault["saved"], fault
        assert fault["is_oserror"] and fault["errno"] == errno.EFBIG, fault
        assert fault["folder"] in fault["message"] and "File too large" in fault["message"], fault
        assert fault["cause"] in ("SafetensorError", "OSError"), fault  # chained to the library's error
        assert_holds(kind, Path(fault["folder"]), OLD)
        assert os.listdir(Path(fault["folder"]).parent) == ["checkpoint"]  # a failed save cleans up at once


@pytest.mark.parametrize("kind", KINDS)
def test_under_a_limit_it_never_reaches_the_save_succeeds(faults, kind):
    for fault in (f for f in faults if f["kind"] == kind and f["limit"] == UNREACHED):
        assert fault["saved"] and fault["signal"] is None, fault
        assert_holds(kind, Path(fault["folder"]), NEW)
        assert os.listdir(Path(fault["folder"]).parent) == ["checkpoint"]


@pytest.mark.parametrize("kind", KINDS)
def test_the_next_save_succeeds_and_leaves_nothing_behind(faults, kind):
    for fault in (f for f in faults if f["kind"] == kind):
        folder = Path(fault["folder"])
        worker.save(kind, NEW, folder)
        assert_holds(kind, folder, NEW)
        assert os.listdir(folder.parent) == ["checkpoint"]


def test_other_files_stay_and_a_new_layout_replaces_the_old(tmp_path):
    folder = tmp_path / "checkpoint"
    worker.save("sharded", OLD, folder)
    (folder / "tokenizer.json").write_text("{}")
    (folder / "notes").mkdir()
    (folder / "notes" / "run.txt").write_text("lr 3e-3")
    worker.save("single", NEW, folder)
    worker.save("adapters", NEW, folder)  # an adapter beside the model, as PEFT allows
    assert sorted(os.listdir(folder)) == [
        "adapter_config.json", "adapter_model.safetensors", "config.json", "model.safetensors", "notes",
        "tokenizer.json",
    ]  # fmt: skip
    assert (folder / "notes" / "run.txt").read_text() == "lr 3e-3"
    got, want = loaded("single", folder), expected("single", NEW)
    assert got.keys() == want.keys() and all(torch.equal(got[key], want[key]) for key in want)


def test_a_symbolic_link_is_kept_and_the_folder_it_names_replaced(tmp_path):
    real, link = tmp_path / "run-1", tmp_path / "latest"
    worker.save("single", OLD, real)
    link.symlink_to(real)
    worker.save("single", NEW, link)
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert_holds("single", real, NEW)
    assert sorted(os.listdir(tmp_path)) == ["latest", "run-1"]


def ended_pid() -> int:
    """The id of a process that has ended."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_leftovers_of_a_killed_save_go_and_a_folder_left_aside_comes_back(tmp_path):
    folder = tmp_path / "checkpoint"
    worker.save("single", OLD, folder)
    pid = ended_pid()
    folder.rename(tmp_path / f".checkpoint.{REPLACED}-{pid}-00aa")  # killed between two renames
    (tmp_path / f".checkpoint.{STAGING}-{pid}-00bb").mkdir()  # and its staging folder
    with atomic_folder(folder, replaces=("unrelated",)) as staging:
        assert not (tmp_path / f".checkpoint.{STAGING}-{pid}-00bb").exists()
        assert (folder / "model.safetensors").is_file()  # put back before this save writes
        (staging / "step.txt").write_text("1")
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors", "step.txt"]
    assert os.listdir(tmp_path) == ["checkpoint"]


def test_an_error_inside_the_block_passes_unchanged_and_the_folder_stays(tmp_path):
    folder = tmp_path / "checkpoint"
    worker.save("single", OLD, folder)
    with pytest.raises(KeyError, match="oops"), atomic_folder(folder) as staging:
        (staging / "config.json").write_text("{}")
        raise KeyError("oops")
    assert_holds("single", folder, OLD)
    assert os.listdir(tmp_path) == ["checkpoint"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permissions")
def test_a_read_only_parent_is_a_permission_error_naming_the_folder(tmp_path):
    folder = tmp_path / "parent" / "checkpoint"
    worker.save("adapters", OLD, folder)
    folder.parent.chmod(0o555)
    try:
        with pytest.raises(PermissionError, match="save_adapters: saving to '.*checkpoint' failed .Permission denied"):
            worker.save("adapters", NEW, folder)
    finally:
        folder.parent.chmod(0o755)
    assert_holds("adapters", folder, OLD)


READER = """
import os, sys, time
folder, deadline, seen = sys.argv[1], time.monotonic() + float(sys.argv[2]), set()
while time.monotonic() < deadline:
    directory = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)  # whichever folder is at the path now
    try:
        halves = [open(name, opener=lambda path, flags: os.open(path, flags, dir_fd=directory)).read()
                  for name in ("config.txt", "weights.txt")]
    except FileNotFoundError:  # only if this folder was swapped out since and is being deleted
        assert os.fstat(directory).st_ino != os.stat(folder).st_ino
        continue
    finally:
        os.close(directory)
    assert halves[0] == halves[1], halves
    seen.add(halves[0])
print(len(seen))
"""


def test_a_reader_sees_the_old_or_the_new_folder_at_every_instant(tmp_path):
    """A second process opens the folder path over and over while saves swap folders under it:
    it always finds a folder (never nothing) whose two files come from one save (or, having
    opened a folder just before it was swapped out, sees it being deleted)."""
    folder = tmp_path / "checkpoint"
    with atomic_folder(folder) as staging:
        (staging / "config.txt").write_text("0")
        (staging / "weights.txt").write_text("0")
    reader = subprocess.Popen([sys.executable, "-c", READER, str(folder), "4"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)  # fmt: skip
    step = 0
    while reader.poll() is None:
        step += 1
        with atomic_folder(folder) as staging:
            (staging / "config.txt").write_text(str(step))
            (staging / "weights.txt").write_text(str(step))
    out, err = reader.communicate()
    assert reader.returncode == 0, err
    assert int(out) > 1 and step > 1  # it saw several saves
    assert os.listdir(tmp_path) == ["checkpoint"]
