"""A reviewer's answer goes into the registry's audit log; a registry that cannot take it (read
only, unreachable) turned a reviewer's rejection into a failed run. Now a warning: the decision
stands (an approval then fails where it registers, naming the registry)."""

from __future__ import annotations

import logging

import pytest

from feinschliff.gate import Approval
from feinschliff.recipe_loader import load_recipe
from flows import approval as approval_mod
from tests.unit.test_train_review_fixes import DEMO


def test_an_answer_the_registry_cannot_take_is_a_warning(monkeypatch, caplog, tmp_path):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "registry"))

    monkeypatch.setattr(approval_mod, "record_event", refuse)
    recipe = load_recipe(DEMO)
    answer = Approval(approved=False, by="ana", comment="tone is off")
    with caplog.at_level(logging.WARNING):
        approval_mod.record_answer(recipe, answer, candidate="abc")
    assert "could not be recorded in the registry's audit log" in caplog.text
    assert "Permission denied" in caplog.text


def test_an_answer_is_recorded(monkeypatch):
    seen = []
    monkeypatch.setattr(approval_mod, "record_event", lambda *a, **k: seen.append((a, k)))
    approval_mod.record_answer(load_recipe(DEMO), Approval(approved=True, by="ana"), "abc")
    ((args, fields),) = seen
    assert args[2] == "approval" and fields["approved"] is True and fields["reviewer"] == "ana"


@pytest.fixture(autouse=True)
def _home(home):
    return home
