"""Generate-stage review findings: broken teacher text, fenced JSON, local model identity,
held-out leaks, budget stops, non-UTF-8 seeds, concurrent runs, mix rounding.

The teacher is a remote (often third-party) API that cannot run here: the end-to-end tests run
the real CLI and the real distilabel child process against a local fake OpenAI-compatible
server (``tests.http_stub``) that answers as a misbehaving endpoint does (a lone surrogate
escape, JSON in a Markdown code fence, slow replies). The tests of pure post-processing
(held-out filtering) replace the child by the leaves it would have saved, as
tests/unit/test_generate_stage.py does: the filter runs in the stage, on whatever rows came back.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest
import yaml
from typer.testing import CliRunner

from feinschliff.artifacts import DatasetRef, mark_complete
from feinschliff.cli import app
from feinschliff.cli.app import Failure
from feinschliff.generate import stage
from feinschliff.generate.mix import merge_datasets, weighted
from feinschliff.generate.select import select_instructions
from feinschliff.generate.stage import (
    GenerateError,
    cache_key,
    request_cache_path,
    run_generate,
    stopped_by_budget,
)
from feinschliff.generate.teacher import TeacherLLM
from feinschliff.generate.templates import parse_instructions, parse_ratings
from feinschliff.recipe_loader import load_recipe
from feinschliff.specs.generate import GenerateSpec, MixSpec
from tests.http_stub import StubHandler, base_url, serve

ROOT = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).parent / "feinschliff")
runner = CliRunner()

ANSWER = "Gerne helfe ich Ihnen weiter: das geht ganz einfach im Kundenportal unter Verträge."


def _recipe(tmp_path: Path, url: str = "http://127.0.0.1:9/v1", **generate) -> Path:
    data = yaml.safe_load((ROOT / "recipes" / "demo-de.yaml").read_text())
    for src in data["feedback"]["sources"]:
        src["path"] = str((ROOT / "recipes" / src["path"]).resolve())
    if not (tmp_path / "themen.txt").exists():
        (tmp_path / "themen.txt").write_text("Tarifwechsel\nZählerstand melden\n", "utf-8")
    data["generate"] = {
        "seeds": {"topics": "themen.txt", "pii": "off"},
        "num_instructions": 4,
        "instructions_per_seed": 2,
        "teacher": {"kind": "openai", "base_url": url, "model": "teacher"},
        "filters": {"decontaminate": False},
        "retries": 0,
        "backoff_s": 0.0,
        "concurrency": 2,
        **generate,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


class Misbehaving(StubHandler):
    """Self-instruct for "Tarifwechsel": JSON whose first question ends in a lone surrogate
    escape; for the other seed: JSON in a ```json fence (response_format ignored). An answer
    about a move (Umzug) holds a raw lone surrogate. Every reply takes ``delay`` seconds."""

    delay = 0.0

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        body = json.loads(self.read_body())
        time.sleep(self.delay)
        prompt = body["messages"][-1]["content"]
        if "anfragen" in json.dumps(body.get("response_format") or {}):
            if "Tarifwechsel" in prompt:
                qs = [
                    "Was muss ich bei einem Tarifwechsel beachten? \ud83d",
                    "Wie lange dauert ein Tarifwechsel bei Ihnen?",
                ]
                content = json.dumps({"anfragen": qs})  # ASCII: the escape "\ud83d" as text
            else:
                qs = ["Wie melde ich meinen Zählerstand online?", "Wie melde ich einen Umzug an?"]
                content = "```json\n" + json.dumps({"anfragen": qs}, indent=2) + "\n```"
        elif "Umzug" in prompt:
            content = ANSWER + " \ud83d"  # a real lone surrogate once the body is decoded
        else:
            content = ANSWER
        self.respond_completion(body, content)


@pytest.fixture()
def teacher():
    class Slow(Misbehaving):
        delay = 1.0

    server = serve(Slow)
    yield base_url(server) + "/v1"
    server.shutdown()


def _cli(tmp_path: Path, recipe: Path, out: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "FEINSCHLIFF_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        [CLI, "generate", str(recipe), "--out", str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# --------------------------------------------------------------------------- 1, 2, 7: end to end


@pytest.mark.timeout(400)
def test_broken_teacher_text_and_fenced_json_cost_their_rows_only_and_out_is_held(
    tmp_path, teacher
):
    """Before: the lone surrogate crashed distilabel's output thread, the child said "ok" with
    no leaves and the run failed "no rows survived" (every rerun alike, from the cache); the
    fenced reply became questions like "```json" and "{"; a second run on the same --out
    deleted the first one's work."""
    out = tmp_path / "out"
    first = _cli(tmp_path, _recipe(tmp_path, teacher), out)
    try:
        deadline = time.monotonic() + 240
        while not (out / ".work" / "job.json").exists():  # the first run holds out by now
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the first run never started its child"
            time.sleep(0.2)
        second = _cli(tmp_path, tmp_path / "recipe.yaml", out)
        _, said = second.communicate(timeout=120)
        assert second.returncode == 1, said
        assert f"{out} is being written by another run (pid {first.pid} on " in said
        stdout, stderr = first.communicate(timeout=300)
    finally:  # a failed assertion must not leave the first run behind
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert first.returncode == 0, stderr[-3000:]

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["drops"]["instructions"] == {"instruction_invalid_text": 1}
    assert manifest["drops"]["sft"] == {"answer_invalid_text": 1}
    rows = [json.loads(line) for line in (out / "sft.jsonl").read_text("utf-8").splitlines()]
    assert sorted(r["messages"][0]["content"] for r in rows) == [
        "Wie lange dauert ein Tarifwechsel bei Ihnen?",
        "Wie melde ich meinen Zählerstand online?",
    ]
    assert json.loads(stdout)["counts"]["sft.jsonl"] == 2


def test_parsing_never_turns_json_syntax_into_questions_and_cleans_surrogates():
    fenced = (
        "```json\n" + json.dumps({"anfragen": ["Wie kündige ich?", "Was kostet das?"]}) + "\n```"
    )
    assert parse_instructions(fenced) == ["Wie kündige ich?", "Was kostet das?"]
    assert parse_instructions(fenced, True) == ["Wie kündige ich?", "Was kostet das?"]
    prose = 'Hier sind die Anfragen: {"anfragen": ["Wie kündige ich?"]} Viel Erfolg!'
    assert parse_instructions(prose, True) == ["Wie kündige ich?"]
    # a JSON request answered without the object: unparseable, never split into lines
    assert parse_instructions('{"fragen": [\n"Wie kündige ich?"\n]}', True) == []
    # a free-text request keeps its lines, fence lines left out
    assert parse_instructions("```\nWie kündige ich?\n```") == ["Wie kündige ich?"]

    questions = parse_instructions(json.dumps({"anfragen": ["Wie kündige ich? \ud83d", "Warum?"]}))
    orjson.dumps(questions)  # what distilabel's writer does with a batch: no TypeError
    selected, drops = select_instructions([("s", questions)], 10, 3, 100)
    assert selected == [("s", "Warum?")] and drops == {"instruction_invalid_text": 1}

    judged = json.dumps({"bewertungen": [{"note": 4, "begruendung": "gut \ud83d"}]})
    ratings, reasons = parse_ratings("```json\n" + judged + "\n```", 1)
    assert ratings == [4] and orjson.dumps(reasons)


def test_a_raw_lone_surrogate_in_a_reply_is_cached_and_marked_not_a_teacher_failure(tmp_path):
    """The reply's JSON body holds "\\ud83d" in the content itself: before, writing it to the
    request cache raised UnicodeEncodeError, which failed the whole run as a teacher failure.
    (httpx.MockTransport stands in for the remote endpoint, as in test_generate_teacher.py.)"""
    body = {
        "choices": [{"index": 0, "message": {"content": "Gerne \ud83d"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1},
    }
    llm = TeacherLLM(
        model="t",
        base_url="http://teacher.invalid/v1",
        cache_path=str(tmp_path / "requests.jsonl"),
        ledger_path=str(tmp_path / "ledger.json"),
    )
    llm.load()
    llm._ledger.reset()
    llm._client = httpx.AsyncClient(
        transport=httpx.MockTransport(lambda r: httpx.Response(200, content=json.dumps(body)))
    )
    messages = [{"role": "user", "content": "Hallo"}]
    out = asyncio.run(llm.agenerate(messages, max_new_tokens=8))
    assert out["generations"] == ["Gerne \uffff"]  # templates.BROKEN: invalid_text drops it
    assert llm._ledger.read()["failed"] is None
    assert "Gerne \uffff" in (tmp_path / "requests.jsonl").read_text("utf-8")  # cached


def test_a_child_that_saved_no_output_after_answered_requests_is_a_pipeline_error(
    tmp_path, monkeypatch
):
    """The child used to report "ok" with no leaves when distilabel's output thread died (the
    traceback only in the log); the stage then blamed the filters."""
    from distilabel.distiset import Distiset

    from feinschliff.generate import child, tasks
    from feinschliff.generate.ledger import Ledger

    ledger = Ledger(tmp_path / "ledger.json", None, None)
    ledger.reset()

    class Pipeline:
        def run(self, use_cache):
            ledger.record(cache_hit=True, tokens=0, truncated=0, rejected=0, reserved=0)
            return Distiset()  # what distilabel returns when no batch could be written

    monkeypatch.setattr(tasks, "build_pipeline", lambda job: Pipeline())
    spec = GenerateSpec.model_validate(
        {
            "seeds": {"topics": "t.txt"},
            "teacher": {"kind": "openai", "base_url": "http://t/v1", "model": "t"},
        }
    )
    job = child.GenerateJob(
        spec=spec,
        seeds=[("t.txt:1", "Tarifwechsel")],
        teacher_model="t",
        judge_model="t",
        teacher_cache=str(tmp_path / "c.jsonl"),
        judge_cache=str(tmp_path / "c.jsonl"),
        ledger=str(ledger.path),
        pipeline_cache=str(tmp_path / "p"),
        distiset=str(tmp_path / "distiset"),
        status=str(tmp_path / "status.json"),
    )
    status = child.run_job(job)
    assert status["state"] == "failed"
    assert "saved no output although 1 request(s) were answered" in status["error"]


# --------------------------------------------------------------------------- 3: local models


def test_a_local_model_folder_holding_another_model_gets_new_keys(tmp_path, monkeypatch):
    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))
    folder = tmp_path / "teacher-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "model.safetensors").write_bytes(b"weights-v1")
    (tmp_path / "t.txt").write_text("Tarifwechsel\n")
    spec = GenerateSpec.model_validate(
        {
            "seeds": {"topics": str(tmp_path / "t.txt"), "pii": "off"},
            "teacher": {"kind": "transformers", "model": str(folder)},
        }
    )
    body = {"model": str(folder), "messages": [{"role": "user", "content": "x"}], "n": 1}

    def keys():
        llm = TeacherLLM(kind="transformers", model=str(folder), cache_path="-", ledger_path="-")
        return cache_key(spec, None), request_cache_path(spec.teacher), llm._cache_identity(body)

    before = keys()
    assert keys() == before  # stable while the folder is unchanged
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    (folder / "model.safetensors").write_bytes(b"weights-v2, another model")
    after = keys()
    for old, new, what in zip(before, after, ("output key", "cache file", "request"), strict=True):
        assert old != new, what
    # an endpoint keeps its cache file (its name is all there is)
    endpoint = {"kind": "openai", "base_url": "http://t/v1", "model": "t"}
    remote = GenerateSpec.model_validate({**spec.model_dump(), "teacher": endpoint})
    name = hashlib.sha256(b"http://t/v1|t").hexdigest()[:16]
    assert request_cache_path(remote.teacher).name == f"requests-{name}.jsonl"


# --------------------------------------------------------------------------- 4: held-out prompts

QUESTION = "Wie kündige ich meinen Vertrag fristgerecht (schriftlich)?"
NEAR = "Wie kündige ich meinen Vertrag fristgerecht schriftlich."  # punctuation differs
KEPT = "Wie ändere ich meinen monatlichen Abschlag im Kundenportal?"


def _ingest_with_heldout(root: Path) -> DatasetRef:
    (root / "heldout").mkdir(parents=True)
    (root / "sft.jsonl").write_text("")
    pair = {
        "chosen": [{"role": "assistant", "content": "Gern, so geht das."}],
        "rejected": [{"role": "assistant", "content": "Keine Ahnung."}],
    }
    rows = [{"prompt": [{"role": "user", "content": q}], **pair} for q in (QUESTION, NEAR)]
    (root / "heldout" / "preference.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8"
    )
    return DatasetRef(path=str(root), sha256=mark_complete(root, stage="ingest", key="x"))


@pytest.mark.parametrize("dedup", [True, False])
def test_heldout_prompts_never_become_training_rows(tmp_path, monkeypatch, dedup):
    """``usecase_heldout`` is "not in training by construction": before, dedup_against_feedback
    false let every held-out prompt in, and true still let one in that differed by a
    punctuation mark. (The teacher's rows come as the saved leaves: the filter runs on them.)"""
    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))
    questions = ["Wie kündige ich meinen Vertrag fristgerecht schriftlich?", NEAR, KEPT]
    leaves = {
        "instructions_raw": [{"seed_id": "s", "instructions": questions}],
        "answers": [{"seed_id": "s", "instruction": q, "generation": ANSWER} for q in questions],
    }
    status = {
        k: 0 for k in ("requests", "tokens", "cache_hits", "rejected", "refused", "truncated")
    }
    monkeypatch.setattr(stage, "_run_child", lambda *a: {**status, "budget_exhausted": None})
    monkeypatch.setattr(stage, "_load_leaves", lambda p: leaves)
    filters = {"decontaminate": False, "dedup_against_feedback": dedup}
    recipe = load_recipe(_recipe(tmp_path, filters=filters))
    feedback = _ingest_with_heldout(tmp_path / "ingest")
    out = tmp_path / "out"
    run_generate(recipe, out, feedback=feedback)
    rows = [json.loads(line) for line in (out / "sft.jsonl").read_text("utf-8").splitlines()]
    assert [r["messages"][0]["content"] for r in rows] == [KEPT]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["drops"]["sft"] == {"heldout_prompt": 2}

    key = cache_key(recipe.generate, feedback)  # the held-out split is an input, dedup or not
    (tmp_path / "ingest" / "heldout" / "preference.jsonl").write_text("")
    assert cache_key(recipe.generate, feedback) != key


