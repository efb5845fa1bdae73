"""A use case's versions over time: what each was trained on, what the gate said, where it went.

One :class:`VersionRecord` per registered version, oldest first, from what the registry
records (manifests, aliases, retired.json, the audit log); nothing is written and no lock is
taken, as for `registry show`/`audit`. Registries live for years: a field an older writer did
not record is None (shown as a dash), never an error.

What is recorded and where:

- the manifest: created_at/created_by, ``train`` (the flow keeps method and a few counters;
  `feinschliff register` the whole metrics.json, with train_rows and init_from), ``dataset``
  (the flow only: row counts per file), ``base_model``, ``evaluation.metrics`` (role -> metric
  -> entry, the evaluate report's table) and ``gate`` (the decision with its per-rule values);
- the audit log: every later gate decision about a version (a re-evaluated candidate, a
  human's approval) and every move of production, which tells promoted from rolled back.

The gate verdict shown is the latest decision recorded about the version (the audit log's, else
the manifest's): a version registered as awaiting approval and promoted after a human approved
it shows as passed. Its metric values are the registration-time evaluation's.
"""

from __future__ import annotations

import logging
from typing import Any

import yaml
from pydantic import BaseModel

from feinschliff.gate import metric_value
from feinschliff.registry_read import audit_log, manifest, read_aliases, retired, versions
from feinschliff.registry_store import RegistryError, Root

log = logging.getLogger(__name__)

ROLES = ("candidate", "base", "production")
# the dataset file each method trains on (ingest's and mix's outputs)
METHOD_FILE = {
    "sft": "sft.jsonl",
    "dpo": "preference.jsonl",
    "orpo": "preference.jsonl",
    "kto": "kto.jsonl",
}
# rules whose value is not the metric's value (min_samples: a sample count)
NOT_A_METRIC_VALUE = {"min_samples"}


class MetricPoint(BaseModel):
    """One metric of one version: the candidate's value and what it was compared with."""

    candidate: float | None = None
    base: float | None = None
    production: float | None = None


class VersionRecord(BaseModel):
    """One registered version as the registry recorded it (None: not recorded)."""

    version: str
    registered_at: str | None = None
    registered_by: str | None = None
    method: str | None = None
    train_rows: int | None = None
    base_model: str | None = None
    init_from: str | None = None
    gate: str | None = None  # "pass", "fail", "awaiting approval"; None: no decision recorded
    decision_from: str | None = None  # "manifest" or "audit"
    compared_with: str | None = None  # the production version the gate compared it with
    rules: list[dict[str, Any]] = []
    metrics: dict[str, MetricPoint] = {}
    state: str = "not promoted"
    aliases: list[str] = []
    retired: dict[str, Any] | None = None
    moved_off: dict[str, Any] | None = None  # the audit entry that took production off it
    problem: str | None = None  # why the manifest could not be read


def version_history(root: Root, use_case: str) -> list[VersionRecord]:
    """Every complete version of ``use_case``, oldest first (read only, no lock)."""
    aliases = read_aliases(root, use_case)
    gone = retired(root, use_case)
    entries = audit_log(root, use_case)
    records, evaluated_against, by_adapter = [], {}, {}
    for v in versions(root, use_case):
        try:
            m = manifest(root, use_case, v)
            problem = None if isinstance(m, dict) else "manifest.json missing or not an object"
        except (ValueError, RegistryError) as exc:  # a damaged manifest hides no other version
            m, problem = None, f"manifest.json unreadable ({exc})"
        if problem:
            log.warning("%s/%s: %s", use_case, v, problem)
        m = m if isinstance(m, dict) else {}
        record = _from_manifest(v, m)
        record.problem = problem
        if isinstance(sha := m.get("adapter_sha256"), str):
            by_adapter[sha] = v
        evaluated_against[v] = _production_sha(m)
        _add_audit(record, entries)
        record.aliases = [a for a, target in aliases.items() if target == v]
        record.retired = _dict(gone[v]) if v in gone else None
        record.state = _state(record, aliases.get("production"), entries)
        records.append(record)
    for record in records:  # the evaluation's own record of its production beats the audit's
        if (compared := by_adapter.get(evaluated_against[record.version])) is not None:
            record.compared_with = compared
    return records


def _production_sha(m: dict[str, Any]) -> str | None:
    """The adapter hash of the production the evaluation compared with (lineage of the flow
    since session 18: ``evaluation.models``); None where not recorded."""
    models = _dict(_dict(m.get("evaluation")).get("models"))
    return _text(_dict(models.get("production")).get("adapter_sha256"))


