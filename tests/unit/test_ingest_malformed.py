"""Malformed input is quarantined with a fixed reason, never a crash or a leak.

- a lone UTF-16 surrogate (``"\\ud83d"``: legal JSON, e.g. an emoji cut in half) quarantines
  its record; every output file stays UTF-8 and the other records survive;
- text cut for a quarantine entry is cut after PII scrubbing, so no half e-mail or IBAN leaks;
- a CSV row with more cells than its header is a quarantined row, not a crash in detection;
- quarantine reasons are fixed text (the parser's message is the detail), so drops count by them;
- detection says which part of an Argilla export is missing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from feinschliff.ingest import run_ingest
from feinschliff.ingest.detect import UnknownExport, open_export
from feinschliff.ingest.records import ReadLog
from feinschliff.ingest.scratch import Scratch
from feinschliff.ingest.stage import IngestError, InvalidSource
from feinschliff.ngrams import word_hashes
from feinschliff.recipe import FeedbackSpec
from feinschliff.specs.feedback import DerivationRules

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "data" / "samples"
TO_DISK = SAMPLES / "argilla" / "feedback-de"
FLAT = SAMPLES / "argilla" / "feedback-de-flat.jsonl"
LONE = "text is not valid Unicode (lone surrogate)"
EMAIL = "canary.mustermann@example-stadtwerke.de"
IBAN = "DE89 3704 0044 0532 0130 00"


def ingest(tmp_path: Path, kind: str, path: Path, pii: str = "off") -> tuple[Path, dict]:
    spec = FeedbackSpec.model_validate(
        {
            "sources": [{"kind": kind, "path": str(path)}],
            "pii": {"mode": pii},
            "heldout_fraction": 0.0,
            "max_quarantine_fraction": 1.0,
        }
    )
    out = tmp_path / "out"
    run_ingest(spec, out)
    return out, json.loads((out / "manifest.json").read_text(encoding="utf-8"))


def quarantine(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]


def assert_utf8(out: Path) -> None:
    for f in out.rglob("*"):
        if f.is_file():
            f.read_bytes().decode("utf-8")  # strict: a surrogate written as bytes fails here


# --------------------------------------------------------------------------- lone surrogates


def test_a_lone_surrogate_in_a_langfuse_output_quarantines_that_generation(tmp_path):
    src = tmp_path / "lf"
    shutil.copytree(SAMPLES / "langfuse", src)
    page = json.loads((src / "observations-page-1.json").read_text())
    row = page["data"][0]
    output = json.loads(row["output"])
    output["content"] += " Danke \ud83d"  # JSON.stringify of an emoji cut in half
    row["output"] = json.dumps(output)  # ASCII JSON: the surrogate is the text \ud83d
    (src / "observations-page-1.json").write_text(json.dumps(page))
    _, clean = ingest(tmp_path / "clean", "langfuse", SAMPLES / "langfuse")

    out, m = ingest(tmp_path, "langfuse", src)

    assert m["drops"][f"quarantined: {LONE}"] == 1
    assert m["sources"][0]["records"] == clean["sources"][0]["records"] - 1
    (entry,) = quarantine(out)
    assert entry["reason"] == LONE and entry["raw"]["id"] == row["id"]
    assert_utf8(out)


def test_a_lone_surrogate_in_an_api_page_field_quarantines_only_its_row(tmp_path):
    src = tmp_path / "lf"
    shutil.copytree(SAMPLES / "langfuse", src)
    page = json.loads((src / "observations-page-1.json").read_text())
    row = page["data"][0]
    row["output"] = json.loads(row["output"])  # an object, as API v1 pages hold it
    row["output"]["content"] += " Danke \ud83d"  # so the page itself holds the escape
    (src / "observations-page-1.json").write_text(json.dumps(page))
    _, clean = ingest(tmp_path / "clean", "langfuse", SAMPLES / "langfuse")

    out, m = ingest(tmp_path, "langfuse", src)

    (entry,) = [e for e in quarantine(out) if e["reason"] == LONE]  # (its scores: orphans)
    assert entry["detail"] == "at output.content"
    assert entry["raw"]["output"]["content"].endswith("Danke \ufffd")  # written as UTF-8
    assert m["sources"][0]["records"] == clean["sources"][0]["records"] - 1
    assert_utf8(out)


def test_a_lone_surrogate_in_an_argilla_flat_line_is_quarantined_as_utf8(tmp_path):
    lines = FLAT.read_text(encoding="utf-8").splitlines()
    row = json.loads(lines[0])
    row["response_a"] += " \ud83d"
    lines[0] = json.dumps(row)  # ensure_ascii: the line holds the escape \ud83d
    src = tmp_path / "flat.jsonl"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")

    out, m = ingest(tmp_path, "argilla", src, pii="redact")  # the scrubber meets it too

    (entry,) = quarantine(out)
    assert entry["reason"] == LONE and entry["detail"] == "at response_a"
    assert m["sources"][0]["records"] == len(lines) - 1
    assert_utf8(out)


def test_a_lone_surrogate_in_an_argilla_records_json_is_quarantined(tmp_path):
    src = tmp_path / "feedback-de"
    shutil.copytree(TO_DISK, src)
    records = json.loads((src / "records.json").read_text())
    records[2]["fields"]["response_a"] += " \udc00"  # a lone low surrogate this time
    (src / "records.json").write_text(json.dumps(records))

    out, m = ingest(tmp_path, "argilla", src)

    (entry,) = quarantine(out)
    assert entry["reason"] == LONE and entry["detail"] == "at fields.response_a"
    assert m["sources"][0]["records"] == len(records) - 1
    assert_utf8(out)


def test_word_hashes_take_a_lone_surrogate():
    assert len(word_hashes("Danke \ud83d")) == 2


# --------------------------------------------------------------------------- PII across cuts


def _cut_line(prefix: str, canary: str, at: int) -> str:
    """A broken JSONL line whose ``canary`` starts ``at`` characters before position 200."""
    pad = "x" * (200 - len(prefix) - at - 1)
    return prefix + pad + f' {canary}, danke!", "response_a": "ok"'  # no closing brace


@pytest.mark.parametrize("canary", [EMAIL, IBAN])
def test_a_canary_across_the_cut_of_a_broken_line_is_scrubbed(tmp_path, canary):
    line = _cut_line('{"id": "fb-broken", "prompt": "Bitte an', canary, 12)
    src = tmp_path / "flat.jsonl"
    src.write_text(FLAT.read_text(encoding="utf-8") + line + "\n", encoding="utf-8")

    out, _ = ingest(tmp_path, "argilla", src, pii="redact")

    text = (out / "quarantine.jsonl").read_text(encoding="utf-8")
    assert "fb-broken" in text and canary[:10] not in text


def test_a_canary_across_the_cut_of_a_detail_is_scrubbed(tmp_path):
    src = tmp_path / "feedback-de"
    shutil.copytree(TO_DISK, src)
    records = json.loads((src / "records.json").read_text())
    value = "y" * 180 + f" {EMAIL} bitte"  # the detail is repr(value): cut inside the e-mail
    records[0]["responses"]["rating"][0]["value"] = value
    (src / "records.json").write_text(json.dumps(records))

    out, _ = ingest(tmp_path, "argilla", src, pii="redact")

    (entry,) = quarantine(out)
    assert entry["reason"] == "rating is not a number"
    assert len(entry["detail"]) <= 300 and EMAIL[:10] not in entry["detail"]


def test_a_canary_across_the_cuts_of_an_unreadable_file_is_scrubbed(tmp_path):
    rows = [json.loads(line) for line in FLAT.read_text(encoding="utf-8").splitlines()]
    rows[0]["prompt"] += f" {EMAIL} bitte"
    at = json.dumps(rows).index(EMAIL)
    rows[0]["prompt"] = "z" * (1990 - at) + rows[0]["prompt"]  # across the head's cut (2000)
    broken = json.dumps({"id": "cut", "prompt": "w" * 170 + f" {EMAIL} " + "v" * 99})[:260]
    assert json.dumps(rows).index(EMAIL) == 1990 and broken.index(EMAIL) < 200 < 260
    src = tmp_path / "flat.json"
    src.write_text(json.dumps(rows)[:-1] + ", " + broken, encoding="utf-8")

    with pytest.raises(IngestError, match="unreadable"):
        ingest(tmp_path, "argilla", src, pii="redact")

    entry = quarantine(tmp_path / "out")[-1]
    assert entry["raw"]["near_error"].startswith('{"id": "cut"')
    assert len(entry["raw"]["head"]) == 2000 and len(entry["raw"]["near_error"]) <= 200
    assert EMAIL[:10] not in json.dumps(entry, ensure_ascii=False)


# --------------------------------------------------------------------------- ragged CSV


def test_a_csv_row_with_an_extra_cell_is_quarantined_not_a_crash(tmp_path):
    lines = (ROOT / "data/fixtures/langfuse/ui-export/traces.csv").read_text().splitlines()
    lines[1] += ',"extra"'  # the first data row: detection reads it
    src = tmp_path / "traces.csv"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")

    out, m = ingest(tmp_path, "langfuse", src)

    (entry,) = [e for e in quarantine(out) if e["location"] == f"{src}:2"]
    assert entry["reason"] == "CSV row has more cells than the header"
    assert entry["raw"]["(cells past the header)"] == ["extra"]
    assert m["sources"][0]["records"] > 0


def test_a_ragged_csv_beside_langfuse_pages_is_left_out_not_a_crash(tmp_path):
    src = tmp_path / "mixed"
    shutil.copytree(SAMPLES / "langfuse", src)
    (src / "notes.csv").write_text('prompt,answer\n"Hallo?",gut,extra\n', encoding="utf-8")
    _, clean = ingest(tmp_path / "clean", "langfuse", SAMPLES / "langfuse")

    _, m = ingest(tmp_path, "langfuse", src)
    assert m["counts"] == clean["counts"]
    with pytest.raises(InvalidSource, match="looks like a Langfuse export"):
        ingest(tmp_path / "a", "argilla", src)


# --------------------------------------------------------------------------- fixed reasons


def test_invalid_json_lines_count_under_one_reason_with_the_parser_message_as_detail(tmp_path):
    src = tmp_path / "flat.jsonl"
    broken = ['{"id": "x1", "prompt": "a"', "not json", '{"id": "x2",, }']
    src.write_text(FLAT.read_text(encoding="utf-8") + "\n".join(broken) + "\n", encoding="utf-8")

    out, m = ingest(tmp_path, "argilla", src)

    assert {k: v for k, v in m["drops"].items() if k.startswith("quarantined")} == {
        "quarantined: invalid JSON": 3
    }
    entries = quarantine(out)
    assert [e["reason"] for e in entries] == ["invalid JSON"] * 3
    assert all("column" in e["detail"] for e in entries)  # where the parser stopped


# --------------------------------------------------------------------------- detection


def _detect(path: Path) -> str:
    with Scratch() as scratch, pytest.raises(UnknownExport) as err:
        open_export("argilla", path, ReadLog(), DerivationRules(), scratch)
    return str(err.value)


def test_the_records_json_of_a_to_disk_folder_points_at_its_folder():
    message = _detect(TO_DISK / "records.json")
    assert f"records.json of an Argilla to_disk export: pass its folder {TO_DISK}" in message


def test_a_to_disk_folder_without_its_hidden_settings_says_what_is_missing(tmp_path):
    src = tmp_path / "feedback-de"
    src.mkdir()
    shutil.copy(TO_DISK / "records.json", src)  # `cp *` leaves .argilla/ behind
    message = _detect(src)
    assert f"{src / '.argilla' / 'settings.json'} is missing" in message


def test_a_canary_across_the_cut_of_a_score_detail_is_scrubbed(tmp_path):
    """A Langfuse BOOLEAN score whose value is text: its detail (score id and value) was cut
    to 300 characters before scrubbing, so half an e-mail address reached quarantine.jsonl."""
    src = tmp_path / "langfuse"
    shutil.copytree(SAMPLES / "langfuse", src)
    page = json.loads((src / "scores-page-1.json").read_text())
    score = next(s for s in page["data"] if s["dataType"] == "BOOLEAN")
    score["value"] = "x" * 230 + f" {EMAIL} bitte"  # its repr follows 51 characters: cut at 300
    (src / "scores-page-1.json").write_text(json.dumps(page))

    out, _ = ingest(tmp_path, "langfuse", src, pii="redact")

    (entry,) = [e for e in quarantine(out) if e["reason"] == "BOOLEAN score has no usable value"]
    assert len(entry["detail"]) <= 300 and "xxxx" in entry["detail"]
    assert EMAIL[:10] not in json.dumps(quarantine(out))
