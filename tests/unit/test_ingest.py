"""Ingest on the bundled real-format samples, plus malformed input: nothing valid is lost."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from feinschliff.artifacts import completed_hash, sha256_file
from feinschliff.ingest import run_ingest
from feinschliff.ingest.stage import IngestError
from feinschliff.recipe import FeedbackSpec

ROOT = Path(__file__).resolve().parents[2]
ARGILLA = ROOT / "data" / "samples" / "argilla" / "feedback-de"
LANGFUSE = ROOT / "data" / "samples" / "langfuse"


def spec(*sources, **kw) -> FeedbackSpec:
    return FeedbackSpec.model_validate(
        {"sources": [{"kind": k, "path": str(p)} for k, p in sources], **kw}
    )


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def test_samples_give_sft_and_preference_rows(tmp_path):
    ref = run_ingest(spec(("argilla", ARGILLA), ("langfuse", LANGFUSE)), tmp_path / "out")
    out = Path(ref.path)
    sft, pref = read_jsonl(out / "sft.jsonl"), read_jsonl(out / "preference.jsonl")
    held = read_jsonl(out / "heldout" / "sft.jsonl")
    assert len(sft) >= 20 and len(pref) >= 20 and held
    for row in sft:
        assert [m["role"] for m in row["messages"]][-1] == "assistant"
        assert row["messages"][-1]["content"].strip()
        assert row["provenance"]["source"] in ("argilla", "langfuse")
    for row in pref:
        assert row["chosen"][0]["role"] == row["rejected"][0]["role"] == "assistant"
        assert row["chosen"] != row["rejected"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["sft.jsonl"] == len(sft)
    for name, digest in manifest["sha256"].items():
        assert sha256_file(out / name) == digest
    assert completed_hash(out) == ref.sha256
    # both sources contributed, rules are recorded per row
    assert {r["provenance"]["source"] for r in sft + pref} == {"argilla", "langfuse"}
    rules = {r["provenance"]["rule"] for r in pref}
    assert {"correction_vs_original", "annotated_preference", "thumbs_up_vs_down"} <= rules


def test_heldout_and_train_share_no_prompt(tmp_path):
    out = Path(
        run_ingest(
            spec(("argilla", ARGILLA), ("langfuse", LANGFUSE), heldout_fraction=0.3), tmp_path / "o"
        ).path
    )
    train = {json.dumps(r["messages"][:-1]) for r in read_jsonl(out / "sft.jsonl")}
    held = {json.dumps(r["messages"][:-1]) for r in read_jsonl(out / "heldout" / "sft.jsonl")}
    assert held and not train & held


def test_ingest_is_deterministic(tmp_path):
    s = spec(("argilla", ARGILLA), ("langfuse", LANGFUSE))
    assert run_ingest(s, tmp_path / "a").sha256 == run_ingest(s, tmp_path / "b").sha256


def test_malformed_argilla_records_are_quarantined_and_valid_ones_kept(tmp_path):
    src = tmp_path / "argilla"
    shutil.copytree(ARGILLA, src)
    records = json.loads((src / "records.json").read_text())
    n_valid = len(records)
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
    assert len(quarantine) == len(bad)
    assert all(q["reason"] and q["location"].startswith(str(src)) for q in quarantine)
    assert [q["raw"] for q in quarantine] == bad
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sources"][0]["records"] == n_valid


def test_too_much_quarantine_fails_after_writing_everything(tmp_path):
    src = tmp_path / "argilla"
    shutil.copytree(ARGILLA, src)
    records = json.loads((src / "records.json").read_text())
    (src / "records.json").write_text(json.dumps(records[:3] + [{"broken": i} for i in range(3)]))
    with pytest.raises(IngestError, match="quarantined"):
        run_ingest(spec(("argilla", src)), tmp_path / "out")
    assert len(read_jsonl(tmp_path / "out" / "quarantine.jsonl")) == 3
    assert (tmp_path / "out" / "sft.jsonl").exists()


def test_wrong_kind_names_what_was_found(tmp_path):
    with pytest.raises(IngestError, match="not an Argilla to_disk export"):
        run_ingest(spec(("argilla", LANGFUSE)), tmp_path / "out")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(IngestError, match="empty directory"):
        run_ingest(spec(("langfuse", empty)), tmp_path / "out")


def test_langfuse_bad_rows_are_quarantined(tmp_path):
    src = tmp_path / "lf"
    shutil.copytree(LANGFUSE, src)
    page = next(p for p in sorted(src.glob("*.json")) if "observations" in p.name)
    data = json.loads(page.read_text())
    good = sum(1 for r in data["data"] if r.get("type") == "GENERATION")
    data["data"].append(
        {"id": "x1", "traceId": "t", "type": "GENERATION", "input": "{not json", "output": ""}
    )
    data["data"].append(
        {"id": "x2", "traceId": "t", "type": "GENERATION", "input": "[]", "output": '"hi"'}
    )
    page.write_text(json.dumps(data))
    out = tmp_path / "out"
    run_ingest(spec(("langfuse", src), max_quarantine_fraction=0.5), out)
    reasons = {
        q["raw"]["id"]: q["reason"] for q in read_jsonl(out / "quarantine.jsonl") if q["raw"]
    }
    assert set(reasons) >= {"x1", "x2"}
    assert "empty" in reasons["x1"] and "no prompt" in reasons["x2"]
    assert good > 0
