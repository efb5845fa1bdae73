"""Ingest on the bundled real-format samples, plus malformed input: nothing valid is lost.

Expected numbers come from data/samples/README.md ("Intended derivations").
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from feinschliff.artifacts import COMPLETE, completed_hash, sha256_file
from feinschliff.ingest import run_ingest
from feinschliff.ingest.stage import IngestError, InvalidSource
from feinschliff.recipe import FeedbackSpec

ROOT = Path(__file__).resolve().parents[2]
ARGILLA = ROOT / "data" / "samples" / "argilla" / "feedback-de"
ARGILLA_FLAT = ROOT / "data" / "samples" / "argilla" / "feedback-de-flat.jsonl"
LANGFUSE = ROOT / "data" / "samples" / "langfuse"


def spec(*sources, **kw) -> FeedbackSpec:
    kw.setdefault("pii", {"mode": "off"})
    kw.setdefault("heldout_fraction", 0.0)
    return FeedbackSpec.model_validate(
        {"sources": [{"kind": k, "path": str(p)} for k, p in sources], **kw}
    )


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def rows(out: Path, name: str) -> list[dict]:
    return read_jsonl(out / f"{name}.jsonl") + read_jsonl(out / "heldout" / f"{name}.jsonl")


@pytest.fixture(scope="module")
def both(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("both")
    run_ingest(spec(("argilla", ARGILLA), ("langfuse", LANGFUSE), heldout_fraction=0.1), out)
    return out


def test_samples_give_sft_preference_and_kto_rows(both):
    sft, pref, kto = rows(both, "sft"), rows(both, "preference"), rows(both, "kto")
    # nested Argilla form (status lost): 26 SFT + 31 pairs; Langfuse: 22 SFT + 8 pairs, 27 thumbs
    assert (len(sft), len(pref), len(kto)) == (26 + 22, 31 + 8, 27)
    for row in sft:
        assert row["messages"][-1]["role"] == "assistant" and row["messages"][-1]["content"].strip()
    for row in pref:
        assert row["chosen"][0]["role"] == row["rejected"][0]["role"] == "assistant"
        assert row["chosen"] != row["rejected"]
    assert sum(r["label"] for r in kto) == 16 and {r["completion"][0]["role"] for r in kto} == {
        "assistant"
    }
    manifest = json.loads((both / "manifest.json").read_text())
    assert manifest["counts"]["sft.jsonl"] == len(read_jsonl(both / "sft.jsonl"))
    for name, digest in manifest["sha256"].items():
        assert sha256_file(both / name) == digest
    assert completed_hash(both) is not None
    assert {r["provenance"]["source"] for r in sft + pref} == {"argilla", "langfuse"}
    rules = {r["provenance"]["rule"] for r in pref}
    assert rules == {"correction_vs_original", "annotated_preference", "thumbs_up_vs_down"}
    assert (both / "README.md").read_text().startswith("---\nlanguage:\n- de")


def test_provenance_names_ids_annotators_times_and_location(both):
    fix = next(
        r for r in rows(both, "sft") if r["provenance"]["observation_id"] == "bf41be2cd6fbe5f6"
    )
    prov = fix["provenance"]
    assert prov["rule"] == "correction" and prov["trace_id"] == "76d7c219e68dbd9ce273ece2f9ba5362"
    assert prov["annotators"] and prov["timestamp"].startswith("2026-10-19")
    assert (
        prov["feedback_at"].startswith("2026-10-21")
        and "observations-page-1.json" in prov["location"]
    )


def test_flat_form_honours_response_status(tmp_path):
    out = tmp_path / "flat"
    run_ingest(spec(("argilla", ARGILLA_FLAT)), out)
    sft, pref = rows(out, "sft"), rows(out, "preference")
    assert (len(sft), len(pref)) == (25, 31)  # README: 18 accepted + 7 corrections; 31 pairs
    ids = {r["provenance"]["source_id"] for r in sft}
    assert "fb-de-024" not in ids  # all its responses were discarded
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["drops"]["argilla_response_discarded"] == 3
    assert manifest["disagreements"]["rating"] >= 3 and manifest["drops"]["preference_draw"] == 1


def test_nested_form_says_status_is_unknown(both):
    notes = json.loads((both / "manifest.json").read_text())["notes"]
    assert any("no response status" in n for n in notes)


def test_heldout_and_train_share_no_prompt(tmp_path):
    out = tmp_path / "o"
    run_ingest(spec(("argilla", ARGILLA), ("langfuse", LANGFUSE), heldout_fraction=0.3), out)
    train = {json.dumps(r["messages"][:-1]) for r in read_jsonl(out / "sft.jsonl")}
    held = {json.dumps(r["messages"][:-1]) for r in read_jsonl(out / "heldout" / "sft.jsonl")}
    assert held and train and not train & held


def test_ingest_is_deterministic(tmp_path):
    s = spec(("argilla", ARGILLA), ("langfuse", LANGFUSE), heldout_fraction=0.2)
    assert run_ingest(s, tmp_path / "a").sha256 == run_ingest(s, tmp_path / "b").sha256


def test_malformed_argilla_records_are_quarantined_and_valid_ones_kept(tmp_path):
    src = tmp_path / "argilla"
    shutil.copytree(ARGILLA, src)
    records = json.loads((src / "records.json").read_text())
    bad = [
        "just a string",
        {"id": "no-fields"},
        {"id": "no-prompt", "fields": {"response_a": "x"}, "responses": {}},
        {
            "id": "bad-rating",
            "fields": records[0]["fields"],
            "responses": {"rating": [{"value": "fünf"}]},
        },
        {"id": "unknown-q", "fields": records[0]["fields"], "responses": {"mood": [{"value": 1}]}},
    ]
    (src / "records.json").write_text(json.dumps(records + bad))
    out = tmp_path / "out"
    run_ingest(spec(("argilla", src), max_quarantine_fraction=0.5), out)
    quarantine = read_jsonl(out / "quarantine.jsonl")
    # a bad response is quarantined alone: its record stays (with its other votes, here none)
    assert [q["raw"] for q in quarantine] == [
        *bad[:3],
        {"id": "bad-rating", "question": "rating", "response": {"value": "fünf"}},
        {"id": "unknown-q", "question": "mood", "responses": [{"value": 1}]},
    ]
    assert all(q["reason"] and q["location"].startswith(str(src)) for q in quarantine)
    assert {q["source"] for q in quarantine} == {"argilla"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sources"][0]["records"] == len(records) + 2
    assert sum(v for k, v in manifest["drops"].items() if k.startswith("quarantined")) == len(bad)


def test_too_much_quarantine_fails_after_writing_everything(tmp_path):
    src = tmp_path / "argilla"
    shutil.copytree(ARGILLA, src)
    records = json.loads((src / "records.json").read_text())
    (src / "records.json").write_text(json.dumps(records[:3] + [{"broken": i} for i in range(3)]))
    with pytest.raises(IngestError, match="quarantined"):
        run_ingest(spec(("argilla", src)), tmp_path / "out")
    assert len(read_jsonl(tmp_path / "out" / "quarantine.jsonl")) == 3
    assert (tmp_path / "out" / "sft.jsonl").exists()
    assert not (tmp_path / "out" / COMPLETE).exists()  # a failed run is never reused


def test_wrong_kind_names_what_was_found(tmp_path):
    with pytest.raises(InvalidSource, match="not an Argilla export.*looks like a Langfuse export"):
        run_ingest(spec(("argilla", LANGFUSE)), tmp_path / "out")
    with pytest.raises(InvalidSource, match="looks like an Argilla export"):
        run_ingest(spec(("langfuse", ARGILLA_FLAT)), tmp_path / "out")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidSource, match="empty directory"):
        run_ingest(spec(("langfuse", empty)), tmp_path / "out")
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps({"data": [{"foo": 1, "bar": 2}]}))
    with pytest.raises(InvalidSource, match=r"unknown row \(keys \['bar', 'foo'\]\)"):
        run_ingest(spec(("langfuse", odd)), tmp_path / "out")


def test_langfuse_bad_rows_are_quarantined(tmp_path):
    src = tmp_path / "lf"
    shutil.copytree(LANGFUSE, src)
    page = src / "observations-page-1.json"
    data = json.loads(page.read_text())
    data["data"].append(
        {"id": "x1", "traceId": "t1", "type": "GENERATION", "input": "{not json", "output": ""}
    )
    data["data"].append(
        {"id": "x2", "traceId": "t2", "type": "GENERATION", "input": "[]", "output": '"hi"'}
    )
    page.write_text(json.dumps(data))
    thumbs = [
        {
            "id": f"s-{i}",
            "name": "user-feedback",
            "dataType": "BOOLEAN",
            "value": True,
            "subject": {"kind": "observation", "id": i, "traceId": "t"},
        }
        for i in ("x1", "x2", "missing")
    ]
    (src / "scores-extra.json").write_text(json.dumps({"data": thumbs, "meta": {}}))
    out = tmp_path / "out"
    run_ingest(spec(("langfuse", src), max_quarantine_fraction=0.5), out)
    reasons = {q["raw"]["id"]: q["reason"] for q in read_jsonl(out / "quarantine.jsonl")}
    assert "empty" in reasons["x1"] and "no prompt" in reasons["x2"]
    assert reasons["s-missing"] == "score refers to no known generation"
    assert json.loads((out / "manifest.json").read_text())["sources"][0]["records"] == 27


def test_long_reads_report_progress_and_a_summary(tmp_path, monkeypatch, caplog):
    import feinschliff.ingest.stage as stage

    monkeypatch.setattr(stage, "PROGRESS_SECONDS", 0.0)  # every item reports
    caplog.set_level("INFO", logger="feinschliff.ingest.stage")
    out = tmp_path / "out"
    run_ingest(spec(("langfuse", LANGFUSE)), out)
    manifest = json.loads((out / "manifest.json").read_text())
    source = manifest["sources"][0]
    messages = [r.getMessage() for r in caplog.records]
    progress = [m for m in messages if "records read" in m]
    assert progress and all(m.startswith("langfuse: ") and "/s)" in m for m in progress)
    summary = f"langfuse: {source['records']:,} records, {source['quarantined']:,} quarantined in"
    assert any(m.startswith(summary) for m in messages), messages
