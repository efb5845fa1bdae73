"""`feinschliff registry history USE_CASE`: every version of a use case, oldest first, with what
it was trained on, the gate's verdict and metrics and where it went (production, rolled back,
superseded, rejected, retired); `--json`, `--plot`; on a local directory and on memory://;
clear exit-2 errors; versions of older writers (fields missing, manifest damaged) as dashes."""

from __future__ import annotations

import json
import uuid

import pytest

import feinschliff.cli.history_cmd  # noqa: F401  (registers `registry history`)
from feinschliff.registry import (
    open_root,
    promote,
    register_adapter,
    retire,
    rollback,
    set_alias,
    store_of,
)
from feinschliff.registry_history import gate_metrics, version_history
from tests.cli_helpers import run_cli
from tests.unit.adapter_factory import make_base, make_train_output, target_for

UC = "support-de"
PNG = b"\x89PNG\r\n\x1a\n"


def _decision(cand: float, passed: bool, *, awaiting: bool = False, approved: bool = False):
    rules = [
        {
            "rule": "no_regression",
            "metric": "acc",
            "value": cand,
            "threshold": 0.05,
            "passed": passed,
            "detail": f"{cand - 0.5:+.4f} vs base (0.5000), tolerance 0.05",
        },
        {
            "rule": "min_samples",
            "metric": "acc",
            "value": 60.0,
            "threshold": 50.0,
            "passed": True,
            "detail": "60 samples, need 50",
        },
    ]
    if awaiting or approved:
        rules.append(
            {
                "rule": "require_approval",
                "metric": "-",
                "value": None,
                "threshold": None,
                "passed": approved,
                "detail": "approved by ana: ok" if approved else "awaiting human approval",
            }
        )
    approval = {"approved": True, "by": "ana", "comment": "ok"} if approved else None
    return {
        "promote": passed and (approved or not awaiting),
        "results": rules,
        "needs_approval": awaiting or approved,
        "approval": approval,
    }


def _lineage(cand: float, prod: float | None, decision: dict, rows: int = 40) -> dict:
    """What the flow's lineage records (pipeline.lineage), trimmed to what history reads."""
    metrics = {"base": {"acc": {"value": 0.5}}, "candidate": {"acc": {"value": cand}}}
    if prod is not None:
        metrics["production"] = {"acc": {"value": prod}}
    return {
        "base_model": {"name": "smollm2-135m-instruct", "revision": None, "path": None},
        "dataset": {"counts": {"sft.jsonl": rows, "preference.jsonl": 7}},
        "train": {"method": "sft", "global_step": 30},
        "recipe_resolved": "train:\n  method: sft\n  init_from: base\n",
        "evaluation": {"metrics": metrics},
        "gate": decision,
    }


@pytest.fixture(params=["local", "memory"])
def root(request, tmp_path, monkeypatch):
    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))
    if request.param == "local":
        yield tmp_path / "reg"
        return
    url = f"memory://hist-{uuid.uuid4().hex[:8]}/registry"
    yield open_root(url)
    store_of(url).remove_tree("")


@pytest.fixture()
def weekly(tmp_path, root):
    """Five weekly runs: v1 promoted; v2 promoted, rolled back, retired; v3 rejected (the
    candidate); v4 registered by older code (no lineage at all); v5 awaiting approval when
    registered, approved and promoted later (the decision is in the audit log only)."""
    base = make_base(tmp_path / "base")

    def register(seed: float, lineage: dict) -> str:
        ref = make_train_output(tmp_path / f"out-{seed}", str(base), seed=seed)
        return register_adapter(root, UC, ref, lineage, target=target_for(base))

    d1 = _decision(0.6, True)
    v1 = register(1.0, _lineage(0.6, None, d1, rows=40))
    promote(root, UC, v1, why="gate passed", decision=d1)
    d2 = _decision(0.7, True)
    v2 = register(2.0, _lineage(0.7, 0.6, d2, rows=55))
    promote(root, UC, v2, why="gate passed", decision=d2)
    rollback(root, UC, why="complaints about v0002")
    retire(root, UC, v2, why="hallucinates prices")
    v3 = register(3.0, _lineage(0.4, 0.6, _decision(0.4, False), rows=61))
    set_alias(root, UC, "candidate", v3, why="registered via CLI")
    register(4.0, {})
    v5 = register(5.0, _lineage(0.65, 0.6, _decision(0.65, True, awaiting=True), rows=70))
    promote(root, UC, v5, why="approved", decision=_decision(0.65, True, approved=True))
    return root