# --------------------------------------------------------------------------- 5: budget


@pytest.mark.timeout(300)
def test_a_budget_spent_on_questions_is_a_stopped_output_not_a_failure(tmp_path, teacher):
    """max_requests=2 goes to the two self-instruct requests: no question is answered. Before,
    the run failed "no rows survived generation and filtering" (and `feinschliff run` with
    it); the next run, continuing from the cache, succeeded."""
    out = tmp_path / "out"
    proc = _cli(tmp_path, _recipe(tmp_path, teacher, budget={"max_requests": 2}), out)
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr[-3000:]
    assert (
        "warning: stopped early (budget: max_requests=2 reached) before any question was "
        "answered: no rows yet; rerun to continue (2 teacher replies of this run are cached"
    ) in stderr
    assert "no rows survived" not in stderr
    result = json.loads(stdout)
    assert result["counts"]["sft.jsonl"] == 0
    assert result["stopped_by_budget"] == "budget: max_requests=2 reached"
    assert stopped_by_budget(out)  # the flow's generate key: not cached, the rerun continues


def test_rows_all_filtered_while_on_budget_still_fail_and_say_the_budget_stopped(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))
    leaves = {
        "instructions_raw": [{"seed_id": "s", "instructions": ["Wie kündige ich?"]}],
        "answers": [{"seed_id": "s", "instruction": "Wie kündige ich?", "generation": "Kurz."}],
    }
    status = {
        k: 0 for k in ("requests", "tokens", "cache_hits", "rejected", "refused", "truncated")
    }
    stopped = {"budget_exhausted": "budget: max_requests=2 reached", "refused": 3}
    monkeypatch.setattr(stage, "_run_child", lambda *a: {**status, **stopped})
    monkeypatch.setattr(stage, "_load_leaves", lambda p: leaves)
    with pytest.raises(GenerateError, match=r"no rows survived .*stopped early: budget"):
        run_generate(load_recipe(_recipe(tmp_path)), tmp_path / "out")


