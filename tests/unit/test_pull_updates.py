"""Live Langfuse pulls over months of scheduled runs: rows that change after they were pulled
(an edited score, a thumbs-down turned up, a generation's output written later), scores
backfilled with a past ``timestamp``, and the overlap every pull re-reads.

The remote Langfuse server is replaced by a local one replaying real-format pages (the
``FakeLangfuse`` of ``test_ingest_live``: v2 observation and v3 score pages from the langfuse
5.0.4 SDK, cursor paging, the ``fromStartTime`` / ``fromTimestamp`` filters); the tests change
its tables between pulls as a real project changes.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from feinschliff.ingest import run_ingest
from tests.unit.test_ingest_live import PUBLIC, SECRET, pull_spec, serving, use_keys


@pytest.fixture()
def lf(home, monkeypatch):
    with serving() as srv:
        use_keys(monkeypatch, srv, PUBLIC, SECRET)
        yield srv


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _mirror_rows(home: Path, kind: str) -> list[dict]:
    pages = (home / "ingest" / "mirror").glob(f"*/*/{kind}-page-*.json")
    return [r for p in pages for r in json.loads(p.read_text())["data"]]


def _watermark_file(home: Path) -> Path:
    (mark,) = (home / "ingest" / "watermarks").glob("*.json")
    return mark


def _a_day_later(home: Path) -> None:
    """The next pull is the first of a new day (its scores re-read the rescan window)."""
    mark = _watermark_file(home)
    data = json.loads(mark.read_text())
    data["scores_rescanned"] = _iso(datetime.now(UTC) - timedelta(days=2))
    mark.write_text(json.dumps(data))


def _kto(out: Path) -> dict[str, bool]:
    rows = [json.loads(line) for line in (out / "kto.jsonl").read_text().splitlines()]
    return {r["provenance"]["observation_id"]: r["label"] for r in rows}


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def _thumbs_down_within(lf, days: int) -> dict:
    """A thumbs-down scored a few days before the newest score (far outside the lookback)."""
    newest = max(_time(s["timestamp"]) for s in lf.tables["scores"])
    return next(
        s
        for s in lf.tables["scores"]
        if s["dataType"] == "BOOLEAN"
        and s["value"] is False
        and timedelta(days=1) < newest - _time(s["timestamp"]) < timedelta(days=days)
    )


def test_an_edited_thumbs_down_turned_up_replaces_its_older_copy(lf, home, tmp_path):
    """Langfuse updates a score in place (same id, new value, later ``updatedAt``, the same
    ``timestamp``), and the scores API filters only by ``timestamp``: the edit was never
    fetched, and the dataset kept the thumbs-down for good. The daily rescan fetches it; the
    mirror then holds the newest version only, and the manifest says a score changed."""
    run_ingest(pull_spec(), tmp_path / "first")
    score = _thumbs_down_within(lf, days=6)
    generation = score["subject"]["id"]
    assert _kto(tmp_path / "first")[generation] is False
    score.update(value=True, updatedAt=_iso(datetime.now(UTC)), comment="doch hilfreich")

    _a_day_later(home)
    lf.requests.clear()
    run_ingest(pull_spec(), tmp_path / "second")

    asked = next(q for p, q in lf.requests if p.endswith("scores") and "cursor" not in q)
    assert _time(asked["fromTimestamp"]) < _time(score["timestamp"])
    assert _kto(tmp_path / "second")[generation] is True
    copies = [s for s in _mirror_rows(home, "scores") if s["id"] == score["id"]]
    assert [c["value"] for c in copies] == [True]  # one copy: the edit, not doubled
    notes = _manifest(tmp_path / "second")["notes"]
    assert any("1 scores had changed in Langfuse" in n for n in notes), notes
    third = run_ingest(pull_spec(), tmp_path / "third")  # the same day: the lookback only
    assert _kto(third.dir)[generation] is True
    assert not any("changed in Langfuse" in n for n in _manifest(third.dir)["notes"])


def test_a_score_backfilled_with_a_past_timestamp_is_found_by_the_rescan(lf, home, tmp_path):
    """An eval job that scores old generations writes scores whose ``timestamp`` lies before
    the watermark (``createdAt`` now): they were never pulled."""
    run_ingest(pull_spec(), tmp_path / "first")
    old = _thumbs_down_within(lf, days=6)
    scored = {v for s in lf.tables["scores"] for v in (s.get("subject") or {}).values()}
    target = next(o for o in lf.tables["observations"] if not {o["id"], o["traceId"]} & scored)
    backfill = copy.deepcopy(old) | {
        "id": "backfill-1",
        "value": True,
        "createdAt": _iso(datetime.now(UTC)),
        "updatedAt": _iso(datetime.now(UTC)),
        "subject": {"kind": "observation", "id": target["id"], "traceId": target["traceId"]},
    }
    lf.tables["scores"].insert(0, backfill)
    _a_day_later(home)
    second = run_ingest(pull_spec(), tmp_path / "second")
    assert _kto(second.dir).get(target["id"]) is True


def _new_generation(template: dict, run: int, k: int, at: datetime) -> tuple[dict, dict]:
    obs = copy.deepcopy(template) | {"id": f"g{run}-{k}", "traceId": f"{run:016x}{k:016x}"}
    obs.update(startTime=_iso(at), updatedAt=_iso(at + timedelta(seconds=4)))
    obs["output"] = json.dumps({"role": "assistant", "content": f"Antwort {run}-{k}."})
    score = {
        "id": f"s{run}-{k}",
        "projectId": obs["projectId"],
        "name": "user-feedback",
        "dataType": "BOOLEAN",
        "value": k % 2 == 0,
        "source": "API",
        "timestamp": _iso(at + timedelta(seconds=30)),
        "createdAt": _iso(at + timedelta(seconds=31)),
        "updatedAt": _iso(at + timedelta(seconds=31)),
        "environment": "production",
        "subject": {"kind": "observation", "id": obs["id"], "traceId": obs["traceId"]},
    }
    return obs, score


def test_scheduled_pulls_store_each_row_once_however_often_the_overlap_is_read(lf, home, tmp_path):
    """Every pull re-reads an hour before its watermark. Pulls a quarter-hour apart stored
    each generation about five times: the mirror and every ingest's reading grew with the
    copies, and the manifest counted each copy as a duplicate dropped."""
    run_ingest(pull_spec(), tmp_path / "first")
    start = max(_time(s["timestamp"]) for s in lf.tables["scores"])
    template = lf.tables["observations"][0]
    for run in range(12):
        for k in range(4):
            obs, score = _new_generation(template, run, k, start + timedelta(minutes=15 * run + k))
            lf.tables["observations"].insert(0, obs)
            lf.tables["scores"].insert(0, score)
        last = run_ingest(pull_spec(), tmp_path / f"run-{run}")
        fetched = _manifest(last.dir)["sources"][0]["pull"]["fetched"]
    assert fetched["observations"] > 4  # the overlap is still read ...
    for kind in ("observations", "scores"):  # ... but stored once
        ids = [r["id"] for r in _mirror_rows(home, kind)]
        assert len(ids) == len(set(ids)) == len(lf.tables[kind]), kind
    assert "langfuse_observation_seen_twice" not in _manifest(last.dir)["drops"]
    labels = _kto(last.dir)
    assert all(labels[f"g{run}-{k}"] is (k % 2 == 0) for run in range(12) for k in range(4))


def test_rows_stamped_like_the_watermark_across_a_page_boundary_all_arrive(lf, home, tmp_path):
    """Generations with the very stamp of the watermark, split over two pages, and more with
    that stamp that arrive after the pull: each is pulled, and stored once."""
    stamps = [o["startTime"] for o in lf.tables["observations"]]
    first_mark = max(map(_time, stamps + [s["timestamp"] for s in lf.tables["scores"]]))
    template = lf.tables["observations"][0]
    same = [_new_generation(template, 90, k, first_mark + timedelta(hours=1)) for k in range(9)]
    for obs, score in same[:6]:
        lf.tables["observations"].insert(0, obs)
        lf.tables["scores"].insert(0, score)
    run_ingest(pull_spec(page_limit=4), tmp_path / "first")  # pages of 4: 6 split 4 + 2
    for obs, score in same[6:]:  # late: stamped like the watermark, visible only now
        lf.tables["observations"].insert(2, obs)
        lf.tables["scores"].insert(2, score)
    second = run_ingest(pull_spec(page_limit=4), tmp_path / "second")
    labels = _kto(second.dir)
    assert all(f"g90-{k}" in labels for k in range(9))
    ids = [r["id"] for r in _mirror_rows(home, "observations")]
    assert len(ids) == len(set(ids))


def _page(folder: Path, kind: str, n: int, rows: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{kind}-page-{n}.json"
    path.write_text(json.dumps({"data": rows, "meta": {}}))
    return path


def _save(path: Path, page: dict) -> None:
    path.write_text(json.dumps(page))


def test_compaction_keeps_the_newest_copy_and_every_row_without_an_id(tmp_path):
    """One id twice in one pull (pages shifting under the cursor), an older copy in the mirror,
    a copy older than the mirror's (a lagging replica), and rows without an id (the reader
    quarantines them: never dropped here)."""
    from feinschliff.ingest.pull_versions import compact, drop_older

    mirror, partial = tmp_path / "mirror", tmp_path / "partial"
    held = _page(
        mirror / "20261101T000000000000Z",
        "scores",
        1,
        [
            {"id": "a", "value": False, "updatedAt": "2026-11-01T10:00:00.000Z"},
            {"id": "b", "value": True, "updatedAt": "2026-11-03T10:00:00.000Z"},
            {"id": "c", "value": True, "updatedAt": "2026-11-01T10:00:00.000Z"},
        ],
    )
    _page(
        partial,
        "scores",
        1,
        [
            {"id": "a", "value": True, "updatedAt": "2026-11-02T10:00:00.000Z"},
            {"id": "b", "value": False, "updatedAt": "2026-11-02T10:00:00.000Z"},
            {"id": "d", "value": 1, "updatedAt": "2026-11-02T10:00:00.000Z"},
            {"value": "no id"},
        ],
    )
    _page(
        partial,
        "scores",
        2,
        [
            {"id": "c", "value": True, "updatedAt": "2026-11-01T10:00:00.000Z"},
            {"id": "d", "value": 2, "updatedAt": "2026-11-02T10:00:00.000Z"},
        ],
    )
    done = compact(partial, mirror, "scores", _save)
    assert (done.new, done.unchanged, done.updated) == (1, 2, 1)
    kept = [r for p in sorted(partial.glob("*.json")) for r in json.loads(p.read_text())["data"]]
    assert kept == [
        {"id": "a", "value": True, "updatedAt": "2026-11-02T10:00:00.000Z"},
        {"value": "no id"},
        {"id": "d", "value": 2, "updatedAt": "2026-11-02T10:00:00.000Z"},
    ]
    drop_older(done.removed, _save)
    assert [r["id"] for r in json.loads(held.read_text())["data"]] == ["b", "c"]


def test_a_page_holding_two_versions_of_a_row_keeps_the_newest(tmp_path):
    """A page from before compaction holds one score twice (v1, then v2 from a re-read); a
    pull fetches v2 again. The older copies were removed by id: both went, and the pull's v2
    was not stored (the mirror held it), so the score was lost."""
    from feinschliff.ingest.pull_versions import compact, drop_older

    mirror, partial = tmp_path / "mirror", tmp_path / "partial"
    v1 = {"id": "s1", "value": False, "updatedAt": "2026-11-01T00:00:00.000Z"}
    v2 = {**v1, "value": True, "updatedAt": "2026-11-02T00:00:00.000Z"}
    held = _page(mirror / "20261101T000000000000Z", "scores", 1, [v1, v2, {"id": "s2"}])
    _page(partial, "scores", 1, [v2])
    done = compact(partial, mirror, "scores", _save)
    assert (done.new, done.unchanged, done.updated) == (0, 1, 0)
    drop_older(done.removed, _save)
    copies = [r for p in [held, *partial.glob("*.json")] for r in json.loads(p.read_text())["data"]]
    assert copies == [v2, {"id": "s2"}]


def test_the_manifest_counts_what_each_pull_stored_apart_from_what_it_read(lf, home, tmp_path):
    """The daily rescan re-reads a week of scores: ``fetched`` counted them all as if new."""
    first = _manifest(run_ingest(pull_spec(), tmp_path / "first").dir)["sources"][0]["pull"]
    observations = len(lf.tables["observations"])
    assert first["stored"]["observations"] == {"new": observations, "unchanged": 0, "updated": 0}
    score = _thumbs_down_within(lf, days=6)
    score.update(value=True, updatedAt=_iso(datetime.now(UTC)))
    _a_day_later(home)
    second = _manifest(run_ingest(pull_spec(), tmp_path / "second").dir)["sources"][0]["pull"]
    read = second["fetched"]["scores"]
    assert read > 1  # the week re-read ...
    assert second["stored"]["scores"] == {"new": 0, "unchanged": read - 1, "updated": 1}
