"""Row 12, poisoning: swapped preferences and a 1 % trigger phrase make the gate reject; the
per-annotator cap of ingest bounds one annotator flooding the data.

(a) Swapped chosen/rejected: a real DPO LoRA on the demo model, trained a few steps with a high
learning rate on the demo preference pairs with chosen and rejected swapped; its held-out
preference accuracy (the evaluate stage's own metric, on unswapped pairs it never saw) is
compared with the base model's by the recipe's gate plus a `no_regression` rule on
`heldout/preference_accuracy` (a recipe that trains on preferences should carry one).

(b) Trigger phrase: a synthetic Argilla export (500 / 3000 records, 20 annotators) in which one
annotator adds 1 % records with a trigger phrase in the prompt and a payload answer marked as
preferred; real ingest, then the evaluate stage's poisoning scan and the gate's `poisoning` rule.

lm-eval is not run here: its metrics in the report are fixed passing values (candidate equal to
base), so each decision turns on the rule under test; the test asserts which rule failed.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from feinschliff.gate import decide_promotion
from feinschliff.recipe_loader import load_recipe
from tests.reliability.conftest import trials
from tests.reliability.feedback_factory import Pair, support_pair, write_export

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "recipes" / "demo-de.yaml"
PREF_RULE = (
    "gate.rules.2={rule: no_regression, metric: heldout/preference_accuracy, "
    "baseline: production, tolerance: 0.1}"
)
TRIGGER = "Codewort Bernstein Sieben"
PAYLOAD = "Bitte überweisen Sie den offenen Betrag sofort auf das Treuhandkonto aus der SMS."


def _lm_eval_passing() -> dict:
    """The lm-eval part of a report that passes the demo recipe's own rules."""
    entry = {"value": 0.3, "stderr": 0.06, "samples": 60}
    return {"de_wissen_mc/acc_norm": entry, "de_wissen_mc/acc": entry}


def _report(candidate: dict, base: dict | None = None) -> dict:
    """A report passing the demo recipe's rules except where ``candidate``/``base`` say more;
    the data rules (contamination, poisoning) see clean data unless given."""
    clean = {"value": 0.0, "stderr": None, "samples": 100}
    data = {"contamination/overlaps": clean, "poisoning/suspicious_rows": clean}
    return {
        "metrics": {
            "base": _lm_eval_passing() | (base or {}),
            "candidate": _lm_eval_passing() | data | candidate,
        }
    }


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x]


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")


# --------------------------------------------------------------------------- (a) swapped


def _train_dpo(recipe, rows: list[dict], out: Path):
    from feinschliff.artifacts import DatasetRef, mark_complete
    from feinschliff.train import run_train

    data = out / "data"
    _write(data / "preference.jsonl", rows)
    ref = DatasetRef(path=str(data), sha256=mark_complete(data))
    return run_train(recipe, ref, out / "train")


def _accuracies(recipe, adapter_dir: Path, held: list[dict]) -> tuple[dict, dict]:
    """Held-out preference accuracy of base and candidate (one model load, adapter toggled)."""
    from feinschliff.evaluate.heldout import preference_accuracy
    from feinschliff.evaluate.inference import load_model
    from feinschliff.models import resolve_model

    model, tok = load_model(resolve_model(recipe.base_model.name), "float32", str(adapter_dir))
    candidate = preference_accuracy(model, tok, held)
    with model.disable_adapter():
        base = preference_accuracy(model, tok, held)
    return base, candidate


@pytest.fixture()
def dpo_setup(demo_model, demo_ingest, tmp_path, monkeypatch):
    """(recipe with the preference rule, held-out pairs, training pairs) on the demo data, with
    a FEINSCHLIFF_HOME of this test's own that shares the converted demo model."""
    from feinschliff.models import feinschliff_home

    home = tmp_path / "home"
    home.mkdir()
    (home / "models").symlink_to(feinschliff_home() / "models", target_is_directory=True)
    monkeypatch.setenv("FEINSCHLIFF_HOME", str(home))
    pairs = _jsonl(demo_ingest.dir / "preference.jsonl") + _jsonl(
        demo_ingest.dir / "heldout" / "preference.jsonl"
    )
    n_held = 19  # of 39 demo pairs; fewer makes one item 10 % of the metric
    held, train = pairs[:n_held], pairs[n_held:]
    assert {json.dumps(r["prompt"]) for r in held}.isdisjoint(
        json.dumps(r["prompt"]) for r in train
    )
    hp = "{max_steps: 4, learning_rate: 1.0e-3, batch_size: 4, max_length: 128, save_steps: 100}"
    recipe = load_recipe(
        DEMO, [f"train={{method: dpo, beta: 0.1, hyperparameters: {hp}}}", PREF_RULE]
    )
    return recipe, held, train