# --------------------------------------------------------------------------- 6: seeds


def test_a_seed_file_that_is_not_utf8_is_an_argument_error_before_anything_is_written(tmp_path):
    recipe = _recipe(tmp_path)
    (tmp_path / "themen.txt").write_bytes("Tarifwechsel\nZählerstand melden\n".encode("latin-1"))
    out = tmp_path / "o"
    result = runner.invoke(app, ["generate", str(recipe), "--out", str(out)])
    assert isinstance(result.exception, Failure) and result.exception.code == 2, result.exception
    assert str(result.exception) == (
        f"seeds.topics: {tmp_path / 'themen.txt'} is not UTF-8 (byte 0xe4 at offset 14); "
        "save it as UTF-8"
    )
    assert not out.exists()  # no .inputs stamp, nothing to clean up
    # `run`: refused before Prefect starts and the ingest runs (it failed after the ingest)
    work = tmp_path / "work"
    result = runner.invoke(app, ["run", str(recipe), "--workdir", str(work)])
    assert isinstance(result.exception, Failure) and result.exception.code == 2, result.exception
    assert "seeds.topics:" in str(result.exception) and "is not UTF-8" in str(result.exception)
    assert not work.exists()


def test_macos_appledouble_files_in_documents_are_skipped(tmp_path, caplog):
    from feinschliff.generate.seeds import read_seeds

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("Der Abschlag wird monatlich gezahlt.\n", "utf-8")
    (docs / "._a.md").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X \xe4\xff")
    spec = GenerateSpec.model_validate(
        {
            "seeds": {"documents": str(docs), "pii": "off"},
            "teacher": {"kind": "openai", "base_url": "http://t/v1", "model": "t"},
        }
    )
    with caplog.at_level("INFO"):
        seeds = read_seeds(spec.seeds)
    assert seeds.items == [("a.md#1", "Der Abschlag wird monatlich gezahlt.")]
    assert list(seeds.inputs) == [str(docs / "a.md")]
    assert "._a.md (a macOS AppleDouble file" in caplog.text
    key = cache_key(spec, None)
    (docs / "._a.md").write_bytes(b"\x00\x05\x16\x07 touched by Finder")
    assert cache_key(spec, None) == key  # no input of the output either


