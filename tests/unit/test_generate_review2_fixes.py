"""Fixes of the generate stage's second review: the held-out guard's n in the output key,
the teacher's progress shown while the generation process runs."""

from __future__ import annotations

from pathlib import Path

from feinschliff.artifacts import DatasetRef
from feinschliff.generate.keys import cache_key
from feinschliff.recipe_loader import load_recipe
from tests.unit.test_generate_stage import _recipe


def _feedback(tmp_path: Path) -> DatasetRef:
    data = tmp_path / "feedback"
    (data / "heldout").mkdir(parents=True)
    (data / "sft.jsonl").write_text("{}\n", encoding="utf-8")
    return DatasetRef(path=str(data), sha256="a" * 64)


def test_the_heldout_guards_ngram_is_keyed_without_decontamination(tmp_path):
    # HeldoutGuard drops questions sharing an n-word run with a held-out prompt whatever
    # `decontaminate` says; with it off, n was not in the key, so an output filtered with
    # n=13 was reused after n=8 asked for a stricter guard
    spec = load_recipe(_recipe(tmp_path)).generate
    off = spec.model_copy(
        update={"filters": spec.filters.model_copy(update={"decontaminate": False})}
    )
    fb = _feedback(tmp_path)
    assert cache_key(off, fb, ngram=13) != cache_key(off, fb, ngram=8)
    assert cache_key(spec, fb, ngram=13) != cache_key(spec, fb, ngram=8)
    # no feedback, no guard: n changes nothing there (and existing keys stay as they were)
    assert cache_key(off, None, ngram=13) == cache_key(off, None, ngram=8)


# A child that answers one request and takes a second one from the cache, then works on.
SLOW_CHILD = """
import sys, time
from pathlib import Path
from feinschliff.generate.ledger import Ledger

ledger = Ledger(Path(sys.argv[1]), None, None)
ledger.reserve(40)
ledger.record(cache_hit=False, tokens=37, truncated=0, rejected=0, reserved=40)
ledger.record(cache_hit=True, tokens=0, truncated=0, rejected=0, reserved=0)
time.sleep(2.5)
"""


def test_a_long_run_logs_the_teachers_progress_while_it_runs(tmp_path, monkeypatch, caplog):
    # the child's log goes to generate.log only: a run of hours said nothing between its
    # first line and its end (in the CLI and in the flow's logs alike)
    import sys

    from feinschliff.generate import watch
    from feinschliff.generate.ledger import Ledger

    monkeypatch.setattr(watch, "PROGRESS_S", 0.5)
    ledger = Ledger(tmp_path / "ledger.json", None, None)
    ledger.reset()
    log_path = tmp_path / "generate.log"
    caplog.set_level("INFO", logger="feinschliff.generate")
    with log_path.open("wb") as log_file:
        code, failed = watch._watch_child(
            [sys.executable, "-c", SLOW_CHILD, str(ledger.path)],
            log_file,
            log_path,
            ledger,
            planned=9,
        )
    assert (code, failed) == (0, None)
    lines = [r.getMessage() for r in caplog.records if "teacher requests handled" in r.getMessage()]
    assert len(lines) >= 2, caplog.text
    assert lines[-1].startswith(
        "generate: 2 of at most 9 teacher requests handled: 1 sent, 1 from the cache, "
        "0 not sent; 37 tokens"
    ), lines[-1]
    assert str(log_path) in lines[-1]


def test_a_progress_line_says_why_the_run_is_stopping():
    from feinschliff.generate.watch import progress_line

    state = {"requests": 3, "refused": 4, "tokens": 900, "budget_exhausted": "budget: x"}
    assert progress_line(state, None) == (
        "7 teacher requests handled: 3 sent, 0 from the cache, 4 not sent; 900 tokens; "
        "stopping: budget: x"
    )