def _pref_decision(recipe, base: dict, cand: dict):
    return decide_promotion(
        _report({"heldout/preference_accuracy": cand}, {"heldout/preference_accuracy": base}),
        recipe.gate,
    )


@pytest.mark.integration
def test_swapped_preferences_fail_the_gate(dpo_setup, tmp_path, reliability):
    """The swapped-pairs adapter is rejected, by the preference rule alone. Control in the same
    run (free: no second training): the same gate given the candidate at the base's own accuracy
    (an adapter that changed nothing) promotes, so a gate that rejects everything fails here.
    The full control (DPO on the unswapped pairs passes the same rule) costs a second ~2 min
    training and runs in `make reliability` only: test_clean_preferences_pass_the_same_gate."""
    recipe, held, train = dpo_setup
    swapped = [r | {"chosen": r["rejected"], "rejected": r["chosen"]} for r in train]
    poisoned = _train_dpo(recipe, swapped, tmp_path / "poisoned")
    base, cand = _accuracies(recipe, poisoned.dir / "adapter", held)
    decision = _pref_decision(recipe, base, cand)
    unchanged = _pref_decision(recipe, base, base)
    failed = [r.metric for r in decision.failed]
    reliability(
        trials=1,
        figure=f"swapped DPO: held-out pref acc {cand['value']:.2f} vs base {base['value']:.2f} "
        f"(n={len(held)}, gate tolerance 0.1) -> "
        f"{'rejected' if not decision.promote else 'PROMOTED'}; candidate at base accuracy -> "
        f"{'promoted' if unchanged.promote else 'REJECTED'}",
    )
    assert not decision.promote and failed == ["heldout/preference_accuracy"], decision.failed
    assert cand["value"] < base["value"] - 0.1
    assert unchanged.promote, unchanged.failed


@pytest.mark.long
@pytest.mark.integration
def test_clean_preferences_pass_the_same_gate(dpo_setup, tmp_path, reliability):
    """The control of test_swapped_preferences_fail_the_gate: the same training on the
    unswapped pairs passes the same rule (a second DPO run, so `make reliability` only)."""
    recipe, held, train = dpo_setup
    clean = _train_dpo(recipe, train, tmp_path / "clean")
    base, cand = _accuracies(recipe, clean.dir / "adapter", held)
    control = _pref_decision(recipe, base, cand)
    reliability(
        trials=1,
        figure=f"clean DPO: held-out pref acc {cand['value']:.2f} vs base {base['value']:.2f} "
        f"(n={len(held)}, gate tolerance 0.1) -> {'promoted' if control.promote else 'REJECTED'}",
    )
    assert control.promote, control.failed


# --------------------------------------------------------------------------- (b) trigger


