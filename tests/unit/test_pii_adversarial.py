"""PII in the forms it really arrives in: look-alike characters, encodings, obfuscations.

Each form below was let through (wholly or in part) before ``pii_normalize`` and the recognizer
fixes in ``pii_recognizers``: a non-breaking space between IBAN groups (web forms, Word), a
zero-width or soft hyphen inside a value (copied from a web page), full-width digits, an '@'
as a JSON escape, URL-encoded or an HTML entity, "max(at)example.de". Every case asserts the
exact redacted text, so the finding's span is checked too, not only that something was found.
Real Presidio engines, offline (a few seconds once per process).
"""

from __future__ import annotations

from collections import Counter

import pytest

from feinschliff.pii import find_pii, restore_text, scrub_id, scrub_text
from tests.reliability.pii_corpus import ENTITY_KINDS, make_lookalike_corpus

NBSP, NNBSP, THIN, ZWSP, SHY = "\u00a0", "\u202f", "\u2009", "\u200b", "\u00ad"
KEY = "adversarial-key-of-32-bytes-long"
IBAN = "DE89 3704 0044 0532 0130 00"


def _full_width(text: str) -> str:
    return text.translate(str.maketrans("0123456789.@", "０１２３４５６７８９．＠"))


# (entity, text before, the value as written, text after)
CASES = [
    # IBANs: separators other than one blank or hyphen, mixed case, look-alike digits
    ("IBAN_CODE", "IBAN ", IBAN.replace(" ", NBSP), ", danke"),
    ("IBAN_CODE", "IBAN ", IBAN.replace(" ", NNBSP), ", danke"),
    ("IBAN_CODE", "IBAN ", IBAN.replace(" ", THIN), ", danke"),
    ("IBAN_CODE", "IBAN:\n", IBAN.replace(" ", "\n", 2), "\nBIC COBADEFFXXX"),
    ("IBAN_CODE", "IBAN ", IBAN.replace(" ", "  "), " bitte"),
    ("IBAN_CODE", "IBAN ", IBAN.replace(" ", "."), " bitte"),
    ("IBAN_CODE", "IBAN ", IBAN.replace(" ", "\u2013"), " bitte"),
    ("IBAN_CODE", "Konto ", "De89 3704 0044 0532 0130 00", " wird gekündigt"),
    ("IBAN_CODE", "Konto ", "Gb29 nwbk 6016 1331 9268 19", " bitte"),
    ("IBAN_CODE", "IBAN ", "DE89" + ZWSP + "370400440532013000", "."),
    ("IBAN_CODE", "IBAN ", _full_width("DE89370400440532013000"), "."),
    ("IBAN_CODE", '{"iban": "', IBAN.replace(" ", "\\u00a0"), '"}'),
    # phone numbers
    ("PHONE_NUMBER", "Tel. ", f"+49{NNBSP}171{NNBSP}1234567", " ab 17 Uhr"),
    ("PHONE_NUMBER", "Tel. ", f"+49{NNBSP}(0){NNBSP}171{NNBSP}1234567", " ab 17 Uhr"),
    ("PHONE_NUMBER", "Tel. ", f"0171{THIN}123{THIN}45{THIN}67", " ab 17 Uhr"),
    # no ASCII digit anywhere: the prefilter skipped it unanalysed
    ("PHONE_NUMBER", "Tel. ", _full_width("0171 1234567"), " bitte zurückrufen"),
    ("PHONE_NUMBER", "https://x.de/rueckruf?tel=", "%2B491711234567", "&t=1"),
    # Steuer-ID: a non-breaking space or an en dash between the groups
    ("DE_TAX_ID", "Steuer-ID ", f"86{NBSP}095{NBSP}742{NBSP}719", ", danke"),
    ("DE_TAX_ID", "Steuer-ID ", "86\u2013095\u2013742\u2013719", ", danke"),
    ("DE_TAX_ID", "Steuer-ID ", _full_width("86095742719"), ", danke"),
    # credit cards
    ("CREDIT_CARD", "Karte ", f"4111{NBSP}1111{NBSP}1111{NBSP}1111", " gesperrt?"),
    ("CREDIT_CARD", "Karte ", f"4111{ZWSP}1111{ZWSP}1111{ZWSP}1111", " gesperrt?"),
    ("CREDIT_CARD", "Karte ", "4111\u20131111\u20131111\u20131111", " gesperrt?"),
    ("CREDIT_CARD", "Karte ", _full_width("4111111111111111"), " gesperrt?"),
    # IP addresses
    ("IP_ADDRESS", "Login von ", _full_width("84.12.33.7"), " abgelehnt"),
    # e-mail addresses: an '@' encoded or look-alike, an invisible character inside
    ("EMAIL_ADDRESS", '{"text": "Mail an ', "max\\u0040example.de", '"}'),
    ("EMAIL_ADDRESS", "mailto:", "max%40example.de", "?subject=Abschlag"),
    ("EMAIL_ADDRESS", "<p>Kontakt: ", "max&#64;example.de", "</p>"),
    ("EMAIL_ADDRESS", "Mail an ", "max＠example.de", " bitte"),
    ("EMAIL_ADDRESS", "Mail an ", f"max{ZWSP}@example.de", " bitte"),
    ("EMAIL_ADDRESS", "Mail an ", f"max.muster{SHY}mann@example.de", " bitte"),
    # ... and written against harvesters (imprints, signatures): with brackets only
    ("EMAIL_ADDRESS", "Mail an ", "max(at)example.de", " bitte"),
    ("EMAIL_ADDRESS", "Mail an ", "MAX (AT) EXAMPLE.DE", " bitte"),
    ("EMAIL_ADDRESS", "Mail an ", "info [at] firma-gmbh [dot] de", " bitte"),
    ("EMAIL_ADDRESS", "Mail an ", "max [dot] mustermann {at} web [punkt] de", " bitte"),
    ("EMAIL_ADDRESS", "Mail an ", "max @ example.de", " bitte"),
]