# --------------------------------------------------------------------------- 7: one writer


def _hold(out: Path):
    """Take the output's lock as another run would (flock on .<name>.lock beside it)."""
    f = (out.parent / f".{out.name}.lock").open("a+")
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    f.write("pid 4242 on elsewhere since then\n")
    f.flush()
    return f


def test_a_generate_run_on_an_output_another_run_holds_is_refused_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(stage, "_run_child", lambda *a: pytest.fail("the second run started"))
    out = tmp_path / "out"
    recipe = load_recipe(_recipe(tmp_path))
    busy = pytest.raises(GenerateError, match=r"being written by another run \(pid 4242 on")
    with _hold(out), busy:
        run_generate(recipe, out)
    assert not out.exists()


def _empty_generate_output(gen: Path) -> DatasetRef:
    gen.mkdir()
    (gen / "sft.jsonl").write_text("")
    return DatasetRef(path=str(gen), sha256=mark_complete(gen, stage="generate", key="g"))


def test_a_mix_into_an_output_another_run_holds_is_refused(tmp_path):
    feedback = _ingest_with_heldout(tmp_path / "ingest")
    generated = _empty_generate_output(tmp_path / "gen")
    out = tmp_path / "mixed"
    with _hold(out), pytest.raises(RuntimeError, match="being written by another run"):
        merge_datasets(feedback, generated, MixSpec(), out)
    assert not out.exists()
    merge_datasets(feedback, generated, MixSpec(), out)  # released: it runs


