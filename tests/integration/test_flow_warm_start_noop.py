"""A warm-starting recipe (``train.init_from: production``) without new feedback trains
nothing: production was itself trained on these rows with this training recipe. Train's key
names the production it continues, so every promotion was followed by another pass over the
same rows (production + the old data once more), evaluated and possibly promoted again: every
scheduled run compounded training on old data.

The real flow, caching, ledger, gate and registry with the fake slow stages of
test_flow_resume.py; the fake training here continues the production adapter (its content
depends on it) and records in metrics.json what the real ``train.stage._train`` records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from feinschliff.registry import manifest, read_aliases, versions
from tests.integration import test_flow_resume as resume
from tests.integration.test_flow_resume import DEMO, PASSING, USE_CASE
from tests.integration.test_flow_unchanged import _gate_artifact

fake = resume.fake  # the fake-stage fixture, registered under its name in this module too

pytestmark = pytest.mark.integration

WARM = [*PASSING, "train.init_from=production"]


@pytest.fixture()
def trainings(fake, monkeypatch) -> list[str | None]:
    """The production each real (not cached) training continued; a fake that trains on it."""
    from feinschliff.artifacts import AdapterRef, mark_complete, prepare_out, rows_sha256
    from feinschliff.train import stage, warm_start
    from flows import tasks

    # the fake adapters are no PEFT adapters of the demo model: any LoRA matches
    monkeypatch.setattr(warm_start, "check_compatible", lambda recipe, config: None)
    seen: list[str | None] = []

    def train(recipe, data, out, *, production=None):
        warm = stage._warm_start(recipe, production)
        seen.append(warm.version if warm else None)
        key = stage.cache_key(recipe, data, production)
        prepare_out(out, key)
        (out / "adapter").mkdir()
        weights = [recipe.train.model_dump(mode="json"), rows_sha256(data)]
        weights.append(warm.adapter_sha256 if warm else None)  # continues production
        (out / "adapter" / "w.bin").write_text(json.dumps(weights))
        (out / "adapter" / "adapter_config.json").write_text("{}")
        metrics = {
            "loss_curve": [{"step": 1, "loss": 1.0}],
            "dataset_rows_sha256": rows_sha256(data),
            # (getattr: the test also runs against the code before the record existed)
            "train_inputs_sha256": getattr(stage, "train_inputs", lambda r: "none")(recipe),
        }
        (out / "metrics.json").write_text(json.dumps(metrics))
        return AdapterRef(path=str(out), sha256=mark_complete(out, stage="train", key=key))

    monkeypatch.setattr(tasks, "run_train", train)
    return seen


def _run(tmp_path: Path, overrides: list[str] = WARM, **kw):
    from flows.retrain import retrain

    return retrain(recipe_path=DEMO, overrides=overrides, workdir=str(tmp_path / "w"), **kw)


def test_a_warm_start_without_new_feedback_trains_nothing(fake, trainings, home, tmp_path, caplog):
    """The second run trained v0001 once more on feedback-1 and promoted that as v0002."""
    first = _run(tmp_path)
    assert first["version"] == "v0001" and trainings == [None]  # no production yet: cold
    caplog.clear()

    state = _run(tmp_path, return_state=True)

    again = state.result()
    assert trainings == [None]  # nothing trained
    assert again["unchanged"] is True and again["promoted"] is False
    assert again["version"] == "v0001" and again["held"] is None
    summary = "decision: UNCHANGED: production v0001 was trained on these rows"
    assert again["summary"].startswith(summary) and summary in caplog.text
    gate = _gate_artifact(state.state_details.flow_run_id)
    assert gate.startswith("## Gate: **UNCHANGED**: production `v0001` was trained on these rows")
    assert versions(home / "registry", USE_CASE) == ["v0001"]
    assert fake.events() == [("promoted", "v0001")]


def test_after_a_warm_promotion_the_next_run_trains_nothing(fake, trainings, home, tmp_path):
    """New feedback continues v0001 into v0002; the run after it (same feedback) trained v0002
    again on feedback-2 (its key names the new production) and promoted v0003."""
    assert _run(tmp_path)["version"] == "v0001"
    fake.feedback = "feedback-2"
    assert _run(tmp_path)["version"] == "v0002"
    assert trainings == [None, "v0001"]

    again = _run(tmp_path)

    assert trainings == [None, "v0001"]
    assert again["unchanged"] is True and again["version"] == "v0002"
    assert read_aliases(home / "registry", USE_CASE)["production"] == "v0002"
    assert fake.events() == [("promoted", "v0001"), ("promoted", "v0002")]
    recorded = manifest(home / "registry", USE_CASE, "v0002")["train"]  # what it compared
    assert recorded["dataset_rows_sha256"] and recorded["train_inputs_sha256"]


def test_a_changed_train_section_or_replay_share_trains_again(fake, trainings, home, tmp_path):
    """The same rows with another training recipe (here: a replay share) is something new."""
    assert _run(tmp_path)["version"] == "v0001"

    again = _run(tmp_path, [*WARM, "train.replay_fraction=0.5"])

    assert trainings == [None, "v0001"]
    assert again["unchanged"] is False and again["version"] == "v0002"


def test_a_production_without_the_record_trains_as_before(
    fake, trainings, home, tmp_path, monkeypatch
):
    """Versions registered before the record existed: no comparison, a warm run trains."""
    from feinschliff import pipeline

    real = pipeline.lineage

    def without_record(*a, **k):
        lineage = real(*a, **k)
        lineage["train"].pop("train_inputs_sha256", None)
        return lineage

    monkeypatch.setattr("flows.tasks.lineage", without_record)
    assert _run(tmp_path)["version"] == "v0001"

    again = _run(tmp_path)

    assert trainings == [None, "v0001"] and again["version"] == "v0002"


def test_an_evaluate_only_warm_run_still_trains_and_evaluates(fake, trainings, home, tmp_path):
    """register=false is not cut short: it is how to get fresh numbers."""
    assert _run(tmp_path)["version"] == "v0001"

    result = _run(tmp_path, register=False)

    assert result["unchanged"] is False and result["decision"]["promote"] is True