def recorded_metrics(records: list[VersionRecord]) -> list[str]:
    """Every metric some version recorded a value or a gate rule for, sorted."""
    return sorted({name for r in records for name in r.metrics})


def gate_metrics(records: list[VersionRecord]) -> list[str]:
    """The metrics the gate's rules judged, in order of first appearance; without any gate
    decision, every recorded metric."""
    names = [
        rule["metric"]
        for r in records
        for rule in r.rules
        if isinstance(rule.get("metric"), str) and rule["metric"] in r.metrics
    ]
    return list(dict.fromkeys(names)) or recorded_metrics(records)


def history_rows(records: list[VersionRecord], metrics: list[str]) -> list[dict[str, Any]]:
    """One JSON-ready object per version (``--json``), metrics limited to ``metrics``."""
    rows = []
    for r in records:
        row = r.model_dump(exclude={"metrics"})
        row["metrics"] = {m: r.metrics[m].model_dump() for m in metrics if m in r.metrics}
        rows.append(row)
    return rows


def history_table(records: list[VersionRecord], metrics: list[str]) -> list[str]:
    """The table `registry history` prints: one line per version, then the failed rules."""
    head = ["version", "registered", "method", "rows", "base model", "from", "gate", "status"]
    table = [head + metrics]
    for r in records:
        status = ",".join([r.state, *(a for a in r.aliases if a != "production")])
        cells = [
            r.version,
            r.registered_at or "-",
            r.method or "-",
            "-" if r.train_rows is None else str(r.train_rows),
            _short(r.base_model),
            _short(r.init_from),
            r.gate or "-",
            status + (",retired" if r.retired is not None else ""),
        ]
        table.append(cells + [_metric_cell(r.metrics.get(m)) for m in metrics])
    widths = [max(len(row[i]) for row in table) for i in range(len(head) + len(metrics))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table
    ]
    if metrics:
        lines.append(
            "metric cells: candidate value (b: change vs base, p: vs the production it was "
            "evaluated against); - not recorded"
        )
    for r in records:
        for rule in r.rules:
            if rule.get("passed") is False:
                lines.append(
                    f"{r.version} gate FAIL {rule.get('rule', '-')} {rule.get('metric', '-')}: "
                    f"{rule.get('detail', '')}".rstrip()
                )
        if r.problem:
            lines.append(f"{r.version}: {r.problem}")
    return lines


def plot_series(records: list[VersionRecord], metric: str) -> dict[str, list[float | None]]:
    """``{role: [value per version]}`` of one metric, for :func:`feinschliff.plots.plot_history`."""
    points = [r.metrics.get(metric) or MetricPoint() for r in records]
    return {role: [getattr(p, role) for p in points] for role in ROLES}


# ---- reading one version


def _from_manifest(version: str, m: dict[str, Any]) -> VersionRecord:
    train, dataset = _dict(m.get("train")), _dict(m.get("dataset"))
    method = _text(train.get("method"))
    base = _dict(m.get("base_model")).get("name") or _dict(m.get("adapter")).get(
        "base_model_name_or_path"
    )
    record = VersionRecord(
        version=version,
        registered_at=_text(m.get("created_at")),
        registered_by=_text(m.get("created_by")),
        method=method,
        train_rows=_train_rows(train, dataset, method),
        base_model=_text(base),
        init_from=_text(train.get("init_from")) or _recipe_init_from(m.get("recipe_resolved")),
    )
    gate = _dict(m.get("gate"))
    if gate:
        _set_decision(record, gate, "manifest")
    record.metrics = _metrics(_dict(_dict(m.get("evaluation")).get("metrics")), record.rules)
    return record


def _train_rows(train: dict[str, Any], dataset: dict[str, Any], method: str | None) -> int | None:
    """Rows the adapter was trained on: as training counted them, else the dataset's file for
    its method (a mix records feedback, synthetic and mixed counts: the mixed)."""
    rows = train.get("train_rows")
    if rows is None and method in METHOD_FILE:
        rows = _dict(dataset.get("counts")).get(METHOD_FILE[method])
        if isinstance(rows, dict):
            rows = rows.get("mixed")
    return rows if isinstance(rows, int) and not isinstance(rows, bool) else None