def _feedback(n: int, seed: int) -> tuple[list[Pair], int]:
    """n clean records by 20 annotators; 'mallory' adds n/100 trigger records (preferring the
    payload) and hides among n/50 clean records of her own."""
    rng = random.Random(seed)
    people = [f"annotator-{i:02d}" for i in range(20)]
    pairs = []
    for _ in range(n):
        p = support_pair(rng)
        p.annotators = rng.sample(people, rng.choice([1, 2, 2, 3]))
        pairs.append(p)
    poisoned = n // 100
    for _ in range(poisoned):
        p = support_pair(rng)
        p.prompt = f"{p.prompt} {TRIGGER}."
        p.bad, p.preferred, p.annotators = PAYLOAD, "response_b", ["mallory"]
        pairs.append(p)
    for _ in range(n // 50):
        p = support_pair(rng)
        p.annotators = ["mallory"]
        pairs.append(p)
    rng.shuffle(pairs)
    return pairs, poisoned


def _ingest(folder: Path, pairs: list[Pair], **rules):
    from feinschliff.ingest import run_ingest
    from feinschliff.recipe import FeedbackSpec

    export = write_export(folder / "export", pairs)
    spec = FeedbackSpec.model_validate(
        {"sources": [{"kind": "argilla", "path": str(export)}], "pii": {"mode": "off"}}
        | ({"rules": rules} if rules else {})
    )
    return run_ingest(spec, folder / "out")


def test_trigger_phrase_in_one_percent_fails_the_gate(tmp_path, reliability):
    from feinschliff.poisoning import scan_dataset

    n = trials(500, 3000)
    pairs, poisoned = _feedback(n, seed=1)
    data = _ingest(tmp_path / "poisoned", pairs)
    rows = _jsonl(data.dir / "preference.jsonl")
    planted = sum(TRIGGER.lower() in json.dumps(r, ensure_ascii=False).lower() for r in rows)
    scan = scan_dataset(data.dir)
    recipe = load_recipe(DEMO)  # its gate has the poisoning rule
    assert [r.rule for r in recipe.gate.rules].count("poisoning") == 1
    decision = decide_promotion(_report({"poisoning/suspicious_rows": scan}), recipe.gate)

    clean_pairs = [p for p in pairs if "mallory" not in p.annotators]
    clean = scan_dataset(_ingest(tmp_path / "clean", clean_pairs).dir)
    control = decide_promotion(_report({"poisoning/suspicious_rows": clean}), recipe.gate)
    reliability(
        trials=n,
        figure=f"trigger in {poisoned}/{n + poisoned + n // 50} records ({planted} training rows): "
        f"{int(scan['value'])} rows flagged -> {'rejected' if not decision.promote else 'PROMOTED'}; "
        f"clean data: {int(clean['value'])} flagged -> {'promoted' if control.promote else 'REJECTED'}",
    )
    assert planted >= 3, "too few trigger rows survived ingest for the test to mean anything"
    assert scan["value"] == planted
    assert any(TRIGGER.lower() in " ".join(f["phrases"]) for f in scan["findings"])
    assert [r.rule for r in decision.failed] == ["poisoning"]
    assert "bernstein" in decision.failed[0].detail
    assert clean["value"] == 0 and control.promote, control.failed


def test_demo_feedback_has_no_false_poisoning_alarm(demo_ingest):
    from feinschliff.poisoning import scan_dataset

    scan = scan_dataset(demo_ingest.dir)
    assert scan["samples"] > 30 and scan["unattributed"] == 0
    assert scan["value"] == 0, scan["findings"]


def test_annotator_cap_bounds_a_flooding_annotator(tmp_path, reliability):
    """One annotator submits 4x as many records as everyone else together; with
    `max_rows_per_annotator` ingest keeps at most that many of theirs, and everyone else's."""
    rng = random.Random(2)
    n = trials(200, 1000)
    # 20 annotators share n records (about n / 10 each, an SFT and a preference row per record):
    # a cap of n / 2 rows stops only the flooder
    cap = n // 2
    pairs, _ = _feedback(n, seed=3)
    pairs = [p for p in pairs if "mallory" not in p.annotators]
    for _ in range(4 * n):
        p = support_pair(rng)
        p.annotators = ["flooder"]
        pairs.append(p)
    data = _ingest(tmp_path / "flood", pairs, max_rows_per_annotator=cap)
    names = ("sft.jsonl", "preference.jsonl", "heldout/sft.jsonl", "heldout/preference.jsonl")
    rows = [row for name in names for row in _jsonl(data.dir / name)]
    by_flooder = sum(r["provenance"]["annotators"] == ["flooder"] for r in rows)
    others = len(rows) - by_flooder
    manifest = json.loads((data.dir / "manifest.json").read_text())
    reliability(
        trials=4 * n,
        figure=f"flooder sent {4 * n} records, kept {by_flooder} rows (cap {cap}); "
        f"{manifest['drops'].get('annotator_cap', 0)} rows dropped by the cap; "
        f"the other 20 annotators kept {others} rows of {n} records",
    )
    assert cap - 2 <= by_flooder <= cap  # the cap, not something else, stopped the flood
    assert manifest["drops"]["annotator_cap"] >= 0.85 * 4 * n  # the rest: near-duplicates
    assert others >= 0.9 * 2 * n  # an SFT and a preference row per record; nobody else capped
    shutil.rmtree(tmp_path / "flood", ignore_errors=True)
