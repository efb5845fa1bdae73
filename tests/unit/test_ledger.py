"""The idempotency ledger: each side effect once per run across reruns, interrupted effects
recovered or redone, torn lines ignored, runs resumed until closed."""

from __future__ import annotations

import json

from feinschliff.ledger import Ledger, effect_key, resume_or_restart


def test_done_effect_is_skipped_on_rerun_and_returns_its_result(tmp_path):
    calls = []
    ledger = Ledger(tmp_path / "ledger.jsonl")
    key = effect_key("run-1", "register", "support-de", "sha")
    assert ledger.perform(key, lambda: calls.append(1) or "v0001") == "v0001"
    # a rerun in a new process reads the same file
    again = Ledger(tmp_path / "ledger.jsonl")
    assert again.perform(key, lambda: calls.append(2) or "v0002") == "v0001"
    assert calls == [1]
    assert [r["state"] for r in again.records()] == ["intent", "done"]


def test_interrupted_effect_is_recovered_when_already_in_place(tmp_path):
    ledger = Ledger(tmp_path / "ledger.jsonl")
    key = effect_key("run-1", "promote", "support-de", ["v0002", "v0001"])
    ledger._record(key, "intent", "promote")  # what a kill during the effect leaves behind
    calls = []
    result = ledger.perform(key, lambda: calls.append(1) or "moved", recover=lambda: "v0002")
    assert result == "v0002" and calls == []
    assert ledger.state(key) == ("done", "v0002")
    assert ledger.records()[-1]["recovered"] is True


def test_interrupted_effect_not_in_place_runs_again_once(tmp_path):
    ledger = Ledger(tmp_path / "ledger.jsonl")
    key = effect_key("run-1", "notify", "support-de:promoted", {"version": "v0002"})
    ledger._record(key, "intent", "notify")
    calls = []
    assert ledger.perform(key, lambda: calls.append(1) or 1, recover=lambda: None) == 1
    assert ledger.perform(key, lambda: calls.append(2) or 1) == 1
    assert calls == [1]
    assert [r["state"] for r in ledger.records()] == ["intent", "done"]


def test_a_line_torn_by_a_kill_is_ignored_and_the_next_append_starts_fresh(tmp_path):
    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(path)
    key = effect_key("r", "register", "uc", "a")
    ledger.perform(key, lambda: "v0001")
    with path.open("a") as f:
        f.write('{"state": "done", "key": "tru')  # kill mid-append
    other = effect_key("r", "register", "uc", "b")
    assert ledger.perform(other, lambda: "v0002") == "v0002"
    lines = path.read_text().splitlines()
    assert len(lines) == 5 and json.loads(lines[-1])["result"] == "v0002"
    assert ledger.state(key) == ("done", "v0001")


def test_run_is_resumed_until_closed_then_a_new_one_starts(tmp_path):
    ledger = Ledger(tmp_path / "ledger.jsonl")
    first = ledger.open_run("inputs-a" * 4)
    assert ledger.open_run("inputs-a" * 4) == first  # a rerun after a crash: same run
    assert ledger.open_run("inputs-b" * 4) != first  # other inputs: another run
    ledger.close_run(first)
    second = ledger.open_run("inputs-a" * 4)
    assert second != first
    key1, key2 = (effect_key(r, "notify", "uc:promoted", {}) for r in (first, second))
    sent = []
    ledger.perform(key1, lambda: sent.append(first) or 1)
    ledger.perform(key2, lambda: sent.append(second) or 1)
    assert sent == [first, second]  # an intentional second run notifies again


def test_effect_keys_differ_by_run_effect_target_and_content():
    base = effect_key("r", "promote", "uc", ["v2", "v1"])
    assert base == effect_key("r", "promote", "uc", ["v2", "v1"])
    others = [
        effect_key("r2", "promote", "uc", ["v2", "v1"]),
        effect_key("r", "register", "uc", ["v2", "v1"]),
        effect_key("r", "promote", "uc2", ["v2", "v1"]),
        effect_key("r", "promote", "uc", ["v2", None]),
    ]
    assert base not in others and len(set(others)) == 4