def test_seed_files_saved_with_a_byte_order_mark_read_as_their_text(tmp_path):
    # Windows editors write a UTF-8 BOM: the first JSONL line was refused as invalid JSON
    # (exit 2) and a topics file's first `#` comment became a topic sent to the teacher
    from feinschliff.generate.seeds import SeedError, read_seeds
    from feinschliff.specs.generate import SeedsSpec

    bom = "\ufeff".encode()
    (tmp_path / "themen.txt").write_bytes(bom + "# Themen\r\nZählerstand melden\r\n".encode())
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.jsonl").write_bytes(bom + b'{"text": "Abschl\\u00e4ge \\u00e4ndern"}\n')
    (tmp_path / "docs" / "b.md").write_bytes(bom + b"Erster Absatz.\r\n\r\nZweiter.\r\n")
    seeds = read_seeds(
        SeedsSpec(topics=str(tmp_path / "themen.txt"), documents=str(tmp_path / "docs"), pii="off")
    )
    assert seeds.items == [
        ("themen.txt:2", "Zählerstand melden"),
        ("a.jsonl#1", "Abschläge ändern"),
        ("b.md#1", "Erster Absatz.\n\nZweiter."),
    ]
    # a bad byte is still named at its offset in the file
    (tmp_path / "themen.txt").write_bytes(bom + b"Tarif\xe4")
    try:
        read_seeds(SeedsSpec(topics=str(tmp_path / "themen.txt"), pii="off"))
    except SeedError as exc:
        assert "byte 0xe4 at offset 8" in str(exc)
    else:
        raise AssertionError("not refused")


def _finished_run(tmp_path, monkeypatch, status_update):
    """``run_generate`` on one kept row, the child's ledger state replaced by ``status``."""
    from feinschliff.generate import stage
    from tests.unit.test_generate_review_fixes import ANSWER, KEPT
    from tests.unit.test_generate_review_fixes import _recipe as _cli_recipe

    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))
    leaves = {
        "instructions_raw": [{"seed_id": "s", "instructions": [KEPT]}],
        "answers": [{"seed_id": "s", "instruction": KEPT, "generation": ANSWER}],
    }
    status = {
        k: 0 for k in ("requests", "tokens", "cache_hits", "rejected", "refused", "truncated")
    }
    status.update({"requests": 3, "tokens": 130, **status_update})
    monkeypatch.setattr(stage, "_run_child", lambda *a: status)
    monkeypatch.setattr(stage, "_load_leaves", lambda p: leaves)
    recipe = load_recipe(_cli_recipe(tmp_path, filters={"decontaminate": False}))
    out = tmp_path / "out"
    return recipe, stage.run_generate(recipe, out)


def test_a_token_cap_passed_by_the_last_request_stops_nothing(tmp_path, monkeypatch):
    # the request that carries the tokens past max_tokens marks the budget spent; when it was
    # the last one nothing was refused, yet the complete output was marked stopped: never
    # reused (a rerun), and "stopped early ... rerun to continue" though nothing was missing
    from feinschliff.generate.keys import reusable_output, stopped_by_budget

    spent = {"budget_exhausted": "budget: max_tokens=100 reached", "refused": 0}
    recipe, ref = _finished_run(tmp_path, monkeypatch, spent)
    assert not stopped_by_budget(ref.dir)
    assert reusable_output(ref.dir, stage_key(recipe)) is not None


def test_a_budget_that_refused_requests_still_stops_the_run(tmp_path, monkeypatch):
    from feinschliff.generate.keys import stopped_by_budget

    spent = {"budget_exhausted": "budget: max_tokens=100 reached", "refused": 2}
    _, ref = _finished_run(tmp_path, monkeypatch, spent)
    assert stopped_by_budget(ref.dir)


def stage_key(recipe):
    from feinschliff.generate.keys import recipe_cache_key

    return recipe_cache_key(recipe, None)


