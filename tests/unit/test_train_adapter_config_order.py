"""Identical trainings give identical adapter bytes: PEFT keeps ``target_modules`` (``all-linear``
expanded) as a set and wrote it in string-hash order, which differs per process
(``PYTHONHASHSEED``). Byte-identical weights then had different adapter_config.json files, and
the registry added a second version of the same adapter. Two trainings in child processes
under different hash seeds must write the same adapter_config.json, the adapter's and each
checkpoint's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.unit.test_train_review_fixes import DEMO, FAST, WORDS
from tests.unit.tiny_llama import make_tiny_llama, make_tiny_sft_ingest

CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from feinschliff.artifacts import DatasetRef, completed_hash
    from feinschliff.recipe_loader import load_recipe
    from feinschliff.train.stage import run_train

    data, out, sets = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    recipe = load_recipe(Path({demo!r}), sets)
    run_train(recipe, DatasetRef(path=str(data), sha256=completed_hash(data)), out)
    """
)


def _train_in_child(tmp_path: Path, seed: str, data: Path, model: Path) -> Path:
    out = tmp_path / f"out-{seed}"
    # all-linear: the demo recipe's targets; one checkpoint too (save_steps=1)
    sets = [f"base_model.name={model}", *FAST, "train.hyperparameters.save_steps=1"]
    env = os.environ | {"PYTHONHASHSEED": seed, "FEINSCHLIFF_HOME": str(tmp_path / "home")}
    subprocess.run(
        [sys.executable, "-c", CHILD.format(demo=str(DEMO)), str(data), str(out), *sets],
        env=env,
        check=True,
        timeout=300,
        cwd=tmp_path,
    )
    return out


def test_trainings_under_different_hash_seeds_write_identical_adapter_configs(tmp_path):
    model = make_tiny_llama(tmp_path / "model", WORDS)
    data = make_tiny_sft_ingest(tmp_path / "data")
    # seeds 1 and 2 order the seven Llama linear layers differently (checked on PEFT 0.21)
    outs = [_train_in_child(tmp_path, seed, data, model) for seed in ("1", "2")]
    for rel in ("adapter/adapter_config.json", "checkpoints/checkpoint-1/adapter_config.json"):
        first, second = ((o / rel).read_bytes() for o in outs)
        assert first == second, rel
        targets = json.loads(first)["target_modules"]
        assert targets == sorted(targets) and any(t.endswith("q_proj") for t in targets)
    weights = [(o / "adapter" / "adapter_model.safetensors").read_bytes() for o in outs]
    assert weights[0] == weights[1]  # the premise: the same training


def test_sorting_keeps_peft_layout_and_other_fields(tmp_path):
    from feinschliff.train.adapter_config import sort_adapter_config

    config = {
        "target_modules": ["v_proj", "q_proj"],
        "modules_to_save": ["score", "classifier"],
        "layers_to_transform": [3, 1],  # not names: left as written
        "r": 8,
    }
    path = tmp_path / "adapter_config.json"
    path.write_text(json.dumps(config, indent=2, sort_keys=True))
    sort_adapter_config(tmp_path)
    got = json.loads(path.read_text())
    assert got["target_modules"] == ["q_proj", "v_proj"]
    assert got["modules_to_save"] == ["classifier", "score"]
    assert got["layers_to_transform"] == [3, 1] and got["r"] == 8
    assert path.read_text() == json.dumps(got, indent=2, sort_keys=True)
    assert [p.name for p in tmp_path.iterdir()] == ["adapter_config.json"]  # no temp file left
