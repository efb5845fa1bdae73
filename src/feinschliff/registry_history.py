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

A flow run the gate rejected registers nothing; it appends a ``rejected`` event to the audit
log instead (:func:`feinschliff.rejections.record_rejection`), which :func:`use_case_history`
places among the versions by time, as a record without a version.
"""

from __future__ import annotations

import logging
from typing import Any

import yaml
from pydantic import BaseModel

from feinschliff.gate import metric_value
from feinschliff.registry_read import (
    audit_log,
    manifest,
    marker_sha256,
    read_aliases,
    retired,
    versions,
)
from feinschliff.registry_store import RegistryError, Root

log = logging.getLogger(__name__)

ROLES = ("candidate", "base", "production")
REJECTED = "rejected"  # the audit event of a rejected flow run (rejections.record_rejection)
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
    """One registered version as the registry recorded it (None: not recorded), or a flow run
    the gate rejected (``version`` None, ``run`` set: it registered nothing)."""

    version: str | None
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
    adapter_sha256: str | None = None
    # a rejected run: at, by, workdir, run (its flow-run id), candidate, dataset, why
    run: dict[str, Any] | None = None

    @property
    def at(self) -> str | None:
        """When it was registered, or when the run was rejected."""
        return self.run.get("at") if self.run is not None else self.registered_at


def version_history(root: Root, use_case: str) -> list[VersionRecord]:
    """Every complete version of ``use_case``, oldest first (read only, no lock)."""
    return _read_versions(root, use_case, audit_log(root, use_case), {})


def _read_versions(
    root: Root, use_case: str, entries: list[dict[str, Any]], by_adapter: dict[str, str]
) -> list[VersionRecord]:
    """The versions; fills ``by_adapter`` (adapter or marker hash -> version), read once for
    the versions and the rejected runs (each read is a request on an object store)."""
    aliases, gone = _object(read_aliases, root, use_case), _object(retired, root, use_case)
    records, evaluated_against = [], {}
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
        # evaluate records the production it compared with by the version folder's marker
        # hash (``version_adapter``); the manifest's adapter hash names the same version
        for sha in (marker_sha256(root, use_case, v), m.get("adapter_sha256")):
            if isinstance(sha, str):
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


def use_case_history(root: Root, use_case: str) -> list[VersionRecord]:
    """The versions (:func:`version_history`) and, among them by time, the flow runs the gate
    rejected (the audit log's ``rejected`` events; nothing was registered for them)."""
    entries, known = audit_log(root, use_case), {}
    records = _read_versions(root, use_case, entries, known)
    runs = rejected_runs(entries, known)
    merged: list[VersionRecord] = []
    for record in records:  # a version without a time keeps its place after the one before
        while runs and record.at is not None and (runs[0].at or "") < record.at:
            merged.append(runs.pop(0))
        merged.append(record)
    return merged + runs


def rejected_runs(entries: list[dict[str, Any]], known: dict[str, str]) -> list[VersionRecord]:
    """One record per ``rejected`` event, in log order (append-only: oldest first). ``known``:
    adapter hash -> version, to name the production a run was compared with where the event
    does not."""
    out, seen = [], set()
    for e in entries:
        key = e.get("key")
        if e.get("event") != REJECTED or (key is not None and key in seen):
            continue
        seen.add(key)
        train, dataset = _dict(e.get("train")), _dict(e.get("dataset"))
        method = _text(train.get("method"))
        record = VersionRecord(
            version=None,
            method=method,
            train_rows=_train_rows(train, dataset, method),
            base_model=_text(train.get("base_model")),
            init_from=_text(train.get("init_from")),
            compared_with=_text(e.get("compared_with")),
            adapter_sha256=_text(e.get("adapter_sha256")),
            state="rejected",
            run={k: e.get(k) for k in ("at", "by", "workdir", "run", "candidate", "why")}
            | {"dataset": {k: dataset.get(k) for k in ("sha256", "rows_sha256", "counts")}},
        )
        _set_decision(record, _dict(e.get("decision")), "audit")
        evaluation = _dict(e.get("evaluation"))
        record.metrics = _metrics(_dict(evaluation.get("metrics")), record.rules)
        if record.compared_with is None:
            sha = _text(
                _dict(_dict(evaluation.get("models")).get("production")).get("adapter_sha256")
            )
            record.compared_with = known.get(sha or "")
        out.append(record)
    return out


def _object(read: Any, root: Root, use_case: str) -> dict[str, Any]:
    """aliases.json / retired.json, or {} (with a warning) where damaged or not an object: a
    history shows what it can read."""
    try:
        found = read(root, use_case)
    except ValueError as exc:
        log.warning("%s: %s unreadable (%s)", use_case, read.__name__, exc)
        return {}
    return found if isinstance(found, dict) else {}


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
        adapter_sha256=_text(m.get("adapter_sha256")),
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
    # `previous` is where production was: proof enough where the audit log predates it
    was_production = was_production or "previous" in record.aliases
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