def _recipe_init_from(resolved: Any) -> str | None:
    """``base`` when the recorded recipe trained from the base model; a warm start's source
    version is only known when training recorded it (``train.init_from``)."""
    if not isinstance(resolved, str):
        return None
    try:
        recipe = yaml.safe_load(resolved)
    except yaml.YAMLError:
        return None
    value = _dict(_dict(recipe).get("train")).get("init_from")
    return "base" if value == "base" else None


def _metrics(evaluation: dict[str, Any], rules: list[dict[str, Any]]) -> dict[str, MetricPoint]:
    """Metric -> values per role from the evaluation's table; a gate rule's value stands in
    for the candidate's where the manifest holds no evaluation (older `register` runs)."""
    out: dict[str, MetricPoint] = {}
    for role in ROLES:
        for name, entry in _dict(evaluation.get(role)).items():
            value = metric_value(entry.get("value") if isinstance(entry, dict) else entry)
            setattr(out.setdefault(str(name), MetricPoint()), role, value)
    _fill_from_rules(out, rules)
    return out


def _fill_from_rules(metrics: dict[str, MetricPoint], rules: list[dict[str, Any]]) -> None:
    """A rule's value as the candidate's where no evaluation recorded it."""
    for rule in rules:
        name = rule.get("metric")
        if not isinstance(name, str) or name == "-" or rule.get("rule") in NOT_A_METRIC_VALUE:
            continue  # require_approval judges no metric; min_samples' value is a count
        point = metrics.setdefault(name, MetricPoint())
        if point.candidate is None:
            point.candidate = metric_value(rule.get("value"))


def _set_decision(record: VersionRecord, decision: dict[str, Any], source: str) -> None:
    if decision.get("promote") is True:
        record.gate = "pass"
    elif decision.get("needs_approval") and not decision.get("approval"):
        record.gate = "awaiting approval"
    elif decision.get("promote") is False:
        record.gate = "fail"
    results = decision.get("results")
    record.rules = [r for r in results if isinstance(r, dict)] if isinstance(results, list) else []
    record.decision_from = source


def _add_audit(record: VersionRecord, entries: list[dict[str, Any]]) -> None:
    """The latest gate decision the audit log holds about the version, and the production it
    was compared with (the one the gate's move replaced)."""
    for entry in entries:
        if entry.get("event") != "gate" or entry.get("new") != record.version:
            continue
        decision = _dict(entry.get("decision"))
        if decision:
            _set_decision(record, decision, "audit")
            _fill_from_rules(record.metrics, record.rules)  # values the evaluation lacks
        old = entry.get("old")
        if entry.get("alias") == "production" and old != record.version:
            record.compared_with = _text(old)


def _state(record: VersionRecord, production: str | None, entries: list[dict[str, Any]]) -> str:
    """production; rolled back (production moved off it to an older version) or superseded
    (to a newer one, or unset); else what the gate said of a version never in production."""
    if production == record.version:
        return "production"
    was_production = False
    for entry in entries:
        if entry.get("event") != "alias" or entry.get("alias") != "production":
            continue
        if entry.get("new") == record.version:
            was_production = True
        elif entry.get("old") == record.version and was_production:
            record.moved_off = {k: entry.get(k) for k in ("at", "by", "new", "why")}
    if was_production:
        to = record.moved_off.get("new") if record.moved_off else None
        older = isinstance(to, str) and _number(to) < _number(record.version)
        return "rolled back" if older else "superseded"
    return {"fail": "rejected", "awaiting approval": "awaiting approval"}.get(
        record.gate or "", "not promoted"
    )


# ---- small helpers


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _number(version: str) -> int:
    digits = version[1:]
    return int(digits) if digits.isdigit() else 0


def _short(text: str | None, width: int = 28) -> str:
    """A base model path as its last component, capped (the full one is in --json)."""
    if not text:
        return "-"
    if text.startswith(("/", ".", "~")):  # a local path; a hub id keeps its organisation
        text = text.rstrip("/").rsplit("/", 1)[-1]
    return text if len(text) <= width else "…" + text[-(width - 1) :]


def _num(value: float) -> str:
    return f"{value:.4g}"


def _metric_cell(point: MetricPoint | None) -> str:
    if point is None or point.candidate is None:
        return "-"
    cell = _num(point.candidate)
    deltas = [
        f"{tag}{point.candidate - other:+.4g}"
        for tag, other in (("b", point.base), ("p", point.production))
        if other is not None
    ]
    return f"{cell} ({' '.join(deltas)})" if deltas else cell
