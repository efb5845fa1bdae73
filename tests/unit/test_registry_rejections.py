"""A flow run the gate rejects registers nothing; it leaves a `rejected` event in the use case's
audit log (`rejections.record_rejection`), once per adapter and decision, and never fails the
run when the registry cannot be written. `registry history` shows such runs among the
versions by time (version `-`, in --json null, on --plot as rejected points), `registry audit`
prints them readably. `registry show VERSION` names a gate decision the audit log recorded
after registration (the manifest keeps the registration's)."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

import feinschliff.cli.history_cmd  # noqa: F401  (registers `registry history`)
from feinschliff.artifacts import AdapterRef, DatasetRef, ReportRef
from feinschliff.gate import Approval, Decision, RuleResult
from feinschliff.recipe_loader import load_recipe
from feinschliff.registry import audit_log, open_root, promote, register_adapter, store_of
from feinschliff.registry_history import use_case_history
from feinschliff.rejections import record_rejection
from tests.cli_helpers import run_cli
from tests.unit.adapter_factory import make_base, make_train_output, target_for

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "recipes" / "demo-de.yaml")
UC = "support-de-demo"
SHA = "ab" * 32
PNG = b"\x89PNG\r\n\x1a\n"


def _rejected(approval: Approval | None = None) -> Decision:
    results = [
        RuleResult(
            rule="no_regression",
            metric="acc",
            value=0.4,
            threshold=0.05,
            passed=True,
            detail="-0.0100 vs base (0.4100), tolerance 0.05",
        ),
        RuleResult(
            rule="min_samples",
            metric="acc",
            value=8.0,
            threshold=1000.0,
            passed=False,
            detail="8 samples, need 1000",
        ),
    ]
    return Decision(promote=False, results=results, approval=approval)


@pytest.fixture()
def run_outputs(tmp_path):
    """What a flow run has when its gate decides: a dataset, a train output, a report."""
    data = tmp_path / "work" / "ingest"
    data.mkdir(parents=True)
    (data / "sft.jsonl").write_text('{"messages": []}\n')
    (data / "manifest.json").write_text(json.dumps({"counts": {"sft.jsonl": 1}}))
    train = tmp_path / "work" / "train"
    train.mkdir()
    metrics = {"method": "sft", "train_rows": 41, "init_from": "v0001", "base_model": "smol"}
    (train / "metrics.json").write_text(json.dumps(metrics))
    report = tmp_path / "work" / "evaluate"
    report.mkdir()
    body = {
        "metrics": {
            "base": {"acc": {"value": 0.41}},
            "production": {"acc": {"value": 0.45}},
            "candidate": {"acc": {"value": 0.4, "samples": 8}},
        },
        "models": {"production": {"adapter_sha256": "cd" * 32}},
    }
    (report / "report.json").write_text(json.dumps(body))
    return {
        "data": DatasetRef(path=str(data), sha256="d" * 64),
        "adapter": AdapterRef(path=str(train), sha256="t" * 64),
        "report": ReportRef(path=str(report), sha256="r" * 64),
        "workdir": tmp_path / "work",
    }


@pytest.fixture(params=["local", "memory"])
def registry(request, tmp_path, monkeypatch):
    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))
    if request.param == "local":
        yield str(tmp_path / "reg")
        return
    url = f"memory://rej-{uuid.uuid4().hex[:8]}/registry"
    yield url
    store_of(url).remove_tree("")


def _record(
    registry: str, outputs: dict, decision: Decision, production="v0001", ledger_run="run-1"
) -> bool:
    recipe = load_recipe(DEMO, [f"register.registry={registry}"])
    return record_rejection(
        recipe,
        decision,
        adapter_sha256=SHA,
        production=production,
        run="flow-run-1",
        ledger_run=ledger_run,
        **outputs,
    )


def test_a_rejection_is_recorded_once_with_what_history_needs(registry, run_outputs):
    assert _record(registry, run_outputs, _rejected()) is True
    # a Prefect retry, or a rerun reusing the cached decision: nothing appended again
    assert _record(registry, run_outputs, _rejected()) is False
    entries = audit_log(open_root(registry), UC)
    assert [e["event"] for e in entries] == ["rejected"]
    e = entries[0]
    assert e["adapter_sha256"] == SHA and e["candidate"] == "t" * 64
    assert e["compared_with"] == "v0001" and e["workdir"] == str(run_outputs["workdir"])
    assert e["decision"]["promote"] is False
    assert [r["passed"] for r in e["decision"]["results"]] == [True, False]
    assert e["evaluation"]["metrics"]["candidate"]["acc"]["value"] == 0.4
    assert e["dataset"]["sha256"] == "d" * 64 and e["dataset"]["counts"] == {"sft.jsonl": 1}
    assert len(e["dataset"]["rows_sha256"]) == 64
    assert e["train"]["train_rows"] == 41 and e["run"] == "flow-run-1"
    assert "min_samples acc: 8 samples, need 1000" in e["why"] and e["at"] and e["by"]


def test_another_decision_about_the_same_adapter_is_a_new_event(registry, run_outputs):
    """A reviewer's rejection and a timeout are different decisions (both are recorded)."""
    assert _record(registry, run_outputs, _rejected(Approval(approved=False, by="ana")))
    assert _record(registry, run_outputs, _rejected(Approval(approved=False, by="timeout")))
    assert len(audit_log(open_root(registry), UC)) == 2