@pytest.mark.parametrize(("entity", "head", "value", "tail"), CASES)
def test_a_look_alike_or_encoded_value_is_redacted_whole(entity, head, value, tail):
    out, found = scrub_text(head + value + tail, "redact")
    assert out == f"{head}<{entity}>{tail}"
    assert found == Counter({entity: 1})


@pytest.mark.parametrize(("entity", "head", "value", "tail"), CASES[::5])
def test_pseudonymized_look_alikes_decrypt_back_exactly(entity, head, value, tail):
    text = head + value + tail
    out, found = scrub_text(text, "pseudonymize", KEY)
    assert value not in out and found == Counter({entity: 1})
    assert restore_text(out, KEY) == text


@pytest.mark.parametrize(
    "value",
    [
        "max\\u0040example.de",
        "max(at)example.de",
        "ｍａｘ＠ｅｘａｍｐｌｅ．ｄｅ",
        "u/max%40example.de",
    ],
)
def test_an_id_with_an_encoded_address_gets_its_token(value):
    token, found = scrub_id(value, "redact")
    assert token.startswith("<EMAIL_ADDRESS>-") and found == Counter({"EMAIL_ADDRESS": 1})


def test_spans_point_into_the_original_text():
    text = f"IBAN {IBAN.replace(' ', NBSP)}, Mail max\\u0040example.de, Tel. 0171{ZWSP}1234567."
    spans = {e: text[s:end] for e, s, end in find_pii(text)}
    assert spans == {
        "IBAN_CODE": IBAN.replace(" ", NBSP),
        "EMAIL_ADDRESS": "max\\u0040example.de",
        "PHONE_NUMBER": f"0171{ZWSP}1234567",
    }


NOT_PII = [
    f"Betrag 12{NNBSP}345,67 € überwiesen, Zählerstand 123{THIN}456 kWh am 03.11.2026",
    f"Postleitzahl 80331{NBSP}München, Vertrag 123456, Hausnr. 12\u201314",
    "Zeitraum 01.03.\u201331.03.2026, Öffnungszeiten 8\u201317 Uhr, Summe \u2212120,50 €",
    "Bestellung ab12 3456 7890 1234 5678 vom 3.4.26, Rechnung RE12.3456.7890.12",
    "Kosten: ２４,９９ € pro Monat ab １２.０３.２０２６",
    "Wien (AT) 1010, Muster GmbH (AT) ist zuständig; wir treffen uns (at) home",
    "Sie sparen 100%40 Euro, R&D 2026 &#64; Team",
    "\\u00a0Betrag\\u00a012\\u00a0345,67 \\n\\n 2026-01-01",
]


@pytest.mark.parametrize("text", NOT_PII)
def test_look_alike_characters_alone_find_nothing_and_leave_the_text(text):
    out, found = scrub_text(text, "redact")
    assert out is text and not found


@pytest.mark.parametrize(
    "text",
    [
        # RFC 5322 allows a quoted local part; nobody types one (a display name is
        # '"Max Mustermann" <max@example.de>', which is found)
        '"max mustermann"@example.de',
        # a bare "at"/"dot" is prose to a pattern; telling it from an address needs a language model
        "max at example dot de",
    ],
)
def test_out_of_scope_forms_are_documented_as_not_found(text):
    assert scrub_text(text, "redact") == (text, Counter())


def test_recall_on_the_look_alike_corpus():
    """Every planted value of ``make_lookalike_corpus`` is found, and nothing else is."""
    items = make_lookalike_corpus(40, seed=21)
    missed, false_findings = [], []
    for item in items:
        found = find_pii(item.text)
        if not any(e == item.entity and s <= item.start and end >= item.end for e, s, end in found):
            missed.append((item.entity, item.value))
        false_findings += [
            (e, item.text[s:end]) for e, s, end in found if end <= item.start or s >= item.end
        ]
    assert len(items) == 40 * len(ENTITY_KINDS)
    assert not missed, missed[:10]
    assert not false_findings, false_findings[:10]


@pytest.mark.parametrize("at", ["@", " (at) "])
def test_the_address_patterns_do_not_backtrack_for_seconds(at):
    """Tried from every word, unbounded runs rescanned a long "a.a.a..." before a failing
    '@x': ~20 s for this text (20,000 characters), growing with its square."""
    import time

    text = "a." * 10000 + at + "x"
    started = time.process_time()
    assert scrub_text(text, "redact") == (text, Counter())
    assert time.process_time() - started < 2.0


def test_a_long_local_part_is_still_found_whole():
    local = "kundenservice.abrechnung.strom.und.gas.region-nord.musterstadt.2026"  # > 64
    assert scrub_text(f"an {local}@example.de", "redact")[0] == "an <EMAIL_ADDRESS>"
