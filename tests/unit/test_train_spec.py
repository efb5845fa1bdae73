"""The `train` recipe section: serving compatibility, method fields, launcher and warm start."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from feinschliff.recipe import KTOTrain, SFTTrain
from feinschliff.recipe_loader import RecipeError, load_recipe

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "recipes" / "demo-de.yaml"


def _load(tmp_path: Path, **train) -> object:
    data = yaml.safe_load(DEMO.read_text())
    data["train"].update(train)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_recipe(path)


def _error(tmp_path: Path, **train) -> str:
    with pytest.raises(RecipeError) as err:
        _load(tmp_path, **train)
    return "\n".join(err.value.lines)


@pytest.mark.parametrize(
    ("lora", "path", "why"),
    [
        ({"use_dora": True}, "train.lora.use_dora", "vLLM does not support DoRA"),
        ({"bias": "all"}, "train.lora.bias", "vLLM refuses adapters with trained biases"),
        (
            {"modules_to_save": ["lm_head"]},
            "train.lora.modules_to_save",
            "vLLM loads only LoRA matrices",
        ),
    ],
)
def test_unservable_adapter_options_are_refused_with_the_reason(tmp_path, lora, path, why):
    msg = _error(tmp_path, lora={"r": 16, **lora})
    assert f": {path}: " in msg and why in msg


def test_servable_defaults_are_explicit(tmp_path):
    lora = _load(tmp_path).train.lora
    assert (lora.use_dora, lora.bias, lora.modules_to_save) == (False, "none", None)


def test_rank_above_the_servers_max_is_refused(tmp_path):
    msg = _error(tmp_path, lora={"r": 32})
    assert "exceeds register.max_lora_rank=16" in msg


def test_kto_has_its_own_fields_and_sft_fields_stay_sft_only(tmp_path):
    recipe = _load(tmp_path, method="kto", desirable_weight=1.5)
    assert isinstance(recipe.train, KTOTrain) and recipe.train.desirable_weight == 1.5
    assert "train.packing: unknown key" in _error(tmp_path, method="kto", packing=True)
    sft = _load(tmp_path, packing=True, assistant_only_loss=True)
    assert isinstance(sft.train, SFTTrain) and sft.train.packing and sft.train.assistant_only_loss


def test_replay_needs_a_warm_start(tmp_path):
    assert "replay_fraction needs init_from: production" in _error(tmp_path, replay_fraction=0.2)
    recipe = _load(tmp_path, init_from="production", replay_fraction=0.2)
    assert recipe.train.replay_fraction == 0.2


def test_accelerate_launcher_is_for_trl_only(tmp_path):
    msg = _error(tmp_path, backend="axolotl", launcher="accelerate", num_processes=2)
    assert "Axolotl launches itself" in msg
    recipe = _load(tmp_path, launcher="accelerate", num_processes=2, accelerate_config="fsdp")
    assert recipe.train.num_processes == 2 and recipe.train.accelerate_config == "fsdp"


def test_eval_fraction_is_bounded(tmp_path):
    assert "train.hyperparameters.eval_fraction" in _error(
        tmp_path, hyperparameters={"eval_fraction": 0.7}
    )


def test_any_rank_up_to_the_servers_max_is_accepted(tmp_path):
    """vLLM pads lower ranks up to --max-lora-rank; only ranks above it are refused."""
    assert _load(tmp_path, lora={"r": 12}).train.lora.r == 12
    assert _load(tmp_path, lora={"r": 2}).train.lora.r == 2
    assert "exceeds register.max_lora_rank=16" in _error(tmp_path, lora={"r": 24})
    assert "train.lora.r: " in _error(tmp_path, lora={"r": 0})


@pytest.mark.parametrize(
    ("hp", "why"),
    [
        ({"max_steps": 0}, "max_steps 0 trains nothing"),
        ({"max_steps": -7}, "greater than or equal"),
    ],
)
def test_max_steps_is_positive_or_minus_one(tmp_path, hp, why):
    msg = _error(tmp_path, hyperparameters=hp)
    assert ": train.hyperparameters.max_steps: " in msg and why in msg
    assert _load(tmp_path, hyperparameters={"max_steps": -1}).train.hyperparameters.max_steps == -1


@pytest.mark.parametrize(
    ("train", "why"),
    [
        ({"backend": "axolotl", "padding_free": True}, "padding_free is a TRL backend option"),
        ({"num_processes": 2}, "num_processes: 2 needs launcher: accelerate"),
        ({"backend": "axolotl", "num_processes": 2}, "Axolotl trains in one process"),
        ({"launcher": "accelerate", "accelerate_config": "fsdp"}, "but num_processes is 1"),
        ({"accelerate_config": "deepspeed-zero3"}, "but num_processes is 1"),
        # not "set launcher: accelerate", which Axolotl refuses in turn
        ({"backend": "axolotl", "accelerate_config": "fsdp"}, "use backend: trl to shard"),
    ],
)
def test_settings_that_would_be_ignored_are_refused(tmp_path, train, why):
    msg = _error(tmp_path, **train)
    assert ": train: " in msg and why in msg


def test_single_process_ddp_and_trl_padding_free_stay_valid(tmp_path):
    assert _load(tmp_path, launcher="accelerate", accelerate_config="ddp").train.num_processes == 1
    assert _load(tmp_path, padding_free=True).train.padding_free


def test_a_local_base_model_is_found_next_to_the_recipe_from_any_cwd(tmp_path, monkeypatch):
    """README: relative paths in a recipe are relative to the recipe file."""
    from feinschliff.models import resolve_model

    (tmp_path / "mymodel").mkdir()
    data = yaml.safe_load(DEMO.read_text())
    data["base_model"]["name"] = "./mymodel"
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(data))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    recipe = load_recipe(tmp_path / "r.yaml")
    assert recipe.base_model.name == str(tmp_path / "mymodel")
    assert resolve_model(recipe.base_model.name) == str(tmp_path / "mymodel")
    for name in ("smollm2-135m-instruct", "meta-llama/Llama-3.1-8B-Instruct"):  # not paths
        assert load_recipe(tmp_path / "r.yaml", [f"base_model.name={name}"]).base_model.name == name


def test_eval_steps_without_an_eval_split_are_refused(tmp_path):
    """eval_steps with eval_fraction 0 would be dropped without a word (nothing to evaluate)."""
    msg = _error(tmp_path, hyperparameters={"eval_steps": 5})
    assert ": train.hyperparameters.eval_steps: " in msg and "eval_fraction > 0" in msg
    hp = _load(tmp_path, hyperparameters={"eval_steps": 5, "eval_fraction": 0.1}).train
    assert hp.hyperparameters.eval_steps == 5