def _failed_run(ledger: Ledger, production: str | None, registered: str | None = None) -> str:
    """A run that recorded the production it builds on (and maybe registered), then failed."""
    run, _ = resume_or_restart(ledger, "inputs", lambda: production)
    ledger.perform(
        effect_key(run, "production", "s", "train"),
        lambda: production,
        run=run,
        effect="production",
    )
    if registered:
        ledger.perform(
            effect_key(run, "register", "s", "sha"), lambda: registered, run=run, effect="register"
        )
    return run


def test_a_failed_run_is_resumed_while_production_is_as_it_recorded(tmp_path):
    ledger = Ledger(tmp_path / "ledger.jsonl")
    run = _failed_run(ledger, "v0001")
    assert resume_or_restart(ledger, "inputs", lambda: "v0001") == (run, None)


def test_a_failed_run_after_its_own_promotion_is_resumed(tmp_path):
    ledger = Ledger(tmp_path / "ledger.jsonl")
    run = _failed_run(ledger, "v0001", registered="v0002")
    assert resume_or_restart(ledger, "inputs", lambda: "v0002") == (run, None)


def test_a_failed_run_whose_production_someone_else_moved_is_abandoned(tmp_path):
    """Without this, every later scheduled run resumed the failed one: it warm-started from and
    compared with the old production, and its promotion failed the compare-and-swap forever."""
    ledger = Ledger(tmp_path / "ledger.jsonl")
    run = _failed_run(ledger, "v0001", registered="v0002")
    new, why = resume_or_restart(ledger, "inputs", lambda: "v0003")
    assert new != run and why == "production moved to v0003 since the run recorded v0001"
    assert ledger.results(new, "production") == []
    closed = [r for r in ledger.records() if r.get("state") == "closed"]
    assert closed == [{**closed[0], "run": run, "abandoned": why}]
    assert resume_or_restart(ledger, "inputs", lambda: "v0003") == (new, None)  # no records yet


def test_a_run_without_recorded_production_is_resumed_as_before(tmp_path):
    ledger = Ledger(tmp_path / "ledger.jsonl")
    run, _ = resume_or_restart(ledger, "inputs", lambda: None)
    ledger.perform(effect_key(run, "production", "s", "train"), lambda: None)  # untagged: old
    assert resume_or_restart(ledger, "inputs", lambda: "v0009") == (run, None)


def test_a_run_whose_last_recorded_production_was_rolled_back_is_abandoned(tmp_path):
    """Recorded X at train, Y at evaluate (someone promoted during training), crash, then a
    rollback to X: X is among the recorded values, but the promotion would compare-and-swap
    against Y and fail on every later run."""
    ledger = Ledger(tmp_path / "ledger.jsonl")
    run = _failed_run(ledger, "v0001")
    ledger.perform(
        effect_key(run, "production", "s", "evaluate"),
        lambda: "v0002",
        run=run,
        effect="production",
    )
    new, why = resume_or_restart(ledger, "inputs", lambda: "v0001")
    assert new != run and why == "production moved to v0001 since the run recorded v0002"


def test_intent_at_is_when_an_interrupted_effect_started(tmp_path):
    """What a ``recover`` compares the registry's audit log with (was it promoted since?)."""
    ledger = Ledger(tmp_path / "ledger.jsonl")
    key = effect_key("run-1", "promote", "support-de", "v0002")
    assert ledger.intent_at(key) is None
    ledger._record(key, "intent", "promote")  # a kill during the effect
    started = ledger.intent_at(key)
    assert started == ledger.records()[0]["at"]
    ledger.perform(key, lambda: "v0002", recover=lambda: None)  # the rerun: no second intent
    assert ledger.intent_at(key) == started
    assert [r["state"] for r in ledger.records()] == ["intent", "done"]
