"""Every real export layout is detected and read to the same training signal.

The fixtures in data/fixtures/ were produced by the real SDKs from the same content as the
samples (see data/fixtures/README.md), so each layout must yield the numbers of
data/samples/README.md: Argilla with response status 25 SFT rows / 31 pairs, Langfuse 22 / 8.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from feinschliff.ingest import run_ingest
from feinschliff.ingest.detect import UnknownExport, open_export
from feinschliff.ingest.jsonio import (
    Broken,
    data_array_start,
    head_of_page,
    iter_csv,
    iter_json_array,
    iter_jsonl,
)
from feinschliff.ingest.records import FeedbackRecord, ReadLog
from feinschliff.ingest.scratch import Scratch
from feinschliff.ingest.stage import IngestError
from feinschliff.recipe import FeedbackSpec
from feinschliff.specs.feedback import DerivationRules

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "data" / "fixtures"


def ingest(tmp_path: Path, kind: str, path: Path, **kw) -> dict:
    spec = FeedbackSpec.model_validate(
        {
            "sources": [{"kind": kind, "path": str(path)}],
            "pii": {"mode": "off"},
            "heldout_fraction": 0.0,
            **kw,
        }
    )
    out = tmp_path / "out"
    run_ingest(spec, out)
    return json.loads((out / "manifest.json").read_text())


ARGILLA_STATUS_KEPT = [
    ("argilla/hub-v1", "argilla-1-hub"),
    ("argilla/hub-v2", "argilla-2-hub-parquet"),
    ("argilla/hub-v2/data/train-00000-of-00001.parquet", "argilla-2-flat-parquet"),
    ("argilla/flat/feedback-de-flat.json", "argilla-2-flat"),
]


@pytest.mark.parametrize(("rel", "fmt"), ARGILLA_STATUS_KEPT, ids=lambda v: str(v))
def test_argilla_layouts_with_status(tmp_path, rel, fmt):
    m = ingest(tmp_path, "argilla", FIX / rel)
    assert m["sources"][0]["format"] == fmt
    assert (m["counts"]["sft.jsonl"], m["counts"]["preference.jsonl"]) == (25, 31)
    assert m["drops"]["argilla_response_discarded"] == 3
    assert not any("no response status" in n for n in m["notes"])


@pytest.mark.parametrize("name", ["traces.csv", "traces.json", "traces.jsonl"])
def test_langfuse_ui_trace_exports_give_thumbs(tmp_path, name):
    m = ingest(tmp_path, "langfuse", FIX / "langfuse" / "ui-export" / name)
    # thumbs only (the UI export has no CORRECTION scores): 16 up -> SFT, 27 KTO, 2 up/down pairs
    assert (
        m["counts"]["sft.jsonl"],
        m["counts"]["kto.jsonl"],
        m["counts"]["preference.jsonl"],
    ) == (16, 27, 2)
    assert any("no CORRECTION" in n for n in m["notes"])


def test_three_copies_of_one_export_are_deduplicated(tmp_path):
    m = ingest(tmp_path, "langfuse", FIX / "langfuse" / "ui-export")
    assert m["sources"][0]["records"] == 81
    assert m["counts"]["kto.jsonl"] == 27 and m["drops"]["duplicate_kto_row"] == 54


def test_langfuse_full_traces_match_the_api_pages(tmp_path):
    m = ingest(tmp_path, "langfuse", FIX / "langfuse" / "traces")
    assert (
        m["counts"]["sft.jsonl"],
        m["counts"]["preference.jsonl"],
        m["counts"]["kto.jsonl"],
    ) == (22, 8, 27)


def test_dataset_items_are_references(tmp_path):
    m = ingest(tmp_path, "langfuse", FIX / "langfuse" / "dataset-items")
    assert m["counts"]["sft.jsonl"] == 6 and m["drops"]["langfuse_dataset_item_archived"] == 1
    row = json.loads((tmp_path / "out" / "sft.jsonl").read_text().splitlines()[0])
    assert row["provenance"]["rule"] == "dataset_item" and row["provenance"]["trace_id"]


def test_traces_list_is_quarantined_with_a_hint(tmp_path):
    with pytest.raises(IngestError, match="5 of 5 records quarantined"):
        ingest(tmp_path, "langfuse", FIX / "langfuse" / "traces-list")
    first = json.loads((tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()[0])
    assert "GET /api/public/traces/{id}" in first["reason"]


def test_argilla_nested_array_without_settings_is_refused(tmp_path):
    src = tmp_path / "records.json"
    src.write_text((ROOT / "data/samples/argilla/feedback-de/records.json").read_text())
    with Scratch() as scratch, pytest.raises(UnknownExport, match="not an Argilla export"):
        open_export("argilla", src, ReadLog(), DerivationRules(), scratch)


def test_flat_rows_without_settings_need_a_prompt_column(tmp_path):
    src = tmp_path / "flat.jsonl"
    src.write_text(
        json.dumps(
            {
                "id": "r1",
                "text": "x",
                "response_a": "y",
                "rating.responses": [5],
                "rating.responses.users": ["u"],
                "rating.responses.status": ["submitted"],
            }
        )
        + "\n"
    )
    with Scratch() as scratch:
        read = open_export("argilla", src, ReadLog(), DerivationRules(), scratch)
        (item,) = list(read.items)
    assert not isinstance(item, FeedbackRecord) and "no prompt column" in item.reason


def test_json_array_streams_across_chunk_borders(tmp_path, monkeypatch):
    from feinschliff.ingest import jsonio

    monkeypatch.setattr(jsonio, "CHUNK", 5)
    values = [{"n": i, "t": "ä" * i} for i in range(30)] + [1234567, "x", None]
    path = tmp_path / "a.json"
    path.write_text(json.dumps(values, ensure_ascii=False, indent=1), encoding="utf-8")
    inputs: dict[str, str] = {}
    assert [v for _, v in iter_json_array(path, inputs)] == values
    assert inputs[str(path)] and len(inputs[str(path)]) == 64
    path.write_text('[{"a": 1}, {"b": }, {"c": 3}]')
    got = [v for _, v in iter_json_array(path, inputs)]
    assert got[0] == {"a": 1} and isinstance(got[1], Broken)


def test_jsonl_and_csv_report_broken_lines(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"a": 1}\n{oops\n\n{"b": 2}\n')
    got = list(iter_jsonl(path, {}))
    assert [n for n, _ in got] == [1, 2, 4] and isinstance(got[1][1], Broken)
    csv = tmp_path / "a.csv"
    csv.write_text('"id","input"\n"1","[{""role"": ""user""}]"\n')
    assert list(iter_csv(csv, {})) == [(2, {"id": "1", "input": '[{"role": "user"}]'})]


def test_argilla_mirror_newest_version_supersedes_even_when_quarantined(tmp_path):
    """A pull mirror holds one file per pull. A record pulled again counts in its newest
    version; when that version is malformed it is quarantined, and the stale older version is
    not used in its place (it no longer says what the annotators answered)."""
    import shutil

    from feinschliff.ingest import run_ingest
    from feinschliff.recipe import FeedbackSpec

    sample = ROOT / "data" / "samples" / "argilla" / "feedback-de"
    mirror = tmp_path / "mirror"
    shutil.copytree(sample / ".argilla", mirror / ".argilla")
    records = json.loads((sample / "records.json").read_text())
    lines = "\n".join(json.dumps(r) for r in records) + "\n"
    (mirror / "records-20261101T000000Z.jsonl").write_text(lines)
    broken = {**records[0], "fields": "no longer an object"}
    (mirror / "records-20261108T000000Z.jsonl").write_text(json.dumps(broken) + "\n")
    spec = FeedbackSpec.model_validate(
        {
            "sources": [{"kind": "argilla", "path": str(mirror)}],
            "pii": {"mode": "off"},
            "heldout_fraction": 0,
            "max_quarantine_fraction": 0.5,
        }
    )

    run_ingest(spec, tmp_path / "out")

    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    source = manifest["sources"][0]
    assert source["format"] == "argilla-2-mirror"
    assert (source["records"], source["quarantined"]) == (len(records) - 1, 1)
    assert source["skipped"]["argilla_record_superseded_by_newer_pull"] == 1
    out = tmp_path / "out"
    rows = "".join((out / f"{n}.jsonl").read_text() for n in ("sft", "preference", "kto"))
    assert records[0]["id"] not in rows


def test_page_head_finds_the_top_level_data_array_only(tmp_path):
    """Detection peeks at a page's first rows: a ``"data"`` key nested in a member before the
    rows (or inside a string) is not the page's ``data`` array."""
    page = tmp_path / "page.json"
    rows = json.dumps([{"id": "obs-1"}, {"id": "obs-2"}])
    page.write_text(
        '\ufeff{"meta": {"data": [7], "note": "\\"data\\": [8]"},\n "data": ' + rows + "}"
    )
    assert [r["id"] for r in head_of_page(page)] == ["obs-1", "obs-2"]
    text = page.read_text(encoding="utf-8-sig")
    assert text[data_array_start(text)] == "["
    for not_a_page in ('[{"data": []}]', '{"meta": 1 "data": []}', '{"data": {"x": 1}}', "{"):
        assert data_array_start(not_a_page) is None