# --------------------------------------------------------------------------- 8: mix rounding


def test_mix_shares_round_half_up_and_a_weight_above_zero_keeps_a_row():
    rows = [{"i": i} for i in range(10)]
    for n, weight, expected in (
        (1, 0.5, 1),  # round(0.5) == 0: the only synthetic row was dropped
        (5, 0.5, 3),  # round(2.5) == 2
        (1, 0.1, 1),  # a weight above 0 keeps a row of a source that has any
        (10, 0.3, 3),
        (10, 0.25, 3),
        (10, 2.05, 21),
        (3, 0.0, 0),
        (0, 0.5, 0),
    ):
        assert len(weighted(rows[:n], weight, "s")) == expected, (n, weight)


# --------------------------------------------------------------------------- second review


def test_a_copied_local_model_folder_keeps_its_request_identity(tmp_path, monkeypatch):
    """``cp -r`` of a local teacher's folder (new mtimes, same bytes) re-asked every cached
    request; a changed config still gets a new request identity."""
    import shutil

    from tests.unit.tiny_llama import make_tiny_llama

    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))
    folder = make_tiny_llama(tmp_path / "teacher", ["hallo", "welt"])
    spec = GenerateSpec.model_validate(
        {
            "seeds": {"topics": "t.txt", "pii": "off"},
            "teacher": {"kind": "transformers", "model": str(folder)},
        }
    )
    body = {"model": str(folder), "messages": [{"role": "user", "content": "x"}], "n": 1}

    def identity():
        llm = TeacherLLM(kind="transformers", model=str(folder), cache_path="-", ledger_path="-")
        return request_cache_path(spec.teacher), llm._cache_identity(body)

    before = identity()
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy, copy_function=shutil.copyfile)  # new mtimes
    for path in copy.iterdir():
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    shutil.rmtree(folder)
    copy.rename(folder)
    assert identity() == before
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 2}))
    after = identity()
    assert after[0] != before[0] and after[1] != before[1]


