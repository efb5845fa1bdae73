"""Provenance ids and locations: what is analysed for PII, and what a finding there becomes.

Real Presidio engines (pattern recognizers, offline). ``pii._analyze`` is wrapped only to count
the analyses (each call still runs Presidio).
"""

from __future__ import annotations

import uuid
from collections import Counter
from types import SimpleNamespace

import pytest

from feinschliff import pii
from feinschliff.ingest.prepare import _scrub_provenance

IBAN_BE = "be68539007547034"  # a valid Belgian IBAN in lower case: 16 hex characters


@pytest.fixture
def analyses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    real = pii._analyze

    def counted(analyzer, text, *args, **kwargs):
        seen.append(text)
        return real(analyzer, text, *args, **kwargs)

    monkeypatch.setattr(pii, "_analyze", counted)
    pii._id_token.cache_clear()  # earlier tests' ids must not hide an analysis
    yield seen
    pii._id_token.cache_clear()


def _ctx(mode: str = "redact") -> SimpleNamespace:
    return SimpleNamespace(spec=SimpleNamespace(pii=SimpleNamespace(mode=mode)), key=None)


def test_generated_ids_are_not_analysed(analyses: list[str]) -> None:
    """UUIDs and OpenTelemetry/Langfuse hex ids (~0.4 ms of Presidio each, 2-3 per record)."""
    ids = [str(uuid.uuid4()), uuid.uuid4().hex, uuid.uuid4().hex[:16], "00f067aa0ba902b7"]
    ids.append("1c290098-d563-4368-b8e6-e3383ef7e662")  # its letters after the first group
    for value in ids:
        assert pii.scrub_id(value, "redact") == (value, Counter())
    assert analyses == []


@pytest.mark.parametrize(
    ("value", "entity"),
    [
        (IBAN_BE, "IBAN_CODE"),  # hex characters only, letters only in its first two
        ("4111111111111111", "CREDIT_CARD"),  # 16 digits, 16 "hex" characters: a card number
    ],
)
def test_ids_that_only_look_generated_are_still_analysed(
    analyses: list[str], value: str, entity: str
) -> None:
    token, found = pii.scrub_id(value, "redact")
    assert analyses == [value]
    assert token.startswith(f"<{entity}>-") and found == {entity: 1}


def test_an_email_after_a_slash_is_found() -> None:
    """A local part with "/", "?" or "#" (legal in addresses) was read as a URL by the domain
    check and let through: a user's export folder named after their address leaked."""
    for text in ("Pfad /exports/max@example.de", "x?max@example.de", "a#max@example.de"):
        scrubbed, found = pii.scrub_text(text, "redact")
        assert "max@example.de" not in scrubbed and found == {"EMAIL_ADDRESS": 1}, text


def test_a_location_keeps_its_row_index_and_tokenizes_its_path() -> None:
    path = "/exports/max.mustermann@example.de/observations-page-00001.json"
    found: Counter[str] = Counter()
    rows = [
        _scrub_provenance({"location": f"{path}#data[{i}]", "source": "langfuse"}, _ctx(), found)
        for i in (3, 4)
    ]
    tokens = [row["location"] for row in rows]
    assert all(t.startswith("<EMAIL_ADDRESS>-") for t in tokens)
    assert [t.rpartition("#")[2] for t in tokens] == ["data[3]", "data[4]"]
    assert tokens[0].rpartition("#")[0] == tokens[1].rpartition("#")[0]  # one file, one token
    assert found == {"EMAIL_ADDRESS": 2} and rows[0]["source"] == "langfuse"


def test_a_files_path_is_analysed_once_for_all_its_rows(analyses: list[str]) -> None:
    found: Counter[str] = Counter()
    for i in range(50):
        for loc in (f"/x/observations-page-00001.json#data[{i}]", f"/x/t-2026.jsonl:{i}"):
            assert _scrub_provenance({"location": loc}, _ctx(), found) == {"location": loc}
    assert sorted(analyses) == ["/x/observations-page-00001.json", "/x/t-2026.jsonl"]
    assert found == Counter()


def test_a_location_without_a_row_index_is_one_id() -> None:
    where = "https://cloud.langfuse.com (GET /api/public/v2/observations)"
    assert pii.scrub_location(where, "redact") == (where, Counter())
    token, found = pii.scrub_location("/data/DE89370400440532013000", "redact")
    assert token.startswith("<IBAN_CODE>-") and "#" not in token and found == {"IBAN_CODE": 1}
