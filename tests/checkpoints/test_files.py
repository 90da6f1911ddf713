"""Reading checkpoint sources: a Hub name is answered with how to make the local folder."""

from __future__ import annotations

import pytest

from modify.models import GPT, Llama


@pytest.mark.parametrize(("model", "name", "local"), [(GPT, "gpt2", "gpt2-local"),
                                                      (Llama, "meta-llama/Llama-3.2-1B", "Llama-3.2-1B-local")])
def test_a_hub_name_says_nothing_is_downloaded_and_how_to_make_a_folder(model, name, local, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no such folder here
    with pytest.raises(FileNotFoundError) as error:
        model.from_pretrained(name)
    message = str(error.value)
    owner = f"{model.__name__}.from_pretrained"
    assert message.startswith(f"{owner}: no such checkpoint folder or file: '{name}'. Nothing is downloaded")
    assert "a local folder" in message and f".from_pretrained('{name}').save_pretrained('{local}')" in message
    assert f"then {owner}('{local}')" in message


@pytest.mark.parametrize("path", ["missing/model.safetensors", "/no/such/folder", "./gpt2"])
def test_a_missing_path_gets_no_hub_hint(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as error:
        GPT.from_pretrained(path)
    assert "Nothing is downloaded" not in str(error.value)
