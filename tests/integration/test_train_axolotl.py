"""Axolotl SFT / DPO / ORPO from the same demo recipe (`train.backend: axolotl`), a few steps each.

Needs the Axolotl venv: the session fixture builds it with scripts/install_axolotl.sh on first
use (~5-8 min, ~4.3 GB, cached in $FEINSCHLIFF_HOME/venvs keyed by its pins).
"""

from __future__ import annotations

import json

import pytest
from test_train_trl import assert_adapter_trained, train_cli

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def axolotl_venv():
    from feinschliff.train.axolotl_backend import axolotl_venv

    return axolotl_venv(install=True)


@pytest.mark.parametrize("method", ["sft", "dpo", "orpo"])
def test_axolotl_trains_from_the_same_recipe(
    method, axolotl_venv, demo_model, demo_ingest, tmp_path
):
    out = tmp_path / method
    p = train_cli(demo_ingest.dir, out, **{"train.backend": "axolotl", "train.method": method})
    assert p.returncode == 0, p.stderr[-3000:]
    assert "axolotl: step 2 loss" in p.stderr  # progress streamed from the subprocess
    metrics = assert_adapter_trained(out, demo_model)
    assert metrics["backend"] == "axolotl" and metrics["method"] == method
    cfg_text = (out / "axolotl" / "config.yaml").read_text()
    assert "lora_qkv_kernel: false" in cfg_text and "bf16: false" in cfg_text  # CPU overrides
    assert sorted(p.name for p in (out / "adapter").iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert not (out / "checkpoints" / "model.safetensors").exists()
    if method == "sft":
        assert metrics["trained_tokens"] > 0
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["r"] == 16


def test_the_installed_axolotl_schema_confirms_our_keys_and_catches_others(
    axolotl_venv, demo_model, tmp_path
):
    from test_train_trl import DEMO

    from feinschliff.recipe_loader import load_recipe
    from feinschliff.train.axolotl_backend import AxolotlError, validate_in_venv
    from feinschliff.train.axolotl_config import build_config

    recipe = load_recipe(DEMO, ["train.backend=axolotl", "train.method=dpo"])
    files = {"train": tmp_path / "t.jsonl", "eval": tmp_path / "e.jsonl"}
    cfg = build_config(recipe, demo_model, files, tmp_path, on_cpu=True)
    validate_in_venv(axolotl_venv, cfg, tmp_path)  # every generated key is a schema field
    cfg["lora_use_dora"] = True  # a plausible typo of peft_use_dora: Axolotl would drop it
    cfg["datasets"][0]["message_property_mappings"] = {"role": "role"}  # not a DPO field
    with pytest.raises(AxolotlError) as err:
        validate_in_venv(axolotl_venv, cfg, tmp_path)
    assert "lora_use_dora" in str(err.value)
    assert "datasets[].message_property_mappings" in str(err.value)
