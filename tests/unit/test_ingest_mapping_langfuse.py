"""Langfuse feedback that is valid but no training signal as it stands: BOOLEAN scores of
judges (only `rules.thumbs_scores` are thumbs), thumbs on spans in full-trace exports,
tool-call conversations, and input objects holding texts besides their prompt (built into the
prompt by `mapping.prompt_template`, else counted and named in a note)."""

from __future__ import annotations

import json
from pathlib import Path

from feinschliff.ingest import run_ingest
from feinschliff.ingest.langfuse_exports import read_exports
from feinschliff.ingest.records import FeedbackRecord, Quarantined, ReadLog
from feinschliff.recipe import FeedbackSpec
from feinschliff.specs.feedback import DerivationRules, SourceMapping
from tests.unit.test_ingest_parallel import read_both_ways

CONTEXT = "Auszug AGB: Die Kündigungsfrist beträgt vier Wochen zum Monatsende."
TEMPLATE = "{context}\n\nFrage: {question}"


def _obs(oid: str, inp: object, out: object = None, **extra) -> dict:
    out = out or {"role": "assistant", "content": f"Antwort zu {oid}: vier Wochen."}
    return {
        "id": oid,
        "traceId": f"t-{oid}",
        "type": "GENERATION",
        "startTime": "2026-11-01T09:00:00Z",
        "input": json.dumps(inp),  # v2 pages hold JSON strings
        "output": json.dumps(out),
        **extra,
    }


def _score(sid: str, obs: str, name: str = "user-feedback", value: object = True, **kw) -> dict:
    kind = kw.pop("kind", "BOOLEAN")
    subject = {"kind": "observation", "id": obs, "traceId": f"t-{obs}"}
    return {"id": sid, "name": name, "dataType": kind, "value": value, "subject": subject, **kw}


def _write(folder: Path, observations: list[dict], scores: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "scores.json").write_text(json.dumps({"data": scores, "meta": {}}))
    (folder / "observations.json").write_text(json.dumps({"data": observations, "meta": {}}))
    return folder


def _spec(folder: Path, workers: int = 1, template: str | None = None) -> FeedbackSpec:
    source: dict = {"kind": "langfuse", "path": str(folder)}
    if template is not None:
        source["mapping"] = {"prompt_template": template}
    return FeedbackSpec.model_validate(
        {
            "sources": [source],
            "pii": {"mode": "off"},
            "heldout_fraction": 0,
            "max_quarantine_fraction": 1.0,
            "workers": workers,
        }
    )


def _run(folder: Path, out: Path, **kw) -> dict:
    run_ingest(_spec(folder, **kw), out)
    return json.loads((out / "manifest.json").read_text())


def _rows(out: Path, name: str) -> list[dict]:
    path = out / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _ids(out: Path, name: str) -> list[str]:
    return sorted(r["provenance"]["source_id"] for r in _rows(out, name))


# --------------------------------------------------------------------------- L1: judges


def _judged(folder: Path) -> Path:
    """A user's thumbs, two judges' BOOLEAN verdicts (one on a generation not in the export)."""
    observations = [_obs(f"o{i}", [{"role": "user", "content": f"Frage {i}?"}]) for i in range(3)]
    scores = [
        _score("thumbs", "o0"),
        _score("halluc", "o1", "halluzination", True, source="EVAL"),
        _score("tox", "o2", "toxisch", False, source="EVAL"),
        _score("lost-judge", "nowhere", "halluzination", True),
    ]
    return _write(folder, observations, scores)


def test_only_boolean_scores_named_in_thumbs_scores_are_thumbs(tmp_path):
    out = tmp_path / "out"
    manifest = _run(_judged(tmp_path / "lf"), out)
    assert _ids(out, "sft") == ["o0"]  # the judge's True made no accepted answer
    assert _ids(out, "kto") == ["o0"]  # nor its False a thumbs-down
    assert _rows(out, "quarantine") == []  # a judge's orphan carried no training signal
    skipped = manifest["sources"][0]["skipped"]
    assert skipped["langfuse_score_BOOLEAN_not_used"] == 2
    assert skipped["langfuse_score_BOOLEAN_without_generation"] == 1
    notes = [n for n in manifest["notes"] if "BOOLEAN scores named" in n]
    assert len(notes) == 1
    assert "halluzination, toxisch" in notes[0] and "feedback.rules.thumbs_scores" in notes[0]