def _root_arg(root) -> str:
    return root.url if hasattr(root, "url") else str(root)


def test_one_line_per_version_oldest_first_with_where_each_went(weekly):
    code, out = run_cli("registry", "history", UC, "--root", _root_arg(weekly))
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].split()[:8] == [
        "version",
        "registered",
        "method",
        "rows",
        "base",
        "model",
        "from",
        "gate",
    ]
    rows = {line.split()[0]: line for line in lines[1:6]}
    assert list(rows) == ["v0001", "v0002", "v0003", "v0004", "v0005"]
    assert "superseded,previous" in rows["v0001"] and " 40 " in rows["v0001"]
    assert "rolled back,retired" in rows["v0002"]
    assert " fail " in rows["v0003"] and "rejected,candidate" in rows["v0003"]
    # v0005 was registered awaiting approval; the approved decision in the audit log counts
    assert " pass " in rows["v0005"] and "production" in rows["v0005"]
    # candidate value, change vs base and vs the production it was compared with
    assert "0.4 (b-0.1 p-0.2)" in rows["v0003"]
    # older code recorded no lineage: dashes, no traceback (the registry itself records the
    # adapter's base model)
    assert rows["v0004"].split()[2:8] == ["-", "-", "base", "-", "-", "not"]
    assert "v0003 gate FAIL no_regression acc: -0.1000 vs base" in out


def test_json_one_object_per_version(weekly):
    code, out = run_cli("registry", "history", UC, "--root", _root_arg(weekly), "--json")
    assert code == 0, out
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["version"] for r in rows] == ["v0001", "v0002", "v0003", "v0004", "v0005"]
    v1, v2, v3, v4, v5 = rows
    assert v1["train_rows"] == 40 and v1["method"] == "sft" and v1["init_from"] == "base"
    assert v1["base_model"] == "smollm2-135m-instruct" and v1["gate"] == "pass"
    assert v2["state"] == "rolled back" and v2["retired"]["why"] == "hallucinates prices"
    assert v2["moved_off"]["new"] == "v0001" and v2["compared_with"] == "v0001"
    assert v2["metrics"]["acc"] == {"candidate": 0.7, "base": 0.5, "production": 0.6}
    assert v3["state"] == "rejected" and v3["aliases"] == ["candidate"]
    assert [r["passed"] for r in v3["rules"]] == [False, True]
    assert v4["gate"] is None and v4["train_rows"] is None and v4["metrics"] == {}
    assert v5["gate"] == "pass" and v5["decision_from"] == "audit"
    assert v5["compared_with"] == "v0001" and v5["aliases"] == ["production"]


def test_plot_marks_each_version(weekly, tmp_path):
    from typer.testing import CliRunner

    from feinschliff.cli import app

    out = tmp_path / "history.png"
    args = ["registry", "history", UC, "--root", _root_arg(weekly), "--json", "--plot", str(out)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert out.read_bytes().startswith(PNG)
    assert len([json.loads(line) for line in res.stdout.splitlines()]) == 5  # stdout stays JSON
    assert f"plot: {out}" in res.stderr


def _snapshot(root) -> dict:
    if hasattr(root, "url"):
        st = store_of(root)
        return {rel: st.read_bytes(rel) for rel in st.files("")}
    return {p.relative_to(root).as_posix(): p.is_dir() or p.read_bytes() for p in root.rglob("*")}


def test_reading_history_changes_nothing(weekly):
    before = _snapshot(weekly)
    assert run_cli("registry", "history", UC, "--root", _root_arg(weekly))[0] == 0
    assert _snapshot(weekly) == before


def test_metric_selects_columns_and_an_unknown_one_names_the_recorded(weekly):
    args = ["registry", "history", UC, "--root", _root_arg(weekly)]
    code, out = run_cli(*args, "--metric", "acc", "--metric", "acc")
    assert code == 0 and out.splitlines()[0].split()[-1] == "acc"
    code, out = run_cli(*args, "--metric", "acc_norm")
    assert code == 2
    assert "--metric acc_norm: no version of 'support-de' recorded it (recorded: acc)" in out


def test_unknown_use_case_names_those_there_are(weekly):
    code, out = run_cli("registry", "history", "support-dx", "--root", _root_arg(weekly))
    assert code == 2
    assert "no use case 'support-dx'" in out and f"it has {UC}" in out
    code, out = run_cli("registry", "history", "Support_DE", "--root", _root_arg(weekly))
    assert code == 2 and "invalid use case name 'Support_DE'" in out


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("plot.txt", ".txt is no image type"),
        ("missing/plot.png", "folder"),
        ("afile/plot.png", "is not a folder"),
        (".", "is a folder"),
    ],
)
def test_a_plot_path_that_cannot_be_written_is_an_argument_error(weekly, tmp_path, name, expected):
    (tmp_path / "afile").write_text("x")
    target = tmp_path / name
    code, out = run_cli(
        "registry", "history", UC, "--root", _root_arg(weekly), "--plot", str(target)
    )
    assert code == 2, out
    assert expected in out and "Traceback" not in out


