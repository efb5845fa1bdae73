"""Notification targets from FEINSCHLIFF_NOTIFY_URLS."""

from __future__ import annotations

import pytest

from feinschliff.notify import notify_urls


def test_commas_inside_an_apprise_url_stay_in_it(monkeypatch):
    """apprise lists e-mail recipients and Slack channels with commas: every comma was taken
    for a separator, so only the first recipient was notified (the rest: "target rejected")."""
    mail = "mailtos://u:p@example.com?to=ops@example.com,ml@example.com"
    slack = "slack://T1/B2/C3/#ml,#ops"
    monkeypatch.setenv("FEINSCHLIFF_NOTIFY_URLS", f"{mail},{slack}")
    assert notify_urls() == [mail, slack]


@pytest.mark.parametrize(
    "value",
    [
        "json://a:1/x,json://b:2/y",
        "json://a:1/x, json://b:2/y",
        " json://a:1/x\n\tjson://b:2/y ,",
        "json://a:1/x ,json://b:2/y",
    ],
)
def test_urls_are_separated_by_commas_or_whitespace(monkeypatch, value):
    monkeypatch.setenv("FEINSCHLIFF_NOTIFY_URLS", value)
    assert notify_urls() == ["json://a:1/x", "json://b:2/y"]


def test_no_urls_no_targets(monkeypatch):
    monkeypatch.setenv("FEINSCHLIFF_NOTIFY_URLS", " , ")
    assert notify_urls() == []