def test_a_thumbs_name_of_the_rules_is_read_as_thumbs(tmp_path):
    out = tmp_path / "out"
    spec = _spec(_judged(tmp_path / "lf"))
    spec = spec.model_copy(
        update={"rules": spec.rules.model_copy(update={"thumbs_scores": ["toxisch"]})}
    )
    run_ingest(spec, out)
    assert _ids(out, "kto") == ["o2"]
    assert [r["label"] for r in _rows(out, "kto")] == [False]


def test_a_judge_boolean_in_a_full_trace_is_no_thumbs():
    trace = {
        "id": "tr",
        "timestamp": "2026-11-01T09:00:00Z",
        "input": "Frage?",
        "output": "Antwort.",
        "observations": [],
        "scores": [{"id": "j", "name": "halluzination", "dataType": "BOOLEAN", "value": 1}],
    }
    log, items = _read_trace(trace)
    assert items == []
    assert log.stats["langfuse_score_BOOLEAN_not_used"] == 1
    assert any("halluzination" in n for n in log.notes)


# --------------------------------------------------------------------------- L2: spans


def _read_trace(trace: dict, tmp: Path | None = None, **kw) -> tuple[ReadLog, list]:
    import tempfile

    folder = Path(tmp or tempfile.mkdtemp())
    path = folder / f"trace-{trace['id']}.json"
    path.write_text(json.dumps(trace))
    log = ReadLog()
    return log, list(read_exports([path], log, DerivationRules(), **kw))


def test_a_full_trace_quarantines_thumbs_and_corrections_on_no_generation(tmp_path):
    gen = {
        "id": "gen-1",
        "type": "GENERATION",
        "startTime": "2026-11-01T09:00:00Z",
        "input": "Wann kommt der Techniker?",
        "output": "Morgen.",
    }
    trace = {
        "id": "ft",
        "timestamp": "2026-11-01T09:00:00Z",
        "observations": [{**gen, "id": "sp-1", "type": "SPAN"}, gen],
        "scores": [
            {"id": "s1", "observationId": "sp-1", "name": "user-feedback", "dataType": "BOOLEAN",
             "value": 0},
            {"id": "s2", "observationId": "gen-9", "name": "output", "dataType": "CORRECTION",
             "value": 0, "stringValue": "Am Donnerstag."},
        ],
    }  # fmt: skip
    log, items = _read_trace(trace, tmp_path)
    assert all(isinstance(i, Quarantined) for i in items)
    assert [i.raw["id"] for i in items] == ["s1", "s2"]
    assert {i.reason for i in items} == {"score refers to no known generation"}
    assert items[0].location.endswith("/scores[0]")


# --------------------------------------------------------------------------- L3: tool calls