def test_a_refused_plot_write_is_one_line(weekly, tmp_path):
    """/proc refuses new files even to root (where access(2) says yes)."""
    code, out = run_cli(
        "registry", "history", UC, "--root", _root_arg(weekly), "--plot", "/proc/h.png"
    )
    assert code == 2, out
    assert "--plot /proc/h.png: cannot write it" in out


def test_damaged_and_foreign_manifests_show_as_dashes(tmp_path, monkeypatch):
    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))
    base = make_base(tmp_path / "base")
    reg = tmp_path / "reg"
    for seed in (1.0, 2.0, 3.0):
        ref = make_train_output(tmp_path / f"o{seed}", str(base), seed=seed)
        register_adapter(reg, UC, ref, {}, target=target_for(base))
    (reg / UC / "v0001" / "manifest.json").write_text("{torn")
    (reg / UC / "v0002" / "manifest.json").write_text('["not", "an", "object"]')
    m3 = json.loads((reg / UC / "v0003" / "manifest.json").read_text())
    m3.update(  # odd types where numbers and objects belong
        train={"method": 7, "train_rows": True},
        evaluation={"metrics": {"candidate": {"acc": "n/a", "f1": 0.3}}},
        gate={"promote": None, "results": "none"},
        created_at=None,
    )
    (reg / UC / "v0003" / "manifest.json").write_text(json.dumps(m3))
    code, out = run_cli("registry", "history", UC, "--root", str(reg))
    assert code == 0, out
    assert "v0001: manifest.json unreadable" in out
    assert "v0002: manifest.json missing or not an object" in out
    v3 = next(line for line in out.splitlines() if line.startswith("v0003"))
    assert v3.split()[1:4] == ["-", "-", "-"] and v3.split()[-1] == "0.3"


def test_a_use_case_without_versions_says_so(tmp_path):
    from typer.testing import CliRunner

    from feinschliff.cli import app

    (tmp_path / "reg" / UC).mkdir(parents=True)
    code, out = run_cli("registry", "history", UC, "--root", str(tmp_path / "reg"))
    assert code == 0 and f"no versions of {UC}" in out
    res = CliRunner().invoke(
        app, ["registry", "history", UC, "--root", str(tmp_path / "reg"), "--json"]
    )
    assert res.exit_code == 0 and res.stdout == "" and f"no versions of {UC}" in res.stderr


def test_gate_metrics_default_to_the_rules_and_skip_the_approval_rule(weekly):
    records = version_history(weekly, UC)
    assert gate_metrics(records) == ["acc"]
    assert "-" not in records[-1].metrics


def test_plot_history_draws_gaps_and_panels_without_values(tmp_path):
    from feinschliff.plots import plot_history

    out = tmp_path / "p.png"
    series = {
        "acc": {"candidate": [0.5, None, 0.7], "base": [0.4, 0.4, None], "production": []},
        "empty": {"candidate": [None, None, None]},
    }
    plot_history(
        ["v0001", "v0002", "v0003"],
        series,
        ["pass", None, "fail"],
        "v0001",
        out,
        title="t",
        notes=["", "rolled back", ""],
    )
    assert out.read_bytes().startswith(PNG)


