"""PII: German pattern recognizers offline, redact / pseudonymize, and no canary in any output.

The canaries are the ones planted in the samples (data/samples/README.md "PII canaries").
Presidio's engines take a few seconds to build once per process (module fixture).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from feinschliff.ingest import run_ingest
from feinschliff.pii import (
    PiiError,
    key_fingerprint,
    load_key,
    restore_text,
    scrub_text,
    scrub_value,
)
from feinschliff.recipe import FeedbackSpec

ROOT = Path(__file__).resolve().parents[2]
KEY = "feinschliff-test-key-32-bytes!!!"
CANARIES = {
    "EMAIL_ADDRESS": "max.mustermann@example.org",
    "IBAN_CODE": "DE89370400440532013000",
    "PHONE_NUMBER": "+49 30 1234567",
    "DE_TAX_ID": "86095742719",
    "IP_ADDRESS": "192.0.2.44",
}
TEXT = (
    "Mail max.mustermann@example.org, IBAN DE89 3704 0044 0532 0130 00, Tel. +49 30 1234567, "
    "Steuer-ID 86 095 742 719, IP 192.0.2.44. Zählerstand 12345 am 03.11.2026."
)


@pytest.fixture(scope="module", autouse=True)
def engines(tmp_path_factory):
    import os

    home = tmp_path_factory.mktemp("home")
    old = os.environ.get("FEINSCHLIFF_HOME")
    os.environ["FEINSCHLIFF_HOME"] = str(home)
    scrub_text("warm up 1", "redact")
    yield
    if old is None:
        os.environ.pop("FEINSCHLIFF_HOME")
    else:
        os.environ["FEINSCHLIFF_HOME"] = old


def test_redact_finds_every_german_identifier_and_leaves_numbers_alone():
    text, counts = scrub_text(TEXT, "redact")
    assert counts == {
        "EMAIL_ADDRESS": 1,
        "IBAN_CODE": 1,
        "PHONE_NUMBER": 1,
        "DE_TAX_ID": 1,
        "IP_ADDRESS": 1,
    }
    for value in ("max.mustermann", "DE89", "1234567", "742 719", "192.0.2.44"):
        assert value not in text
    assert "<EMAIL_ADDRESS>" in text and "12345 am 03.11.2026" in text


def test_pseudonymize_round_trips_and_is_not_deterministic():
    first, counts = scrub_text(TEXT, "pseudonymize", KEY)
    second, _ = scrub_text(TEXT, "pseudonymize", KEY)
    assert sum(counts.values()) == 5 and first != second
    assert all(v not in first for v in CANARIES.values())
    assert restore_text(first, KEY) == TEXT == restore_text(second, KEY)
    with pytest.raises(Exception):  # noqa: B017 - a wrong key cannot decrypt
        restore_text(first, "another-key-of-exactly-32-bytes!")


def test_keys_are_checked_and_only_fingerprinted():
    with pytest.raises(PiiError, match="16, 24 or 32"):
        scrub_text(TEXT, "pseudonymize", "short")
    assert KEY not in key_fingerprint(KEY) and len(key_fingerprint(KEY)) == 12
    assert scrub_text(TEXT, "off") == (TEXT, {})


def test_a_key_of_the_wrong_length_names_where_it_came_from(monkeypatch):
    monkeypatch.setenv("FEINSCHLIFF_TEST_PII_KEY", "zu-kurz")
    with pytest.raises(PiiError, match=r"16, 24 or 32 .*7 bytes \(FEINSCHLIFF_TEST_PII_KEY"):
        load_key("FEINSCHLIFF_TEST_PII_KEY")


def test_scrub_value_walks_nested_json():
    counts: dict = {}
    from collections import Counter

    counts = Counter()
    out = scrub_value({"a": [TEXT, 5, None], "b": {"c": "x"}}, "redact", None, counts)
    assert "<IBAN_CODE>" in out["a"][0] and out["a"][1:] == [5, None] and out["b"] == {"c": "x"}
    assert counts["DE_TAX_ID"] == 1


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> dict[str, Path]:
    """One ingest per mode over every format that carries the canaries, plus a quarantined
    record that holds them."""
    base = tmp_path_factory.mktemp("pii")
    argilla = base / "argilla"
    shutil.copytree(ROOT / "data" / "samples" / "argilla" / "feedback-de", argilla)
    records = json.loads((argilla / "records.json").read_text())
    records.append({"id": "broken", "fields": {"prompt": TEXT}})  # no answers: quarantined
    (argilla / "records.json").write_text(json.dumps(records))
    sources = [
        {"kind": "argilla", "path": str(argilla)},
        {"kind": "argilla", "path": str(ROOT / "data/fixtures/argilla/hub-v1")},
        {"kind": "langfuse", "path": str(ROOT / "data/samples/langfuse")},
        {"kind": "langfuse", "path": str(ROOT / "data/fixtures/langfuse/ui-export/traces.csv")},
        {"kind": "langfuse", "path": str(ROOT / "data/fixtures/langfuse/dataset-items")},
    ]
    outs = {}
    for mode in ("off", "redact", "pseudonymize"):
        spec = FeedbackSpec.model_validate(
            {
                "sources": sources,
                "pii": {"mode": mode},
                "heldout_fraction": 0.2,
                "dedup": {"exact": False, "near": False},
                "max_quarantine_fraction": 0.5,
            }
        )
        mp = pytest.MonkeyPatch()
        mp.setenv("FEINSCHLIFF_PII_KEY", KEY)
        run_ingest(spec, base / mode)
        mp.undo()
        outs[mode] = base / mode
    return outs


def _files(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.is_file()]


def test_canaries_are_in_the_unscrubbed_output(outputs):
    text = "".join(p.read_text(encoding="utf-8") for p in _files(outputs["off"]))
    assert all(value in text for value in CANARIES.values())


@pytest.mark.parametrize("mode", ["redact", "pseudonymize"])
def test_no_canary_in_any_output(outputs, mode):
    for path in _files(outputs[mode]):
        text = path.read_text(encoding="utf-8")
        escaped = json.dumps(text)  # also catches \\u-escaped or JSON-quoted copies
        for value in CANARIES.values():
            assert value not in text and value not in escaped, f"{value} in {path}"
        assert KEY not in text
    manifest = json.loads((outputs[mode] / "manifest.json").read_text())
    assert set(manifest["pii"]["found"]) >= set(CANARIES)
    assert manifest["pii"]["by_file"]["quarantine.jsonl"]["DE_TAX_ID"] == 1


def test_pseudonymized_rows_decrypt_to_the_original_rows(outputs):
    manifest = json.loads((outputs["pseudonymize"] / "manifest.json").read_text())
    assert manifest["pii"]["key_fingerprint"] == key_fingerprint(KEY)
    for name in manifest["counts"]:
        plain = (outputs["off"] / name).read_text(encoding="utf-8").splitlines()
        pseudo = (outputs["pseudonymize"] / name).read_text(encoding="utf-8").splitlines()
        assert len(plain) == len(pseudo)
        for a, b in zip(plain, pseudo, strict=True):
            assert json.loads(restore_text(b, KEY)) == json.loads(a)


def test_pseudonymize_without_a_key_fails_before_reading(tmp_path, monkeypatch):
    from feinschliff.ingest.stage import IngestError

    monkeypatch.delenv("FEINSCHLIFF_PII_KEY", raising=False)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    spec = FeedbackSpec.model_validate(
        {
            "sources": [{"kind": "langfuse", "path": str(ROOT / "data/samples/langfuse")}],
            "pii": {"mode": "pseudonymize"},
        }
    )
    with pytest.raises(IngestError, match="FEINSCHLIFF_PII_KEY"):
        run_ingest(spec, tmp_path / "out")
    assert not (tmp_path / "out" / "sft.jsonl").exists()


def test_lower_case_iban_is_found_and_following_words_are_kept():
    text, counts = scrub_text("Konto de89 3704 0044 0532 0130 00 widerrufen bitte", "redact")
    assert counts == {"IBAN_CODE": 1} and text == "Konto <IBAN_CODE> widerrufen bitte"
    text, _ = scrub_text("SEPA für AT88 2520 1482 4314 3417 widerrufen", "redact")
    assert text == "SEPA für <IBAN_CODE> widerrufen"


def test_dates_and_contract_numbers_are_not_phone_numbers():
    for text in (
        "Schreiben vom 07.07.2020 erhalten.",
        "Vertrag 368492, Zähler (16441 kWh).",
        "Kundennummer 376035 bitte prüfen.",
    ):
        assert scrub_text(text, "redact") == (text, {})
    # after a phone word a bare number is still a phone number
    _, counts = scrub_text("Telefon 368492 ab 17 Uhr", "redact")
    assert counts == {"PHONE_NUMBER": 1}
