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
