"""The whole loop under Prefect with the real demo model, real TRL training and real lm-eval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from feinschliff.registry import audit_log, read_aliases, versions

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "recipes" / "demo-de.yaml")
FAST = [
    "train.hyperparameters.max_steps=2",
    "train.hyperparameters.save_steps=1",
    "train.hyperparameters.max_length=128",
    "evaluate.limit=8",
]
ACCEPT = ["gate.rules.0.tolerance=1.0", "gate.rules.1.threshold=8"]  # must pass on any 8-item eval
REJECT = ["gate.rules.1.threshold=1000"]  # 8 samples can never satisfy min_samples 1000

pytestmark = pytest.mark.integration


def test_flow_promotes_then_reuses_then_rejects(prefect_harness, demo_model, home, tmp_path):
    from flows.retrain import retrain

    work = home / "runs" / "support-de-demo"  # where a scheduled run works, and gc looks
    first = retrain(recipe_path=DEMO, overrides=FAST + ACCEPT, workdir=str(work))

    assert first["promoted"] is True and first["version"] == "v0001"
    registry = home / "registry"
    assert versions(registry, "support-de-demo") == ["v0001"]
    assert read_aliases(registry, "support-de-demo")["production"] == "v0001"
    manifest = json.loads((registry / "support-de-demo" / "v0001" / "manifest.json").read_text())
    assert manifest["train"]["method"] == "sft" and manifest["train"]["global_step"] == 2
    assert manifest["gate"]["promote"] is True
    assert manifest["dataset"]["counts"]["sft.jsonl"] > 0
    # what `registry history` shows: rows trained on, where it started, what it was compared with
    assert 0 < manifest["train"]["train_rows"] <= manifest["dataset"]["counts"]["sft.jsonl"]
    assert manifest["train"]["init_from"] == "base" and manifest["train"]["replayed_rows"] == 0
    assert set(manifest["evaluation"]["models"]) == {"base", "candidate"}  # no production yet
    assert (
        registry / "support-de-demo" / "v0001" / "adapter" / "adapter_model.safetensors"
    ).exists()

    report = json.loads(Path(first["report"]).read_text())
    assert set(report["metrics"]) == {"base", "candidate"}
    assert report["metrics"]["candidate"]["de_wissen_mc/acc"]["samples"] == 8
    for name in (
        "train/loss.png",
        "train/metrics.json",
        "evaluate/report.md",
        "evaluate/comparison.png",
    ):
        assert (work / name).stat().st_size > 0, name

    # `feinschliff gc --yes` between scheduled runs removes the finished training's checkpoints
    # and keeps the replay snapshot v0001 records; nothing the next run reuses is lost.
    from tests.cli_helpers import run_cli

    assert (work / "train" / "checkpoints").is_dir()
    code, said = run_cli("gc", DEMO, "--yes")
    assert code == 0, said
    assert not (work / "train" / "checkpoints").exists()
    rows = manifest["dataset"].get("rows_sha256") or manifest["train"]["dataset_rows_sha256"]
    assert (home / "datasets" / rows).is_dir(), said

    # Unchanged inputs: training is reused (its marker untouched), the same version is re-found.
    marker = work / "train" / ".complete"
    stamp = marker.stat().st_mtime_ns
    again = retrain(recipe_path=DEMO, overrides=FAST + ACCEPT, workdir=str(work))
    assert again["version"] == "v0001" and versions(registry, "support-de-demo") == ["v0001"]
    assert marker.stat().st_mtime_ns == stamp

    # A gate that cannot pass: rejected, registry untouched, production now part of the report.
    rejected = retrain(
        recipe_path=DEMO,
        overrides=FAST + REJECT + ["train.lora.alpha=16"],
        workdir=str(tmp_path / "run2"),
    )
    assert rejected["promoted"] is False and rejected["version"] is None
    failed = [r for r in rejected["decision"]["results"] if not r["passed"]]
    assert [r["rule"] for r in failed] == ["min_samples"]
    assert versions(registry, "support-de-demo") == ["v0001"]
    # ...but the rejection is in the audit log, for `registry history` and `registry audit`
    assert [
        (e["workdir"], e["compared_with"], e["decision"]["promote"])
        for e in audit_log(registry, "support-de-demo")
        if e["event"] == "rejected"
    ] == [(str(tmp_path / "run2"), "v0001", False)]
    report2 = json.loads(Path(rejected["report"]).read_text())
    assert set(report2["metrics"]) == {"base", "production", "candidate"}