def test_no_user_turn_of_a_heldout_conversation_becomes_a_training_question(tmp_path, monkeypatch):
    # a held-out prompt of several user turns was compared joined: a generated question equal
    # to one of its turns (shorter than the n-gram) was kept, a question of the held-out split
    import json

    from feinschliff.artifacts import mark_complete
    from feinschliff.generate import stage
    from tests.unit.test_generate_review_fixes import ANSWER, KEPT
    from tests.unit.test_generate_review_fixes import _recipe as _cli_recipe

    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))
    first, second = "Wie hoch ist mein monatlicher Abschlag?", "Und kann ich ihn senken?"
    ingest = tmp_path / "ingest"
    (ingest / "heldout").mkdir(parents=True)
    (ingest / "sft.jsonl").write_text("")
    chat = [
        {"role": "user", "content": first},
        {"role": "assistant", "content": "Er beträgt 80 Euro."},
        {"role": "user", "content": second},
        {"role": "assistant", "content": "Ja, im Kundenportal."},
    ]
    (ingest / "heldout" / "sft.jsonl").write_text(
        json.dumps({"messages": chat}, ensure_ascii=False) + "\n", "utf-8"
    )
    feedback = DatasetRef(path=str(ingest), sha256=mark_complete(ingest, stage="ingest", key="x"))
    questions = [first.upper(), KEPT, second]
    leaves = {
        "instructions_raw": [{"seed_id": "s", "instructions": questions}],
        "answers": [{"seed_id": "s", "instruction": q, "generation": ANSWER} for q in questions],
    }
    status = {
        k: 0 for k in ("requests", "tokens", "cache_hits", "rejected", "refused", "truncated")
    }
    monkeypatch.setattr(stage, "_run_child", lambda *a: {**status, "budget_exhausted": None})
    monkeypatch.setattr(stage, "_load_leaves", lambda p: leaves)
    recipe = load_recipe(_cli_recipe(tmp_path, filters={"decontaminate": False}))
    out = tmp_path / "out"
    stage.run_generate(recipe, out, feedback=feedback)
    rows = [json.loads(line) for line in (out / "sft.jsonl").read_text("utf-8").splitlines()]
    assert [r["messages"][0]["content"] for r in rows] == [KEPT]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["drops"]["sft"] == {"heldout_prompt": 2}
    assert manifest["heldout_prompts_excluded"] == 1  # conversations, not turns


# The child's watch on distilabel's pool, over a real multiprocessing pool: one worker is
# killed as the OOM killer would; the pool replaces it and its batch is never finished.
POOL_CHILD = """
import os, signal, sys, threading, time
from multiprocessing.pool import Pool
from feinschliff.generate.child import _stop_on_lost_worker

class Pipeline:  # distilabel's: `_pool` is set inside run()
    _pool = None

pipeline = Pipeline()
_stop_on_lost_worker(pipeline, threading.Event())
with Pool(2) as pool:
    pipeline._pool = pool
    time.sleep(1.5)
    if sys.argv[1] == "kill":
        os.kill(pool._pool[0].pid, signal.SIGKILL)
    time.sleep(8)  # distilabel waiting for the lost batch
print("still running", flush=True)
"""


def test_a_worker_dying_mid_run_ends_the_generation_process_instead_of_a_hang(tmp_path):
    # killing distilabel's self_instruct worker left the child (and so the stage) waiting
    # forever: the pool starts a replacement and the lost batch never arrives
    import subprocess
    import sys

    from feinschliff.generate.child import LOST_WORKER

    def run(mode):
        return subprocess.run(
            [sys.executable, "-c", POOL_CHILD, mode],
            capture_output=True,
            text=True,
            timeout=60,
            start_new_session=True,  # leads its group, as the stage starts the child
            cwd=Path(__file__).resolve().parents[2],
        )

    killed = run("kill")
    assert killed.returncode == -9 and LOST_WORKER in killed.stderr, killed.stderr[-2000:]
    assert "still running" not in killed.stdout
    calm = run("calm")  # a pool that only ends normally is left alone
    assert calm.returncode == 0 and "still running" in calm.stdout, calm.stderr[-2000:]