TOOL_TURNS = [
    {"role": "user", "content": "Wie ist mein Kontostand?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "konto", "arguments": "{}"}}]},
    {"role": "tool", "tool_call_id": "c1", "content": '{"saldo": 12.5}'},
]  # fmt: skip


def test_tool_call_conversations_are_counted_not_quarantined(tmp_path):
    call = {"role": "assistant", "content": None, "tool_calls": TOOL_TURNS[1]["tool_calls"]}
    observations = [
        _obs("agent", TOOL_TURNS),
        _obs("calls", [TOOL_TURNS[0]], call),  # the answer is a tool call
        _obs("plain", [{"role": "user", "content": "Hallo?"}, {**TOOL_TURNS[1], "content": "Hi",
             "tool_calls": []}]),  # an empty tool_calls list: an ordinary turn
    ]  # fmt: skip
    scores = [_score(f"s-{o['id']}", o["id"]) for o in observations]
    out = tmp_path / "out"
    manifest = _run(_write(tmp_path / "lf", observations, scores), out)
    assert _rows(out, "quarantine") == []
    assert manifest["quarantined_share"] == 0.0
    assert _ids(out, "kto") == ["plain"]
    assert manifest["sources"][0]["skipped"]["langfuse_tool_call_conversation"] == 2
    assert len([n for n in manifest["notes"] if "tool-call conversations" in n]) == 1


# --------------------------------------------------------------------------- L4: input objects


def _objects(folder: Path) -> Path:
    history = [
        {"type": "human", "content": "Ich möchte den Tarif Öko Plus."},
        {"type": "ai", "content": "Gern, der Tarif ist verfügbar."},
    ]
    observations = [
        _obs("rag", {"context": CONTEXT, "question": "Wie lange ist meine Frist?", "k": 3}),
        _obs("chain", {"input": "Und wie viel kostet das?", "chat_history": history}),
        _obs("plain", "Wie hoch ist der Grundpreis?"),
        _obs("nums", {"question": "Wie viel kostet das?", "top_k": 4, "stream": False}),
        _obs("named", {"question": "Gilt das auch für Gas?", "dokument": CONTEXT}),
    ]
    return _write(folder, observations, [_score(f"s-{o['id']}", o["id"]) for o in observations])


def test_a_chat_history_becomes_the_earlier_turns(tmp_path):
    out = tmp_path / "out"
    _run(_objects(tmp_path / "lf"), out)
    (chain,) = [r for r in _rows(out, "sft") if r["provenance"]["source_id"] == "chain"]
    assert [(m["role"], m["content"]) for m in chain["messages"]] == [
        ("user", "Ich möchte den Tarif Öko Plus."),
        ("assistant", "Gern, der Tarif ist verfügbar."),
        ("user", "Und wie viel kostet das?"),
        ("assistant", "Antwort zu chain: vier Wochen."),
    ]


def test_other_texts_without_a_template_are_counted_and_named(tmp_path):
    out = tmp_path / "out"
    manifest = _run(_objects(tmp_path / "lf"), out)
    assert _ids(out, "sft") == ["chain", "nums", "plain"]  # numbers are no other texts
    assert _rows(out, "quarantine") == []
    assert manifest["sources"][0]["skipped"]["langfuse_input_with_other_texts"] == 2
    (note,) = [n for n in manifest["notes"] if "besides their prompt" in n]
    assert "keys context, dokument" in note
    assert "feedback.sources[0].mapping.prompt_template" in note


def test_a_prompt_template_builds_the_prompt_from_the_object(tmp_path):
    out = tmp_path / "out"
    _run(_objects(tmp_path / "lf"), out, template=TEMPLATE)
    prompts = {
        r["provenance"]["source_id"]: r["messages"][-2]["content"] for r in _rows(out, "sft")
    }
    assert prompts["rag"] == f"{CONTEXT}\n\nFrage: Wie lange ist meine Frist?"
    assert prompts["plain"] == "Wie hoch ist der Grundpreis?"  # a string ignores the template
    assert prompts["nums"] == "Wie viel kostet das?"  # so does an object of its prompt alone
    assert prompts["chain"] == "Und wie viel kostet das?"
    quarantined = _rows(out, "quarantine")  # its texts, but no {context}
    assert [q["raw"]["id"] for q in quarantined] == ["named"]
    assert {q["reason"] for q in quarantined} == {
        "prompt_template names a key the Langfuse input object lacks"
    }
    assert "'context'" in quarantined[0]["detail"]


def test_dataset_items_with_other_texts_follow_the_same_rule(tmp_path):
    item = {
        "id": "di-3",
        "status": "ACTIVE",
        "datasetId": "ds",
        "input": {"question": "Was ist ein Abschlag?", "context": CONTEXT},
        "expectedOutput": "Eine monatliche Vorauszahlung.",
    }
    path = tmp_path / "items.json"
    path.write_text(json.dumps({"data": [item], "meta": {}}))
    log = ReadLog()
    assert list(read_exports([path], log, DerivationRules())) == []
    assert log.stats["langfuse_input_with_other_texts"] == 1
    (record,) = read_exports([path], ReadLog(), DerivationRules(), SourceMapping(
        prompt_template=TEMPLATE))  # fmt: skip
    assert isinstance(record, FeedbackRecord)
    assert record.prompt[-1].content == f"{CONTEXT}\n\nFrage: Was ist ein Abschlag?"


# --------------------------------------------------------------------------- workers


def _both(folder: Path, tmp: Path, monkeypatch, **kw) -> list[tuple]:
    outputs, merged = read_both_ways(lambda w: _spec(folder, w, **kw), tmp, monkeypatch)
    assert merged  # the observation page went through a worker
    return outputs


def test_workers_read_judges_as_one_process_does(tmp_path, monkeypatch):
    one, two = _both(_judged(tmp_path / "lf"), tmp_path, monkeypatch)
    assert one == two
    assert any("halluzination, toxisch" in n for n in one[1][0]["notes"])


def test_workers_apply_the_prompt_template_as_one_process_does(tmp_path, monkeypatch):
    one, two = _both(_objects(tmp_path / "lf"), tmp_path, monkeypatch, template=TEMPLATE)
    assert one == two
    assert one[3]["quarantine.jsonl"] == 1 and one[3]["sft.jsonl"] == 4
    (rag,) = [r for r in _rows(tmp_path / "out2", "sft") if r["provenance"]["source_id"] == "rag"]
    assert rag["messages"][-2]["content"].startswith(CONTEXT)  # the worker had the template


def test_workers_name_the_other_texts_as_one_process_does(tmp_path, monkeypatch):
    one, two = _both(_objects(tmp_path / "lf"), tmp_path, monkeypatch)
    assert one == two
    assert one[1][0]["skipped"]["langfuse_input_with_other_texts"] == 2
    assert any("keys context, dokument" in n for n in one[1][0]["notes"])


def test_a_ui_export_without_the_thumbs_column_names_its_score_columns(tmp_path):
    """A team whose thumbs score is called `daumen` got 'no training rows' and a count of
    traces without feedback: the note now names the score columns the export does have."""
    path = tmp_path / "traces.csv"
    head = "id,timestamp,name,userId,input,output,totalCost,daumen,sterne\n"
    path.write_text(head + "c1,2026-11-03T08:00:00.000Z,chat,k1,Frage?,Antwort.,0,[1],[5]\n")
    log = ReadLog()
    assert list(read_exports([path], log, DerivationRules())) == []
    assert log.stats["langfuse_trace_without_feedback"] == 1
    assert any("its score columns: daumen, sterne" in n for n in log.notes), log.notes
    log = ReadLog()  # with the name configured the column is read
    records = list(read_exports([path], log, DerivationRules(thumbs_scores=["daumen"])))
    assert [v.value for r in records for v in r.votes] == [True]
    assert not any("score columns" in n for n in log.notes)


def test_the_manifest_names_the_source_and_keeps_its_mapping(tmp_path):
    """The note points at the recipe key to set, with the source's real index, and the
    manifest records how each export was read (its mapping) next to its fingerprints."""
    folder = _objects(tmp_path / "lf")
    spec = _spec(folder).model_dump()
    spec["sources"] = [{"kind": "langfuse", "path": str(folder)}, *spec["sources"]]
    spec["sources"][1]["mapping"] = {"prompt_template": "{question}"}
    out = tmp_path / "out"
    run_ingest(FeedbackSpec.model_validate(spec), out)
    manifest = json.loads((out / "manifest.json").read_text())
    first, second = manifest["sources"]
    assert first["mapping"] == {} and second["mapping"] == {"prompt_template": "{question}"}
    (note,) = first["notes"]
    assert "feedback.sources[0].mapping.prompt_template" in note
    assert note in manifest["notes"] and "sources[i]" not in json.dumps(manifest)