def test_each_scheduled_run_and_each_production_is_its_own_rejection(registry, run_outputs):
    """With no new feedback a scheduled run reuses the cached training and evaluation: the
    same adapter and decision as last week's, yet another run the gate rejected (it was
    dropped as a repeat). A rejection against another production is another event too."""
    assert _record(registry, run_outputs, _rejected(), ledger_run="week-1")
    assert _record(registry, run_outputs, _rejected(), ledger_run="week-2")
    assert _record(registry, run_outputs, _rejected(), ledger_run="week-2", production="v0002")
    assert not _record(registry, run_outputs, _rejected(), ledger_run="week-2")  # its retry
    assert len(audit_log(open_root(registry), UC)) == 3


def test_missing_stage_files_still_record_the_decision(registry, run_outputs):
    (run_outputs["adapter"].dir / "metrics.json").unlink()
    (run_outputs["data"].dir / "manifest.json").unlink()
    assert _record(registry, run_outputs, _rejected()) is True
    (e,) = audit_log(open_root(registry), UC)
    assert e["decision"]["promote"] is False and e["train"]["train_rows"] is None


def test_a_promotion_is_no_rejection(registry, run_outputs):
    passed = _rejected().model_copy(update={"promote": True})
    assert _record(registry, run_outputs, passed) is False
    assert audit_log(open_root(registry), UC) == []


@pytest.mark.parametrize("where", ["file", "proc"])
def test_a_registry_that_cannot_be_written_is_a_warning_not_a_failed_run(
    tmp_path, run_outputs, caplog, where
):
    (tmp_path / "afile").write_text("x")
    target = tmp_path / "afile" if where == "file" else Path("/proc/feinschliff-registry")
    with caplog.at_level(logging.WARNING, logger="feinschliff.rejections"):
        assert _record(str(target), run_outputs, _rejected()) is False
    assert "rejection of support-de-demo could not be recorded" in caplog.text


@pytest.fixture()
def weeks(tmp_path, registry, run_outputs, monkeypatch):
    """v0001 promoted (week 1), a rejected run (week 2), v0002 registered (week 3)."""
    import feinschliff.registry_write as rw

    now = ["2026-11-02T08:00:00Z"]
    monkeypatch.setattr(rw, "_now", lambda: now[0])
    base = make_base(tmp_path / "base")
    root = open_root(registry)
    v1 = register_adapter(
        root,
        UC,
        make_train_output(tmp_path / "o1", str(base), seed=1.0),
        {"train": {"method": "sft"}, "gate": {"promote": True, "results": []}},
        target=target_for(base),
    )
    promote(root, UC, v1, why="gate passed")
    now[0] = "2026-11-09T08:00:00Z"
    _record(registry, run_outputs, _rejected())
    now[0] = "2026-11-16T08:00:00Z"
    register_adapter(
        root,
        UC,
        make_train_output(tmp_path / "o2", str(base), seed=2.0),
        {"train": {"method": "sft"}},
        target=target_for(base),
    )
    return registry


def test_history_shows_rejected_runs_among_the_versions_by_time(weeks):
    records = use_case_history(open_root(weeks), UC)
    assert [r.version for r in records] == ["v0001", None, "v0002"]
    run = records[1]
    assert run.state == "rejected" and run.gate == "fail" and run.train_rows == 41
    assert run.compared_with == "v0001" and run.metrics["acc"].production == 0.45
    code, out = run_cli("registry", "history", UC, "--root", weeks)
    assert code == 0, out
    rows = out.splitlines()[1:4]
    assert rows[1].split()[:2] == ["-", "2026-11-09T08:00:00Z"] and " rejected" in rows[1]
    assert "run 2026-11-09T08:00:00Z gate FAIL min_samples acc: 8 samples, need 1000" in out
    assert f"adapter {SHA[:12]}" in out and "workdir " in out


def test_history_json_gives_a_rejected_run_a_null_version(weeks):
    code, out = run_cli("registry", "history", UC, "--root", weeks, "--json")
    assert code == 0, out
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["version"] for r in rows] == ["v0001", None, "v0002"]
    assert rows[1]["state"] == "rejected" and rows[1]["run"]["at"] == "2026-11-09T08:00:00Z"
    assert rows[1]["adapter_sha256"] == SHA and rows[1]["run"]["workdir"].endswith("work")


