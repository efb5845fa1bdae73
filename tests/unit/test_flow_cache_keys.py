"""The flow's cache keys cover everything a stage's output depends on: a rerun after an edit
must not be served the old output (Prefect calls the key functions; no server needed)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from feinschliff.artifacts import AdapterRef, DatasetRef, mark_complete
from feinschliff.recipe_loader import load_recipe
from flows.tasks import _evaluate_key, _generate_key, _ingest_key, _train_key
from tests.unit.test_generate_stage import _recipe as _generate_recipe

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "recipes" / "demo-de.yaml"


def _ingest(out: Path, *overrides: str) -> str:
    return _ingest_key(None, {"recipe": load_recipe(DEMO, list(overrides)), "out": out})


def test_ingest_key_follows_the_eval_sets_rows_are_decontaminated_against(tmp_path):
    base = _ingest(tmp_path)
    assert _ingest(tmp_path) == base  # stable across calls
    # evaluate.tasks join the eval sets (run_ingest's eval_tasks), not only the feedback section
    assert _ingest(tmp_path, "evaluate.tasks=[de_wissen_mc, de_kurzantwort]") != base
    extra = tmp_path / "extra.jsonl"
    extra.write_text('{"question": "Wie hoch ist der Grundpreis im Tarif Öko?"}\n')
    with_file = _ingest(tmp_path, f"feedback.decontamination.eval_sets=[{extra}]")
    extra.write_text('{"question": "Wie hoch ist der Arbeitspreis im Tarif Öko?"}\n')
    assert _ingest(tmp_path, f"feedback.decontamination.eval_sets=[{extra}]") != with_file


def test_ingest_key_of_a_missing_eval_set_is_none_not_a_crash(tmp_path):
    gone = tmp_path / "gone.jsonl"
    assert _ingest(tmp_path, f"feedback.decontamination.eval_sets=[{gone}]") is None


def test_ingest_key_follows_the_pseudonymization_key(tmp_path, monkeypatch):
    mode = "feedback.pii.mode=pseudonymize"
    monkeypatch.setenv("FEINSCHLIFF_PII_KEY", "k" * 32)
    first = _ingest(tmp_path, mode)
    assert _ingest(tmp_path, mode) == first
    monkeypatch.setenv("FEINSCHLIFF_PII_KEY", "j" * 32)  # rotated: old ciphertexts are stale
    assert _ingest(tmp_path, mode) != first


def test_evaluate_key_follows_the_bundled_eval_data(tmp_path, monkeypatch):
    root = tmp_path / "checkout"
    shutil.copytree(ROOT / "evals", root / "evals")
    monkeypatch.setenv("FEINSCHLIFF_PROJECT_ROOT", str(root))
    adapter = tmp_path / "adapter"
    (adapter / "adapter").mkdir(parents=True)
    (adapter / "adapter" / "adapter_model.safetensors").write_bytes(b"weights")
    params = {
        "recipe": load_recipe(DEMO, ["register.registry=" + str(tmp_path / "registry")]),
        "data": DatasetRef(path=str(tmp_path / "data"), sha256="d" * 64),
        "adapter": AdapterRef(path=str(adapter), sha256="a" * 64),
        "out": tmp_path / "eval",
        "production": None,
    }
    first = _evaluate_key(None, params)
    assert _evaluate_key(None, params) == first
    task = root / "evals" / "lm_eval_tasks" / "de_kurzantwort.jsonl"
    task.write_text(task.read_text() + '{"id": "neu", "question": "Neu?", "answer": "Ja"}\n')
    assert _evaluate_key(None, params) != first
    judge = next((root / "evals" / "judge").glob("*.jsonl"))
    before = _evaluate_key(None, params)
    judge.write_text(judge.read_text() + "\n")
    assert _evaluate_key(None, params) != before
    wider = {
        **params,
        "recipe": load_recipe(
            DEMO,
            [
                "register.registry=" + str(tmp_path / "registry"),
                "feedback.decontamination.ngram=20",
            ],
        ),
    }
    assert _evaluate_key(None, wider) != _evaluate_key(None, params)  # the contamination n


@pytest.fixture()
def generate_params(tmp_path):
    recipe = load_recipe(_generate_recipe(tmp_path))
    feedback = DatasetRef(path=str(tmp_path / "data"), sha256="f" * 64)
    return {"recipe": recipe, "feedback": feedback, "out": tmp_path / "gen"}


def test_generate_key_follows_the_seed_files(tmp_path, generate_params):
    first = _generate_key(None, generate_params)
    assert first is not None and _generate_key(None, generate_params) == first
    (tmp_path / "themen.txt").write_text("Tarifwechsel\nUmzug\n", encoding="utf-8")
    assert _generate_key(None, generate_params) != first
    recipe = generate_params["recipe"]
    wider = recipe.model_copy(
        update={
            "feedback": recipe.feedback.model_copy(
                update={
                    "decontamination": recipe.feedback.decontamination.model_copy(
                        update={"ngram": 20}
                    )
                }
            )
        }
    )
    assert _generate_key(None, {**generate_params, "recipe": wider}) != _generate_key(
        None, generate_params
    )


def test_generate_key_follows_the_recipes_own_eval_sets(tmp_path, generate_params):
    """The flow's key is the stage's own: generated rows are decontaminated against the
    recipe's extra eval sets too, so editing one must not serve the old output."""
    extra = tmp_path / "private-eval.jsonl"
    extra.write_text('{"question": "Wie hoch ist der Grundpreis im Tarif Öko?"}\n')
    recipe = generate_params["recipe"]
    decon = recipe.feedback.decontamination.model_copy(update={"eval_sets": [str(extra)]})
    with_set = recipe.model_copy(
        update={"feedback": recipe.feedback.model_copy(update={"decontamination": decon})}
    )
    params = {**generate_params, "recipe": with_set}
    first = _generate_key(None, params)
    assert first is not None and first != _generate_key(None, generate_params)
    extra.write_text('{"question": "Wie hoch ist der Arbeitspreis im Tarif Öko?"}\n')
    assert _generate_key(None, params) != first
    extra.unlink()  # missing: no key (the task fails with the message), not a crash in Prefect
    assert _generate_key(None, params) is None


