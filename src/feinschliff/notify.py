"""Notifications on promotion, gate rejection, a passed evaluate-only run, an approval
needed and failure, through apprise URLs.

Targets come from the environment (``FEINSCHLIFF_NOTIFY_URLS``: apprise URLs separated by
commas or whitespace, e.g. a Slack or Teams webhook, ``mailtos://``, or ``json://host:port`` for
any HTTP receiver). URLs carry tokens, so they never live in recipes or flow parameters.
Sending is best effort: a failing notification is logged, never fails the run.
:func:`send_once` sends through the run's idempotency ledger, so a rerun after a crash does not
announce the same decision twice.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any, Literal

from feinschliff.ledger import Ledger, effect_key

log = logging.getLogger(__name__)

Event = Literal["promoted", "passed", "rejected", "failed", "approval_needed"]
ENV = "FEINSCHLIFF_NOTIFY_URLS"


# Between URLs: whitespace, or a comma before the next URL's scheme. Not every comma: apprise
# URLs list recipients and channels with them (``mailtos://...?to=a@x.de,b@y.de``), and
# splitting there dropped all but the first recipient.
_BETWEEN = re.compile(r"\s+|,(?=\s*[A-Za-z][A-Za-z0-9+.-]*://)")


def notify_urls() -> list[str]:
    parts = (u.strip(",") for u in _BETWEEN.split(os.environ.get(ENV, "")))
    return [u for u in parts if u]


def format_message(event: Event, use_case: str, details: dict[str, Any]) -> tuple[str, str]:
    title = {
        "promoted": f"feinschliff: {use_case} promoted",
        "passed": f"feinschliff: {use_case} passed the gate (not registered: register=false)",
        "rejected": f"feinschliff: {use_case} rejected by the gate",
        "failed": f"feinschliff: {use_case} run failed",
        "approval_needed": f"feinschliff: {use_case} awaits approval",
    }[event]
    lines = []
    if version := details.get("version"):
        lines.append(f"version: {version}")
    for rule in details.get("rules", []):
        mark = "PASS" if rule["passed"] else "FAIL"
        lines.append(f"{mark} {rule['rule']} {rule['metric']}: {rule['detail']}")
    for name, value in details.get("metrics", {}).items():
        lines.append(f"{name}: {value:.4f}" if isinstance(value, float) else f"{name}: {value}")
    if error := details.get("error"):
        lines.append(f"error: {error}")
    if url := details.get("run_url"):
        lines.append(url)
    return title, "\n".join(lines) or title


def send(
    event: Event, use_case: str, details: dict[str, Any], urls: list[str] | None = None
) -> int:
    """Send to every configured target; returns how many accepted it."""
    targets = notify_urls() if urls is None else urls
    if not targets:
        return 0
    import apprise

    title, body = format_message(event, use_case, details)
    sent = 0
    for url in targets:
        app = apprise.Apprise()
        if not app.add(url):
            log.warning("notification target rejected by apprise (check the URL scheme)")
            continue
        if app.notify(title=title, body=body):
            sent += 1
        else:
            log.warning("notification to one target failed")
    return sent


def send_once(
    ledger: Ledger,
    run: str,
    event: Event,
    use_case: str,
    details: dict[str, Any],
    urls: list[str] | None = None,
) -> int:
    """:func:`send` once per run, event and details, however often the run is resumed."""
    key = effect_key(run, "notify", f"{use_case}:{event}", details)
    return ledger.perform(
        key, lambda: send(event, use_case, details, urls), what=f"notify {event} {use_case}"
    )