def test_the_production_an_evaluation_compared_with_comes_from_its_own_record(tmp_path, root):
    """The flow's lineage records which production the evaluation compared with (its adapter
    hash, ``evaluation.models``: the hash evaluate got from ``version_adapter``, the version
    folder's marker, not the manifest's adapter hash); history names that version also for a
    rejected candidate, which the audit log records no production move for."""
    from feinschliff.registry import version_adapter

    base = make_base(tmp_path / "base")
    refs = [make_train_output(tmp_path / f"o{i}", str(base), seed=float(i)) for i in (1, 2)]
    v1 = register_adapter(
        root, UC, refs[0], _lineage(0.6, None, _decision(0.6, True)), target=target_for(base)
    )
    promote(root, UC, v1, why="gate passed", decision=_decision(0.6, True))
    rejected = _lineage(0.4, 0.6, _decision(0.4, False))
    production_sha = version_adapter(root, UC, v1).sha256  # what evaluate records
    rejected["evaluation"]["models"] = {"production": {"adapter_sha256": production_sha}}
    v2 = register_adapter(root, UC, refs[1], rejected, target=target_for(base))
    record = {r.version: r for r in version_history(root, UC)}[v2]
    assert record.compared_with == v1 and record.state == "rejected"


def test_a_rejected_run_after_the_versions_comes_last_without_a_version(weekly):
    """A flow run the gate rejected registered nothing: its audit event is a row of its own,
    and a metric only it recorded is a known --metric."""
    from feinschliff.registry_write import record_event_once

    decision = _decision(0.3, False)
    evaluation = {"metrics": {"candidate": {"acc": {"value": 0.3}, "f1": {"value": 0.2}}}}
    args = {"decision": decision, "evaluation": evaluation, "adapter_sha256": "ef" * 32}
    assert record_event_once(weekly, UC, "rejected", "k1", **args, workdir="/w", why="gate")
    assert not record_event_once(weekly, UC, "rejected", "k1", **args)  # keyed: once
    code, out = run_cli("registry", "history", UC, "--root", _root_arg(weekly), "--json")
    assert code == 0, out
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["version"] for r in rows][-2:] == ["v0005", None]
    assert rows[-1]["state"] == "rejected" and rows[-1]["metrics"]["acc"]["candidate"] == 0.3
    code, out = run_cli("registry", "history", UC, "--root", _root_arg(weekly), "--metric", "f1")
    assert code == 0 and out.splitlines()[6].split()[0] == "-" and "0.2" in out.splitlines()[6]


ODD = {
    "aliases torn": ("aliases.json", b'{"production": "v00'),
    "aliases a list": ("aliases.json", b'["v0001"]'),
    "retired a list": ("retired.json", b'["v0002"]'),
    "audit lines no objects": ("audit.jsonl", None),
}


@pytest.mark.parametrize("root", ["local"], indirect=True)  # the damage is written as files
@pytest.mark.parametrize("case", list(ODD))
def test_damaged_registry_files_show_what_can_be_read(weekly, case):
    """A torn or hand-edited aliases.json / retired.json / audit line (registries live for
    years) was a traceback; history shows the versions it can read, `registry audit` the
    entries it can read."""
    name, data = ODD[case]
    path = weekly / UC / name
    path.write_bytes(path.read_bytes() + b'[]\n"x"\n' if data is None else data)
    code, out = run_cli("registry", "history", UC, "--root", _root_arg(weekly))
    assert code == 0, out
    assert "v0001" in out and "v0005" in out
    if name == "audit.jsonl":
        code, out = run_cli("registry", "audit", UC, "--root", _root_arg(weekly))
        assert code == 0 and "v0005" in out, out


def test_the_previous_alias_counts_as_once_production(tmp_path):
    """An older registry's audit log may not hold the move, but `previous` names the version
    production was before: superseded, not "not promoted"."""
    import json

    base = make_base(tmp_path / "base")
    root = tmp_path / "reg"
    for seed in (1.0, 2.0):
        out = make_train_output(tmp_path / f"o{seed}", str(base), seed=seed)
        register_adapter(root, UC, out, {}, target=target_for(base))
    (root / UC / "aliases.json").write_text(
        json.dumps({"production": "v0002", "previous": "v0001"})
    )
    states = {r.version: r.state for r in version_history(root, UC)}
    assert states == {"v0001": "superseded", "v0002": "production"}