def test_json_replies_are_never_split_into_lines_and_the_keyed_object_is_taken():
    fenced_list = "```json\n" + json.dumps(["Wie kündige ich?", "Was gilt?"], indent=2) + "\n```"
    assert parse_instructions(fenced_list) == ["Wie kündige ich?", "Was gilt?"]
    assert parse_instructions('{"fragen": ["Wie kündige ich?"]}') == []  # other JSON: no question
    truncated = '```json\n{"anfragen": ["Wie kündige ich?", "Welche Fristen gel'
    assert parse_instructions(truncated) == [] and parse_instructions(truncated, True) == []
    # the object holding the key, not the first that decodes (an example, a schema)
    reply = 'Format: {} \n{"anfragen": ["Wie kündige ich?"]}'
    assert parse_instructions(reply, True) == ["Wie kündige ich?"]
    reply = 'Schema: {"anfragen": "string"}\n```json\n{"anfragen": ["Wie kündige ich?"]}\n```'
    assert parse_instructions(reply, True) == ["Wie kündige ich?"]
    judged = '{"beispiel": 1} {"bewertungen": [{"note": 4, "begruendung": "gut"}, '
    judged += '{"note": 2, "begruendung": "schlecht"}]}'
    assert parse_ratings(judged, 2) == ([4, 2], ["gut", "schlecht"])
    # an endpoint that ignored response_format and wrote a numbered list: its questions, as before
    plain = "1. Wie kündige ich meinen Vertrag?\n2. Welche Fristen gelten?"
    assert parse_instructions(plain, True) == [
        "Wie kündige ich meinen Vertrag?",
        "Welche Fristen gelten?",
    ]


