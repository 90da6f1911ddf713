"""The package itself: public names, typing marker, light imports."""

from __future__ import annotations

import subprocess
import sys
from importlib import resources

import modify


def test_every_public_name_exists():
    missing = [name for name in modify.__all__ if not hasattr(modify, name)]
    assert missing == [] and len(set(modify.__all__)) == len(modify.__all__)


def test_py_typed_ships_with_the_package():
    assert resources.files("modify").joinpath("py.typed").is_file()


def test_importing_every_module_pulls_in_no_optional_dependency():
    """What ``pytest --doctest-modules`` imports under modify/ must not need test or demo extras."""
    script = (
        "import pkgutil, sys, modify\n"
        "for info in pkgutil.walk_packages(modify.__path__, 'modify.'):\n"
        "    __import__(info.name)\n"
        "heavy = {'transformers', 'peft', 'matplotlib', 'pytest', 'hypothesis'} & set(sys.modules)\n"
        "print(sorted(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"  # torch itself imports tqdm, so tqdm is not listed
