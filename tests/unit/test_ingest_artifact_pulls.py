"""What the Prefect UI shows of a live pull (the ingest table, the run log) and of a run whose
adapter is already production (the gate artifact): from the manifest and the version alone,
no Prefect server."""

from __future__ import annotations

import json

from feinschliff.artifacts import DatasetRef

MANIFEST = {
    "counts": {"sft.jsonl": 4},
    "sources": [
        {"kind": "jsonl", "path": "a.jsonl"},
        {
            "kind": "langfuse",
            "path": "mirror/x",
            "pull": {
                "fetched": {"observations": 0, "scores": 0},
                "watermark_before": {"identity": "project:p", "observations": "T1"},
                "watermark_after": {"identity": "project:p", "observations": "T1"},
            },
        },
        {
            "kind": "argilla",
            "path": "mirror/y",
            "pull": {"fetched": {"records": 7}, "watermark_before": {}, "watermark_after": {}},
        },
    ],
}


def test_pull_rows_name_each_pull_its_counts_and_watermarks():
    from flows.artifacts import pull_rows

    assert pull_rows(MANIFEST) == [
        {"output": "pull 2 (langfuse): fetched observations", "rows": 0},
        {"output": "pull 2 (langfuse): fetched scores", "rows": 0},
        {"output": "pull 2 (langfuse): watermark identity", "rows": "unchanged: project:p"},
        {"output": "pull 2 (langfuse): watermark observations", "rows": "unchanged: T1"},
        {"output": "pull 3 (argilla): fetched records", "rows": 7},
    ]
    assert pull_rows({"counts": {}}) == []  # file sources, or a manifest from before pulls


def test_pull_lines_say_when_a_pull_found_nothing_new(tmp_path):
    from flows.artifacts import pull_lines

    (tmp_path / "manifest.json").write_text(json.dumps(MANIFEST))
    lines = pull_lines(DatasetRef(path=str(tmp_path), sha256="0" * 64))
    assert lines == [
        "pull 2 (langfuse): fetched observations 0, scores 0; watermark identity unchanged: "
        "project:p; observations unchanged: T1",
        "pull 3 (argilla): fetched records 7; watermark none",
    ]


def test_the_gate_artifact_of_an_unchanged_run_names_the_production_version():
    from flows.artifacts import unchanged_markdown

    md = unchanged_markdown("v0007")
    assert md.startswith("## Gate: **UNCHANGED**: the adapter is already production `v0007`")
    assert "PROMOTED" not in md and "feinschliff evaluate" in md


def test_an_unreadable_manifest_logs_no_pull_line(tmp_path):
    """A log line for the operator never fails a run that ingested fine."""
    from flows.artifacts import pull_lines

    assert pull_lines(DatasetRef(path=str(tmp_path), sha256="0" * 64)) == []
    (tmp_path / "manifest.json").write_text("{not json")
    assert pull_lines(DatasetRef(path=str(tmp_path), sha256="0" * 64)) == []


def test_a_pull_says_what_it_stored_of_what_it_fetched(tmp_path):
    """The lookback and the daily rescan re-read rows the mirror holds: `fetched` alone made a
    week of unchanged scores look like new feedback."""
    from flows.artifacts import pull_lines, pull_rows

    stored = {"scores": {"new": 9, "unchanged": 690, "updated": 1}}
    pull = {"fetched": {"scores": 700}, "stored": stored}
    manifest = {"sources": [{"kind": "langfuse", "path": "m", "pull": pull}]}
    assert {
        "output": "pull 1 (langfuse): stored scores",
        "rows": "new 9, unchanged 690, updated 1",
    } in pull_rows(manifest)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    (line,) = pull_lines(DatasetRef(path=str(tmp_path), sha256="0" * 64))
    assert "fetched scores 700; stored scores new 9, unchanged 690, updated 1" in line
