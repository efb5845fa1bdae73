"""Notifications through apprise to a local HTTP receiver (standing in for a Slack/Teams webhook,
which cannot be reached from here)."""

from __future__ import annotations

import pytest

from feinschliff import notify

pytestmark = pytest.mark.integration


def test_rejection_sends_one_message_with_rules(webhook):
    url, got = webhook
    rules = [{"rule": "min", "metric": "t/acc", "passed": False, "detail": "0.1 < 0.5"}]
    assert notify.send("rejected", "support-de", {"rules": rules}) == 1
    assert len(got) == 1
    assert "rejected" in got[0]["title"] and "FAIL min t/acc: 0.1 < 0.5" in got[0]["message"]


def test_no_targets_sends_nothing_and_bad_targets_do_not_raise(webhook, monkeypatch):
    monkeypatch.delenv(notify.ENV, raising=False)
    assert notify.send("promoted", "x", {"version": "v0001"}) == 0
    assert notify.send("failed", "x", {"error": "boom"}, urls=["json://127.0.0.1:1"]) == 0


def test_an_evaluate_only_run_that_passed_says_so(webhook):
    url, got = webhook
    rules = [{"rule": "min", "metric": "t/acc", "passed": True, "detail": "0.9 >= 0.5"}]
    assert notify.send("passed", "support-de", {"version": None, "rules": rules}) == 1
    assert "passed the gate (not registered" in got[0]["title"]
    assert "promoted" not in got[0]["title"] and "PASS min t/acc" in got[0]["message"]
