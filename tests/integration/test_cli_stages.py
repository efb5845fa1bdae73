"""Each stage on its own through the `feinschliff` CLI, chained by hand, no Prefect."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from feinschliff.artifacts import completed_hash

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "recipes" / "demo-de.yaml")
FAST = [
    "--set",
    "train.hyperparameters.max_steps=2",
    "--set",
    "train.hyperparameters.save_steps=1",
    "--set",
    "train.hyperparameters.max_length=128",
    "--set",
    "evaluate.limit=8",
]

pytestmark = pytest.mark.integration


def cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "feinschliff.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )


def test_models_fetch_is_cached(demo_model, home):
    t0 = time.perf_counter()
    proc = cli("models", "fetch", "smollm2-135m-instruct", env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    assert time.perf_counter() - t0 < 15  # no download, no conversion: just the CLI start-up
    path = Path(proc.stdout.strip().splitlines()[-1])
    assert (path / "config.json").exists() and (path / "model.safetensors").exists()


def test_stages_chain_through_the_cli(demo_model, home, tmp_path):
    env = dict(os.environ)
    data, adapter, evald = tmp_path / "data", tmp_path / "adapter", tmp_path / "eval"

    p = cli("ingest", DEMO, "--out", str(data), env=env)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["counts"]["sft.jsonl"] > 0

    p = cli("train", DEMO, "--data", str(data), "--out", str(adapter), *FAST, env=env)
    assert p.returncode == 0, p.stderr
    metrics = json.loads((adapter / "metrics.json").read_text())
    assert metrics["global_step"] == 2 and len(metrics["loss_curve"]) == 2
    assert metrics["peak_rss_mb"] > 100 and metrics["trained_tokens"] > 0
    cfg = json.loads((adapter / "adapter" / "adapter_config.json").read_text())
    assert cfg["r"] == 16 and cfg["bias"] == "none" and not cfg.get("use_dora")
    assert completed_hash(adapter)

    p = cli(
        "evaluate",
        DEMO,
        "--adapter",
        str(adapter),
        "--data",
        str(data),
        "--out",
        str(evald),
        *FAST,
        "--set",
        "evaluate.heldout_max_new_tokens=12",
        env=env,
    )
    assert p.returncode == 0, p.stderr
    assert "de_wissen_mc/acc" in p.stdout and (evald / "comparison.png").exists()
    # the use-case task built from ingest's held-out pairs, and the held-out feedback metrics
    assert "usecase_heldout/acc_norm" in p.stdout and "heldout/preference_accuracy" in p.stdout
    report = evald / "report.json"

    p = cli("gate", DEMO, "--report", str(report), "--set", "gate.rules.1.threshold=1000", env=env)
    assert p.returncode == 3 and "FAIL  min_samples" in p.stdout and "decision: REJECT" in p.stdout
    p = cli(
        "gate",
        DEMO,
        "--report",
        str(report),
        "--set",
        "gate.rules.0.tolerance=1",
        "--set",
        "gate.rules.1.threshold=8",
        env=env,
    )
    assert p.returncode == 0 and "decision: PROMOTE" in p.stdout

    p = cli("register", DEMO, "--adapter", str(adapter), env=env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "support-de-demo/v0001"
    p = cli("registry", "list", env=env)
    assert "support-de-demo" in p.stdout and "v0001" in p.stdout and "candidate" in p.stdout

    # A second train call with the same inputs reuses the finished adapter.
    t0 = time.perf_counter()
    p = cli("train", DEMO, "--data", str(data), "--out", str(adapter), *FAST, env=env)
    assert p.returncode == 0 and "reusing finished adapter" in p.stderr
    assert time.perf_counter() - t0 < 30

    # a require_approval rule: `register --promote` waits for a human, who answers as in `gate`
    passing = ["gate.rules.0.tolerance=1", "gate.rules.1.threshold=8"]
    passing += ["gate.rules.4={rule: require_approval}"]
    sets = [a for s in passing for a in ("--set", s)]
    args = ["register", DEMO, "--adapter", str(adapter), "--report", str(report), "--promote"]
    p = cli(*args, *sets, env=env)
    assert p.returncode == 3 and "it awaits a human: add --approve --by NAME" in p.stderr
    p = cli(*args, *sets, "--approve", "--by", "alice", env=env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "support-de-demo/v0001"  # the same adapter: the same version
    p = cli("registry", "audit", "support-de-demo", env=env)
    assert "production" in p.stdout and "-> v0001 gate=pass" in p.stdout, p.stdout
    p = cli("gate", DEMO, "--report", str(evald), env=env)  # a folder, not the report
    assert p.returncode == 2 and "--report" in p.stderr and "Traceback" not in p.stderr


def test_train_refuses_incomplete_data(home, tmp_path):
    (tmp_path / "data").mkdir()
    p = cli(
        "train",
        DEMO,
        "--data",
        str(tmp_path / "data"),
        "--out",
        str(tmp_path / "o"),
        env=dict(os.environ),
    )
    assert p.returncode == 2 and "not a complete ingest, generate or mix output" in p.stderr
