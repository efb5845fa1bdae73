"""The train stage refuses, before loading anything, what cannot run as configured."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from feinschliff.artifacts import DatasetRef
from feinschliff.recipe_loader import load_recipe
from feinschliff.train.stage import TrainError, run_train
from tests.unit.adapter_factory import SHAPES

ROOT = Path(__file__).resolve().parents[2]


def test_a_training_too_large_for_its_gpu_is_refused_with_the_numbers(tmp_path, monkeypatch):
    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))
    recipe = load_recipe(
        ROOT / "recipes" / "support-de-8b.yaml",
        ["train.gpu=rtx-4090", "train.hyperparameters.gradient_checkpointing=false"],
    )
    data = DatasetRef(path=str(tmp_path / "data"), sha256="0" * 64)
    with pytest.raises(TrainError) as err:
        run_train(recipe, data, tmp_path / "out")
    msg = str(err.value)
    assert "does not fit train.gpu=rtx-4090" in msg
    for row in ("weights", "optimizer_states", "activations", "assumptions"):
        assert row in msg
    assert not (tmp_path / "out").exists()  # refused before any output or model load


@pytest.mark.parametrize("lineage", ["rows", "legacy"])
def test_warm_start_replays_the_snapshot_its_lineage_names(tmp_path, monkeypatch, lineage):
    """The training snapshot is keyed by the rows' hash, which the registry's lineage records;
    versions registered before that recorded only the output's hash, under which older code
    stored their snapshot."""
    from feinschliff.registry import promote, register_adapter
    from feinschliff.train.warm_start import find_warm_start
    from tests.unit.adapter_factory import make_base, make_train_output, target_for

    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))
    base = make_base(tmp_path / "base")
    root = tmp_path / "registry"
    dataset = {"sha256": "a" * 64} | ({"rows_sha256": "b" * 64} if lineage == "rows" else {})
    version = register_adapter(
        root,
        "support-de-demo",
        make_train_output(tmp_path / "prod", str(base)),
        {"dataset": dataset},
        target=target_for(base),
    )
    promote(root, "support-de-demo", version, why="test")
    recipe = _warm_recipe(root)
    warm = find_warm_start(recipe)
    assert warm is not None and warm.version == version
    assert warm.dataset_sha256 == ("b" * 64 if lineage == "rows" else "a" * 64)


def test_warm_start_continues_the_version_a_run_recorded(tmp_path, monkeypatch):
    """A flow run records the production version when it starts; after it promoted its own
    candidate (and crashed), its rerun must continue the recorded version, not the candidate."""
    from feinschliff.registry import promote, register_adapter
    from feinschliff.train.warm_start import find_warm_start
    from tests.unit.adapter_factory import make_base, make_train_output, target_for

    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))
    base = make_base(tmp_path / "base")
    root = tmp_path / "registry"
    first, second = (
        register_adapter(
            root,
            "support-de-demo",
            make_train_output(tmp_path / name, str(base), seed=seed),
            {},
            target=target_for(base),
        )
        for name, seed in (("one", 1.0), ("two", 2.0))
    )
    promote(root, "support-de-demo", first, why="test")
    promote(root, "support-de-demo", second, why="test: the run's own candidate")
    recipe = _warm_recipe(root)
    assert find_warm_start(recipe).version == second  # the registry now
    assert find_warm_start(recipe, first).version == first  # as recorded
    assert find_warm_start(recipe, None) is None  # recorded: there was no production


def test_warm_start_refuses_an_adapter_trained_on_another_base_model(tmp_path, monkeypatch):
    """After a base model change, init_from: production would continue weights learnt on the
    old model (or fail deep inside PEFT on shapes)."""
    from feinschliff.registry import promote, register_adapter
    from feinschliff.train.warm_start import WarmStartError, find_warm_start
    from tests.unit.adapter_factory import make_base, make_train_output, target_for

    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))
    base = make_base(tmp_path / "base")
    root = tmp_path / "registry"
    lineage = {"base_model": {"name": "old-model", "revision": None, "path": str(base)}}
    version = register_adapter(
        root,
        "support-de-demo",
        make_train_output(tmp_path / "prod", str(base)),
        lineage,
        target=target_for(base),
    )
    promote(root, "support-de-demo", version, why="test")
    with pytest.raises(WarmStartError, match="trained on base model old-model; the recipe trains"):
        find_warm_start(_warm_recipe(root))  # the demo recipe's smollm2-135m-instruct
    same_folder = _warm_recipe(root, f"base_model.name={base}")  # the same model by its path
    assert find_warm_start(same_folder).version == version


def _warm_recipe(root: Path, *extra: str):
    """The demo recipe continuing production in ``root``, its LoRA matching the test adapters."""
    return load_recipe(
        ROOT / "recipes" / "demo-de.yaml",
        [
            f"register.registry={root}",
            "train.init_from=production",
            "train.lora.r=8",
            "train.lora.alpha=16",
            "train.lora.target_modules=[q_proj, v_proj]",
            "train.lora.dropout=0.0",
            *extra,
        ],
    )


def _tiny_llama(path: Path) -> Path:
    """config.json of a one-layer Llama: enough to build it on the meta device."""
    from transformers import LlamaConfig

    LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    ).save_pretrained(path)
    return path


ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.mark.parametrize(
    ("sets", "adapter", "field"),
    [
        ([], {"lora_dropout": 0.1}, "train.lora.dropout=0.0"),
        # the recipe's default is all-linear: every linear layer, not just q and v
        (["train.lora.target_modules=all-linear"], {}, "train.lora.target_modules=all-linear"),
        (["train.lora.target_modules=[q_proj]"], {}, "train.lora.target_modules=['q_proj']"),
        (
            ["train.lora.target_modules=all-linear"],
            {"target_modules": "q_proj|v_proj"},
            "train.lora.target_modules='all-linear'",
        ),
    ],
)
def test_warm_start_refuses_lora_fields_peft_would_ignore(tmp_path, sets, adapter, field):
    """PEFT continues the production adapter with its own config: a recipe field that differs
    would be dropped without a word."""
    from feinschliff.train.warm_start import WarmStartError, check_compatible
    from tests.unit.adapter_factory import adapter_config

    base = _tiny_llama(tmp_path / "base")
    recipe = _warm_recipe(tmp_path / "registry", f"base_model.name={base}", *sets)
    with pytest.raises(WarmStartError, match=re.escape(field)):
        check_compatible(recipe, adapter_config(str(base), **adapter))


@pytest.mark.parametrize(
    "targets",
    [
        ALL_LINEAR,  # as PEFT saves all-linear for a larger model: the module names
        [f"model.layers.0.{m}" for m in SHAPES],  # for a small one: the module paths
    ],
)
def test_warm_start_accepts_all_linear_as_peft_expands_it(tmp_path, targets):
    from feinschliff.train.warm_start import check_compatible
    from tests.unit.adapter_factory import adapter_config

    base = _tiny_llama(tmp_path / "base")
    recipe = _warm_recipe(
        tmp_path / "registry", f"base_model.name={base}", "train.lora.target_modules=all-linear"
    )
    check_compatible(recipe, adapter_config(str(base), target_modules=targets))
