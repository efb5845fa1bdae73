"""PII inside JSON that is still a string (Langfuse v2 ``input``/``output``) is found too.

A quarantined observation keeps its raw value, where ``input`` is JSON text: a line break is
the two characters backslash-n, which glued the ``n`` to the number after it, and the
recognizers' word boundaries missed Steuer-IDs, phone numbers, cards, VAT ids and IPs.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from feinschliff.ingest import run_ingest
from feinschliff.pii import restore_text, scrub_value
from feinschliff.recipe import FeedbackSpec

CANARIES = {
    "DE_TAX_ID": "86 095 742 719",
    "PHONE_NUMBER": "0151 12345678",
    "CREDIT_CARD": "4111 1111 1111 1111",
    "DE_VAT_ID": "DE123456789",
    "IP_ADDRESS": "192.168.10.20",
    "IBAN_CODE": "DE89 3704 0044 0532 0130 00",
    "EMAIL_ADDRESS": "anna.schmidt@example.de",
}
KEY = "0123456789abcdef"


def _encoded(text: str) -> str:
    """A v2 observation's ``input``: the messages as a JSON string (FACTS 10.2.1)."""
    return json.dumps([{"role": "user", "content": text}], ensure_ascii=False)


@pytest.mark.parametrize("entity", list(CANARIES))
def test_an_identifier_after_an_escaped_line_break_is_scrubbed(entity):
    raw = {"id": "o1", "input": _encoded(f"Bitte melden Sie sich:\n{CANARIES[entity]}\nDanke")}
    found: Counter[str] = Counter()
    out = scrub_value(raw, "redact", None, found)
    assert CANARIES[entity] not in out["input"] and found == Counter({entity: 1})
    pseudo = scrub_value(raw, "pseudonymize", KEY, Counter())
    assert CANARIES[entity] not in pseudo["input"]
    assert restore_text(pseudo["input"], KEY) == raw["input"]  # decrypts back exactly


def test_no_canary_reaches_the_quarantine_of_a_redacting_ingest(tmp_path: Path):
    text = "Rückruf bitte:\n" + "\n".join(CANARIES.values())
    obs = {
        "id": "o1",
        "traceId": "t1",
        "type": "GENERATION",
        "startTime": "2026-01-01T00:00:00Z",
        "input": _encoded(text),
        "output": json.dumps({"role": "assistant", "content": ""}),  # still streaming
    }
    fine = {
        **obs,
        "id": "o2",
        "traceId": "t2",
        "input": _encoded("Wie melde ich meinen Zählerstand?"),
        "output": json.dumps({"role": "assistant", "content": "In der App unter Zählerstand."}),
    }
    scores = [
        {
            "id": f"s{oid}",
            "name": "user-feedback",
            "dataType": "BOOLEAN",
            "value": True,
            "subject": {"kind": "observation", "id": oid},
        }
        for oid in ("o1", "o2")
    ]
    (tmp_path / "lf").mkdir()
    (tmp_path / "lf" / "obs.json").write_text(json.dumps({"data": [obs, fine], "meta": {}}))
    (tmp_path / "lf" / "scores.json").write_text(json.dumps({"data": scores, "meta": {}}))
    spec = FeedbackSpec.model_validate(
        {
            "sources": [{"kind": "langfuse", "path": str(tmp_path / "lf")}],
            "pii": {"mode": "redact"},
            "max_quarantine_fraction": 1.0,
        }
    )
    run_ingest(spec, tmp_path / "out")
    quarantine = (tmp_path / "out" / "quarantine.jsonl").read_text(encoding="utf-8")
    assert quarantine.strip(), "the observation is quarantined (no assistant text)"
    for entity, canary in CANARIES.items():
        assert canary not in quarantine, entity
        assert canary.replace(" ", "") not in quarantine.replace(" ", ""), entity


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("Login: FIRMA\\max.mustermann@stadtwerke.de", "FIRMA\\"),
        ("Ablage \\\\10.20.30.40 bitte", "Ablage \\\\"),
    ],
)
def test_a_backslash_that_is_no_json_escape_is_text(text, kept):
    """Only JSON's escapes are decoded: ``\\m`` must not cut the ``m`` off an address."""
    out = scrub_value(text, "redact", None, Counter())
    assert kept + "<" in out, out