def test_generate_output_stopped_by_its_budget_is_not_served_from_the_cache(generate_params):
    out = generate_params["out"]
    out.mkdir()
    (out / "sft.jsonl").write_text("")
    mark_complete(out, stage="generate", key="k", stopped_by_budget=None)
    assert _generate_key(None, generate_params) is not None
    mark_complete(out, stage="generate", key="k", stopped_by_budget="budget: max_requests=1")
    assert _generate_key(None, generate_params) is None  # Prefect: no cache lookup, task runs


def _dataset(root: Path, rows: str, run: str) -> DatasetRef:
    """An ingest-shaped output: rows plus the bookkeeping a scheduled pull rewrites."""
    root.mkdir()
    (root / "sft.jsonl").write_text(rows)
    (root / "heldout").mkdir()
    (root / "heldout" / "sft.jsonl").write_text("")
    (root / "manifest.json").write_text(f'{{"watermarks": {{"langfuse": "{run}"}}}}')
    (root / "README.md").write_text(f"pulled {run}\n")
    (root / "quarantine.jsonl").write_text(f'{{"reason": "seen in {run}"}}\n')
    return DatasetRef(path=str(root), sha256=mark_complete(root, stage="ingest"))


def test_a_pull_that_found_nothing_new_reuses_training(tmp_path):
    """Two scheduled pulls with the same rows differ in their bookkeeping (watermarks, input
    hashes, card): the dataset hash differs, the train key does not."""
    recipe = load_recipe(DEMO)
    monday = _dataset(tmp_path / "mon", '{"messages": []}\n', "2026-11-23")
    tuesday = _dataset(tmp_path / "tue", '{"messages": []}\n', "2026-11-24")
    changed = _dataset(tmp_path / "wed", '{"messages": [{"role": "user"}]}\n', "2026-11-25")
    assert monday.sha256 != tuesday.sha256

    def key(data: DatasetRef) -> str:
        params = {"recipe": recipe, "data": data, "out": tmp_path / "train", "production": None}
        return _train_key(None, params)

    assert key(monday) == key(tuesday)
    assert key(changed) != key(monday)
    (tuesday.dir / "heldout" / "sft.jsonl").write_text('{"messages": []}\n')  # held-out counts
    assert key(tuesday) != key(monday)
