"""Property tests over malformed input: never a traceback, every valid record kept.

Valid records are the real samples; junk is arbitrary JSON (never shaped like a record) or
random damage to a real record. Every input row must come out exactly once, either as a record
or as a quarantine entry with a reason.
"""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feinschliff.ingest.detect import open_export
from feinschliff.ingest.records import FeedbackRecord, ReadLog
from feinschliff.ingest.scratch import Scratch
from feinschliff.specs.feedback import DerivationRules

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "data" / "samples"
ARGILLA_RECORDS = json.loads((SAMPLES / "argilla/feedback-de/records.json").read_text())
FLAT_LINES = (SAMPLES / "argilla/feedback-de-flat.jsonl").read_text().splitlines()
OBS = json.loads((SAMPLES / "langfuse/observations-page-1.json").read_text())["data"]
SCORES = [
    s
    for p in sorted((SAMPLES / "langfuse").glob("scores-page-*.json"))
    for s in json.loads(p.read_text())["data"]
]
COMMON = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
# junk never carries the keys that make a row a record of some kind
junk = json_values.filter(
    lambda v: (
        not (
            isinstance(v, dict)
            and {"fields", "traceId", "dataType", "observations", "datasetId", "id"} & set(v)
        )
    )
)


def read(kind: str, path: Path) -> tuple[list, list, ReadLog]:
    log = ReadLog()
    with Scratch() as scratch:
        items = list(open_export(kind, path, log, DerivationRules(), scratch).items)
    records = [i for i in items if isinstance(i, FeedbackRecord)]
    return records, [i for i in items if not isinstance(i, FeedbackRecord)], log


def _mix(valid: list, bad: list, data) -> list:
    rows = [("ok", v) for v in valid] + [("bad", b) for b in bad]
    return data.draw(st.permutations(rows))


@COMMON
@given(bad=st.lists(junk, max_size=6), data=st.data())
def test_argilla_to_disk_keeps_every_valid_record(tmp_path_factory, bad, data):
    folder = tmp_path_factory.mktemp("argilla")
    (folder / ".argilla").mkdir()
    settings_file = SAMPLES / "argilla/feedback-de/.argilla/settings.json"
    (folder / ".argilla/settings.json").write_text(settings_file.read_text())
    valid = data.draw(
        st.lists(
            st.sampled_from(ARGILLA_RECORDS), min_size=1, max_size=5, unique_by=lambda r: r["id"]
        )
    )
    rows = _mix(valid, bad, data)
    (folder / "records.json").write_text(json.dumps([r for _, r in rows]))
    records, quarantined, _ = read("argilla", folder)
    assert sorted(r.source_id for r in records) == sorted(v["id"] for v in valid)
    assert len(quarantined) == len(bad) and all(q.reason for q in quarantined)


@COMMON
@given(
    garbage=st.lists(st.text(max_size=30) | json_values.map(json.dumps), max_size=6), data=st.data()
)
def test_argilla_flat_jsonl_keeps_every_valid_line(tmp_path_factory, garbage, data):
    path = tmp_path_factory.mktemp("flat") / "flat.jsonl"
    valid = data.draw(
        st.lists(st.sampled_from(FLAT_LINES), min_size=1, max_size=5, unique_by=lambda s: s)
    )
    lines = _mix(valid, [g.replace("\n", " ") for g in garbage if g.strip()], data)
    path.write_text("\n".join(line for _, line in lines) + "\n")
    records, quarantined, _ = read("argilla", path)
    expected = sorted(json.loads(v)["id"] for v in valid)
    assert sorted(r.source_id for r in records) == expected
    assert len(records) + len(quarantined) == len(lines)


@COMMON
@given(
    bad=st.lists(junk, max_size=6),
    damage=st.lists(
        st.tuples(st.sampled_from(["input", "output", "type", "startTime"]), json_values),
        max_size=3,
    ),
    data=st.data(),
)
def test_langfuse_pages_keep_every_valid_generation(tmp_path_factory, bad, damage, data):
    folder = tmp_path_factory.mktemp("lf")
    valid = data.draw(
        st.lists(st.sampled_from(OBS), min_size=1, max_size=6, unique_by=lambda o: o["id"])
    )
    damaged = []
    for i, (key, value) in enumerate(damage):
        row = dict(OBS[-(i + 1)], id=f"damaged-{i}", **{key: value})
        damaged.append(row)
    rows = _mix(valid + damaged, bad, data)
    (folder / "obs.json").write_text(json.dumps({"data": [r for _, r in rows], "meta": {}}))
    targets = {o["id"] for o in valid} | {o["id"] for o in damaged}
    scores = [s for s in SCORES if s["subject"].get("id") in {o["id"] for o in valid}]
    scores += [
        dict(SCORES[0], id=f"s-{o['id']}", subject={"kind": "observation", "id": o["id"]})
        for o in damaged
    ]
    (folder / "scores.json").write_text(json.dumps({"data": scores, "meta": {}}))
    records, quarantined, log = read("langfuse", folder)
    with_feedback = {
        o["id"]
        for o in valid
        if any(
            s["subject"].get("id") == o["id"] and s["dataType"] in ("BOOLEAN", "CORRECTION")
            for s in SCORES
        )
    }
    got = {r.source_id for r in records}
    assert with_feedback <= got <= targets
    accounted = len(records) + len(quarantined) + log.stats["langfuse_generation_without_feedback"]
    accounted += log.stats["langfuse_not_a_generation"]
    # valid inputs this stage does not train on: counted drops
    accounted += log.stats["langfuse_input_with_other_texts"]
    accounted += log.stats["langfuse_tool_call_conversation"]
    assert accounted >= len(valid) + len(damaged) + len(bad)
    assert all(q.reason for q in quarantined)
