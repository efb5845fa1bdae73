"""What a user of `feinschliff ingest` meets (a tester's walk through the stage): the output
folder it may write, what the dataset card claims, unreadable export files, quarantine reasons,
the use-case task's decontamination and what a failed run leaves behind."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from feinschliff.artifacts import COMPLETE, OutputInUse
from feinschliff.ingest import run_ingest
from feinschliff.ingest.stage import IngestError, InvalidSource
from tests.cli_helpers import run_cli
from tests.unit.test_ingest import ARGILLA, ARGILLA_FLAT, LANGFUSE, ROOT, read_jsonl, spec


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text(encoding="utf-8"))


def _card(out: Path) -> str:
    return (out / "README.md").read_text(encoding="utf-8")


# --------------------------------------------------------------------------- 1. the output folder


def test_a_folder_with_someone_elses_files_is_refused_and_left_alone(tmp_path):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "README.md").write_text("# my project\n")
    (proj / "notes.txt").write_text("keep me\n")

    with pytest.raises(OutputInUse, match="not an earlier ingest output.*nothing was deleted"):
        run_ingest(spec(("argilla", ARGILLA_FLAT)), proj)
    assert (proj / "README.md").read_text() == "# my project\n"
    assert sorted(p.name for p in proj.iterdir()) == ["README.md", "notes.txt"]

    code, out = run_cli("ingest", "--out", str(proj), "--source", f"argilla:{ARGILLA_FLAT}")
    assert code == 2 and "not an earlier ingest output" in out
    assert (proj / "README.md").read_text() == "# my project\n"

    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(OutputInUse, match="is a file"):
        run_ingest(spec(("argilla", ARGILLA_FLAT)), a_file)


def test_an_earlier_ingest_output_is_replaced(tmp_path):
    out = tmp_path / "out"
    first = run_ingest(spec(("argilla", ARGILLA_FLAT)), out)
    again = run_ingest(spec(("argilla", ARGILLA_FLAT)), out)  # the flow reruns into its folder
    assert again.sha256 == first.sha256
    with pytest.raises(InvalidSource):  # a failed run is an ingest output too
        run_ingest(spec(("argilla", LANGFUSE)), out)
    assert not (out / "sft.jsonl").exists()  # not the earlier run's rows next to the failure
    ref = run_ingest(spec(("langfuse", LANGFUSE)), out)
    assert (out / COMPLETE).exists() and _manifest(out)["status"] == "complete"
    assert _manifest(out)["sources"][0]["kind"] == "langfuse" and ref.sha256

    empty = tmp_path / "empty"
    (empty / "heldout").mkdir(parents=True)  # what an older failed run left: nothing of value
    run_ingest(spec(("argilla", ARGILLA_FLAT)), empty)
    assert (empty / COMPLETE).exists()


# --------------------------------------------------------------------------- 2. PII off


def test_pii_off_card_says_not_scanned_and_the_stage_warns(tmp_path, caplog):
    out = tmp_path / "out"
    caplog.set_level(logging.WARNING, logger="feinschliff.ingest.stage")
    run_ingest(spec(("langfuse", LANGFUSE), pii={"mode": "off"}), out)
    card = _card(out)
    assert "not scanned (mode off): rows may contain PII" in card
    assert "findings: none" not in card
    assert _manifest(out)["pii"]["scanned"] is False
    assert any("pii.mode is off" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- 3. Argilla statuses


def test_card_says_what_counted_of_argilla_responses_and_copies_the_notes(tmp_path):
    nested = tmp_path / "nested"
    run_ingest(spec(("argilla", ARGILLA)), nested)  # to_disk: no response status
    notes = _manifest(nested)["notes"]
    assert any("carries no response status" in n for n in notes)
    card = _card(nested)
    assert "Only submitted Argilla responses count" not in card
    assert "were all counted as submitted" in card
    assert all(n in card for n in notes)

    flat = tmp_path / "flat"
    run_ingest(spec(("argilla", ARGILLA_FLAT)), flat)  # statuses kept: drafts are skipped
    assert "Only submitted Argilla responses count" in _card(flat)
    assert "were all counted as submitted" not in _card(flat)


# --------------------------------------------------------------------------- 4. unreadable files


def _truncated_langfuse(tmp_path: Path, keep: int) -> tuple[Path, Path]:
    src = tmp_path / "lf"
    shutil.copytree(LANGFUSE, src)
    page = src / "observations-page-2.json"
    page.write_bytes(page.read_bytes()[:keep])
    return src, page


@pytest.mark.parametrize("keep", [3000, 300])  # rows in its head / not even one whole row
def test_a_truncated_page_fails_the_stage_under_the_quarantine_threshold(tmp_path, keep):
    src, page = _truncated_langfuse(tmp_path, keep)
    out = tmp_path / "out"
    with pytest.raises(IngestError, match=f"could not be read to the end.*{page.name}"):
        run_ingest(spec(("langfuse", src), max_quarantine_fraction=0.5), out)
    manifest = _manifest(out)
    assert manifest["status"] == "failed" and str(page) in manifest["error"]
    assert [u["location"] for u in manifest["sources"][0]["unreadable"]] == [str(page)]
    (entry,) = [q for q in read_jsonl(out / "quarantine.jsonl") if q["location"] == str(page)]
    assert entry["raw"]["bytes"] == keep and entry["raw"]["head"].startswith("{")
    assert "not JSON" in entry["detail"] and "unreadable" not in entry
    assert not (out / COMPLETE).exists()


def test_a_json_array_broken_midway_fails_the_stage(tmp_path):
    src = tmp_path / "argilla"
    shutil.copytree(ARGILLA, src)
    text = (src / "records.json").read_text(encoding="utf-8")
    (src / "records.json").write_text(text[: len(text) // 2], encoding="utf-8")
    out = tmp_path / "out"
    with pytest.raises(IngestError, match="records.json"):
        run_ingest(spec(("argilla", src), max_quarantine_fraction=0.9), out)
    (lost,) = _manifest(out)["sources"][0]["unreadable"]
    assert lost["reason"].startswith("file unreadable from here on")
    assert lost["detail"].startswith("after ")


# --------------------------------------------------------------------------- 5. reasons and places


def test_bad_scores_point_at_their_own_file_and_share_one_drop_key(tmp_path):
    src = tmp_path / "lf"
    shutil.copytree(LANGFUSE, src)
    page = json.loads((src / "observations-page-1.json").read_text())
    gens = [o for o in page["data"] if o["type"] == "GENERATION"][:2]
    bad = [
        {
            "id": f"bad-{i}",
            "name": "user-feedback",
            "dataType": "BOOLEAN",
            "value": "maybe",
            "subject": {"kind": "observation", "id": g["id"], "traceId": g["traceId"]},
        }
        for i, g in enumerate(gens)
    ]
    (src / "scores-extra.json").write_text(json.dumps({"data": bad, "meta": {}}))
    out = tmp_path / "out"
    run_ingest(spec(("langfuse", src), max_quarantine_fraction=0.5), out)

    entries = {q["raw"]["id"]: q for q in read_jsonl(out / "quarantine.jsonl")}
    for i in range(2):
        q = entries[f"bad-{i}"]
        assert q["location"] == f"{src / 'scores-extra.json'}#data[{i}]"
        assert q["reason"] == "BOOLEAN score has no usable value"
        assert f"bad-{i}" in q["detail"]
    drops = _manifest(out)["drops"]
    assert drops["quarantined: BOOLEAN score has no usable value"] == 2
    assert not any("bad-" in k for k in drops)


def test_argilla_reasons_keep_values_out_of_the_drop_key(tmp_path):
    src = tmp_path / "argilla"
    shutil.copytree(ARGILLA, src)
    records = json.loads((src / "records.json").read_text())
    bad = [
        {"id": f"r{i}", "fields": records[0]["fields"], "responses": {"rating": [{"value": v}]}}
        for i, v in enumerate(["fünf", "five", "5!"])
    ] + [
        {"id": f"q{i}", "fields": records[0]["fields"], "responses": {f"mood{i}": [{"value": 1}]}}
        for i in range(2)
    ]
    (src / "records.json").write_text(json.dumps(records + bad))
    out = tmp_path / "out"
    run_ingest(spec(("argilla", src), max_quarantine_fraction=0.5), out)
    drops = {k: v for k, v in _manifest(out)["drops"].items() if k.startswith("quarantined")}
    assert drops == {
        "quarantined: rating is not a number": 3,
        "quarantined: response to a question the dataset does not have": 2,
    }
    details = {q["raw"]["id"]: q["detail"] for q in read_jsonl(out / "quarantine.jsonl")}
    assert details["r0"] == "'fünf'" and details["q1"] == "'mood1'"


def test_validation_reasons_name_list_positions_in_the_detail():
    from pydantic import BaseModel, ValidationError

    from feinschliff.ingest.records import reason_and_detail

    class M(BaseModel):
        items: list[int]

    with pytest.raises(ValidationError) as caught:
        M.model_validate({"items": [1, 2, "x"]})
    reason, detail = reason_and_detail(caught.value)
    assert reason.startswith("items.*: ") and detail == "at items.2"


# --------------------------------------------------------------------------- 6. usecase_heldout


def test_usecase_heldout_is_not_reported_as_unchecked(tmp_path, caplog):
    out = tmp_path / "out"
    caplog.set_level(logging.WARNING)
    run_ingest(spec(("argilla", ARGILLA_FLAT)), out, eval_tasks=["de_wissen_mc", "usecase_heldout"])
    decontam = _manifest(out)["decontamination"]
    assert decontam["unchecked"] == [] and decontam["eval_sets"] == ["de_wissen_mc"]
    assert "held-out split" in decontam["own_heldout"]["usecase_heldout"]
    assert not any("cannot check usecase_heldout" in r.getMessage() for r in caplog.records)
    card = _card(out)
    assert "Not checked (no local data)" not in card and "usecase_heldout" in card


def test_the_flows_ingest_key_does_not_report_usecase_heldout_either(caplog):
    from feinschliff.pipeline import ingest_fingerprint
    from feinschliff.recipe_loader import load_recipe

    caplog.set_level(logging.WARNING)
    recipe = load_recipe(ROOT / "recipes" / "demo-de.yaml")
    assert "usecase_heldout" in recipe.evaluate.tasks
    assert ingest_fingerprint(recipe)["unchecked"] == []
    assert not any("usecase_heldout" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- 7. failed runs


def test_a_failed_run_says_so_in_manifest_and_card_and_estimate_refuses_it(tmp_path):
    src = tmp_path / "argilla"
    shutil.copytree(ARGILLA, src)
    records = json.loads((src / "records.json").read_text())
    (src / "records.json").write_text(json.dumps(records[:3] + [{"broken": i} for i in range(3)]))
    out = tmp_path / "out"
    with pytest.raises(IngestError, match="quarantined"):
        run_ingest(spec(("argilla", src)), out)
    manifest = _manifest(out)
    assert manifest["status"] == "failed" and "max_quarantine_fraction" in manifest["error"]
    assert manifest["counts"]["quarantine.jsonl"] == 3  # still there for inspection
    assert _card(out).splitlines()[0] == "# INGEST FAILED: not a usable dataset"
    assert not (out / COMPLETE).exists()

    code, text = run_cli(
        "estimate", str(ROOT / "recipes" / "demo-de.yaml"), "--data", str(out), "--cpu"
    )
    assert code == 2 and "not a complete ingest, generate or mix output" in text


def test_a_format_error_leaves_a_failed_manifest_and_no_stray_folder(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(InvalidSource):
        run_ingest(spec(("argilla", LANGFUSE)), out)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "manifest.json"]
    manifest = _manifest(out)
    assert manifest["status"] == "failed" and "not an Argilla export" in manifest["error"]
    assert _card(out).startswith("# INGEST FAILED")
    run_ingest(spec(("argilla", ARGILLA_FLAT)), out)  # and the folder is reusable
    assert _manifest(out)["status"] == "complete"


def test_a_successful_run_is_marked_complete(tmp_path):
    out = tmp_path / "out"
    run_ingest(spec(("argilla", ARGILLA_FLAT)), out)
    assert _manifest(out)["status"] == "complete"
    assert _card(out).startswith("---\n")  # the Hugging Face metadata block