def test_history_plot_draws_rejected_runs(weeks, tmp_path):
    from feinschliff.cli import app

    out = tmp_path / "h.png"
    res = CliRunner().invoke(app, ["registry", "history", UC, "--root", weeks, "--plot", str(out)])
    assert res.exit_code == 0, res.output
    assert out.read_bytes().startswith(PNG)


def test_history_of_a_use_case_with_only_rejected_runs(registry, run_outputs):
    _record(registry, run_outputs, _rejected())
    code, out = run_cli("registry", "history", UC, "--root", registry)
    assert code == 0, out
    assert out.splitlines()[1].startswith("-") and "rejected" in out


def test_audit_prints_a_rejected_run_readably(weeks):
    code, out = run_cli("registry", "audit", UC, "--root", weeks)
    assert code == 0, out
    line = next(x for x in out.splitlines() if " rejected " in x)
    assert f"adapter {SHA[:12]}" in line and "41 rows" in line and "vs production v0001" in line
    assert "gate=fail: FAIL min_samples acc: 8 samples, need 1000" in line


# ---- registry show VERSION: a later gate decision


def _awaiting(approved: bool | None) -> dict:
    rule = {
        "rule": "require_approval",
        "metric": "-",
        "value": None,
        "threshold": None,
        "passed": bool(approved),
        "detail": "approved by ana: ok" if approved else "awaiting human approval",
    }
    return {
        "promote": bool(approved),
        "results": [rule],
        "needs_approval": True,
        "approval": {"approved": True, "by": "ana", "comment": "ok"} if approved else None,
    }


def test_show_names_a_later_gate_decision_from_the_audit_log(tmp_path, monkeypatch):
    from feinschliff.cli import app

    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))
    base, reg = make_base(tmp_path / "base"), tmp_path / "reg"
    ref = make_train_output(tmp_path / "o", str(base), seed=1.0)
    v = register_adapter(reg, UC, ref, {"gate": _awaiting(None)}, target=target_for(base))
    res = CliRunner().invoke(app, ["registry", "show", UC, v, "--root", str(reg)])
    assert res.exit_code == 0 and res.stderr == ""  # nothing later: the manifest's holds
    promote(reg, UC, v, why="approved by ana", decision=_awaiting(True))
    res = CliRunner().invoke(app, ["registry", "show", UC, v, "--root", str(reg)])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["gate"]["promote"] is False  # the manifest is unchanged
    assert "manifest's gate decision (promote: false (awaiting approval))" in res.stderr
    assert "latest gate decision (audit log, " in res.stderr
    assert "approved by ana): promote: true (passed)" in res.stderr
    assert "PASS require_approval -: approved by ana: ok" in res.stderr


def test_show_says_nothing_more_when_the_audit_repeats_the_manifest(tmp_path, monkeypatch):
    """The flow records its decision in the manifest and, promoting, the same in the log."""
    from feinschliff.cli import app

    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))
    base, reg = make_base(tmp_path / "base"), tmp_path / "reg"
    ref = make_train_output(tmp_path / "o", str(base), seed=1.0)
    v = register_adapter(reg, UC, ref, {"gate": _awaiting(True)}, target=target_for(base))
    promote(reg, UC, v, why="gate passed", decision=_awaiting(True))
    res = CliRunner().invoke(app, ["registry", "show", UC, v, "--root", str(reg)])
    assert res.exit_code == 0 and res.stderr == ""


@pytest.mark.parametrize("event", ["rejected", "alias", "approval", None])
def test_audit_prints_entries_with_null_fields(tmp_path, event):
    """A damaged or hand-written audit entry with `by`/`at` null (or no event) was a format
    error in `registry audit`."""
    from feinschliff.cli.registry_show import audit_line

    line = audit_line({"at": None, "by": None, "event": event, "alias": None, "why": None})
    assert line.startswith("- - ") and "None" not in line
    assert "candidate 123" in audit_line({"event": "approval", "candidate": 123})


def test_a_use_case_holding_only_rejections_is_nothing_to_serve(registry, run_outputs, tmp_path):
    """A rejected run's event creates the use case's folder (its audit log): reconcile and gc
    asked `has_use_case` to catch a wrong registry, and a registry holding only rejections
    passed (reconcile would then unload the servers' pinned versions)."""
    from feinschliff.registry import has_use_case, register_adapter
    from tests.unit.adapter_factory import make_base, make_train_output, target_for

    root = open_root(registry)
    assert _record(registry, run_outputs, _rejected())
    assert audit_log(root, UC) and not has_use_case(root, UC)
    base = make_base(tmp_path / "base")
    out = make_train_output(tmp_path / "out", str(base), seed=1.0)
    register_adapter(root, UC, out, {}, target=target_for(base))
    assert has_use_case(root, UC)