def test_a_replacement_character_of_the_text_itself_is_no_broken_text():
    pdf = "Was bedeutet \u201eZ\ufffdhlerstandsmeldung\u201c in Ihrem Merkblatt?"
    questions = parse_instructions(json.dumps({"anfragen": [pdf, "Wie kündige ich? \ud83d"]}))
    selected, drops = select_instructions([("s", questions)], 10, 3, 300)
    assert selected == [("s", pdf)] and drops == {"instruction_invalid_text": 1}


LONG = "Kann ich meinen monatlichen Abschlag im Kundenportal auch rückwirkend für das letzte Jahr ändern lassen?"


def test_heldout_guard_compares_questions_only_with_hashed_ngrams():
    from feinschliff.generate.postprocess import HeldoutGuard

    kb = (
        "Der monatliche Abschlag wird anhand Ihres Vorjahresverbrauchs berechnet und kann im "
        "Kundenportal jederzeit angepasst werden, sofern die Änderung mindestens zehn Euro beträgt."
    )
    guard = HeldoutGuard([f"Kontext: {kb}\n\nFrage: Kann ich fünf Euro weniger zahlen?", LONG], 13)

    def row(question: str, answer: str = ANSWER) -> dict:
        msgs = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        return {"messages": msgs}

    # a different question whose grounded answer quotes the knowledge base: kept
    assert not guard.leaks(row("Wie wird die Höhe meines Abschlags festgelegt?", kb))
    # a long held-out question quoted inside another question: a leak
    assert guard.leaks(row(f"Meine Nachbarin fragt: {LONG} Was soll ich ihr sagen?"))
    assert guard.leaks(row(LONG.upper().replace("?", " !")))  # exact up to case/punctuation
    # a short held-out-like phrase inside a longer question: no 13-gram rule below 13 words
    assert not guard.leaks(row("Kann ich fünf Euro weniger zahlen, wenn ich umziehe?"))
    assert guard.grams and all(type(g) is int for g in guard.grams)  # hashes, not tuples


def test_a_local_judge_folder_swap_changes_the_output_key(tmp_path, monkeypatch):
    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))
    judge = tmp_path / "judge"
    judge.mkdir()
    (judge / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "t.txt").write_text("Tarifwechsel\n")
    spec = GenerateSpec.model_validate(
        {
            "seeds": {"topics": str(tmp_path / "t.txt"), "pii": "off"},
            "teacher": {"kind": "openai", "base_url": "http://t/v1", "model": "t"},
            "preference": {"judge": {"kind": "transformers", "model": str(judge)}},
        }
    )
    before = cache_key(spec, None)
    (judge / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    assert cache_key(spec, None) != before


def test_refused_runs_create_no_folders_and_a_reused_output_needs_no_lock(tmp_path, monkeypatch):
    recipe = _recipe(tmp_path)
    (tmp_path / "themen.txt").write_bytes("Tarifwechsel\nZählerstand\n".encode("latin-1"))
    out = tmp_path / "new" / "deep" / "gen"
    with pytest.raises(GenerateError, match="not UTF-8"):
        run_generate(load_recipe(recipe), out)
    assert not (tmp_path / "new").exists()

    feedback = _ingest_with_heldout(tmp_path / "ingest")
    generated = _empty_generate_output(tmp_path / "gen")
    mixed = tmp_path / "mixed"
    first = merge_datasets(feedback, generated, MixSpec(), mixed)

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    import feinschliff.pipeline

    monkeypatch.setattr(feinschliff.pipeline, "run_lock", read_only)
    assert merge_datasets(feedback, generated, MixSpec(), mixed) == first  # reused, no lock
    with pytest.raises(RuntimeError, match="cannot create the lock .*must be writable"):
        merge_datasets(feedback, generated, MixSpec(), tmp_path / "m2")
