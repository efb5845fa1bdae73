"""The held-out metrics and the judge's answers come from our own inference: it loaded a hub
base model at `main`, not at `base_model.revision` (the one training used and lm-eval now
scores), so a LoRA was applied to weights it was not trained on."""

from __future__ import annotations

from pathlib import Path

import pytest

from feinschliff.evaluate import extra, inference
from feinschliff.recipe_loader import load_recipe

DEMO = Path(__file__).resolve().parents[2] / "recipes" / "demo-de.yaml"


class Loaded(Exception):
    pass


def test_held_out_inference_loads_the_recipes_revision(tmp_path, monkeypatch):
    (tmp_path / "heldout").mkdir()
    for name in ("sft.jsonl", "preference.jsonl"):
        (tmp_path / "heldout" / name).write_text("")
    recipe = load_recipe(DEMO, ["base_model.name=org/model", "base_model.revision=v1"])
    seen: list[dict] = []

    def from_pretrained(path, *args, **kwargs):
        seen.append({"path": path, **kwargs})
        raise Loaded

    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", from_pretrained)
    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", from_pretrained)
    with pytest.raises(Loaded):
        extra.judge_and_heldout(recipe, "org/model", {"base": None}, tmp_path, tmp_path / "o")
    assert seen and seen[0]["revision"] == "v1"
    with pytest.raises(Loaded):
        inference.load_model("org/model", "float32")  # no revision: the hub's default
    assert seen[-1]["revision"] is None
