"""save_adapters writes, byte for byte, the folders the code wrote before LoRA blocks named their branches."""

from pathlib import Path

import pytest

from tests.adapters import peft_folders

STORED = Path(__file__).parent.parent / "data" / "peft_folders"


@pytest.mark.parametrize("name", sorted(peft_folders.models()))
def test_save_adapters_bytes_unchanged(tmp_path, name):
    peft_folders.write(tmp_path)
    for file in ("adapter_config.json", "adapter_model.safetensors"):
        assert (tmp_path / name / file).read_bytes() == (STORED / name / file).read_bytes(), (name, file)
