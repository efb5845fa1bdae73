"""Scrubbing memory stays flat as exports grow (session 19 scale probe).

spaCy, under Presidio's analyzer, adds every token it sees to its vocab and never drops it; each
e-mail address, phone number or IBAN is a new token, so a worker scrubbing 300k records grew by
~100 MiB (`--pii redact`, 10k / 100k / 300k records: 597 / 690 / 793 MiB over all processes).
"""

from __future__ import annotations

import pytest

from feinschliff import pii

KEY = "feinschliff-test-key-32-bytes!!!"


def _text(i: int) -> str:
    return f"Meine E-Mail: kunde.{i}@beispiel-mail.de, Rückruf unter Telefon 0171 {1_000_000 + i}"


@pytest.fixture
def small_reloads(monkeypatch: pytest.MonkeyPatch) -> None:
    # raising=False: the code before the fix never reloads (the test must fail there on growth)
    monkeypatch.setattr(pii, "RELOAD_ANALYSES", 25, raising=False)


@pytest.mark.usefixtures("small_reloads")
def test_distinct_pii_values_do_not_grow_the_vocab() -> None:
    analyzer, _ = pii._engines()

    def strings() -> int:  # of the pipeline in use now (a reload replaces it)
        return len(analyzer.nlp_engine.nlp["de"].vocab.strings)

    for i in range(60):  # the common words are in the vocab by now
        pii.scrub_text(_text(i), "redact")
    before = strings()
    for i in range(1000, 1400):
        text, found = pii.scrub_text(_text(i), "redact")
        assert found == {"EMAIL_ADDRESS": 1, "PHONE_NUMBER": 1}, text
        assert text == "Meine E-Mail: <EMAIL_ADDRESS>, Rückruf unter Telefon <PHONE_NUMBER>"
    # never reloaded: ~3 new strings per text (+1,200); reloaded: at most 25 texts' worth
    assert strings() - before < 200


@pytest.mark.usefixtures("small_reloads")
def test_results_stay_exact_across_reloads() -> None:
    """Findings, ids and ciphertexts stay exact while the pipeline is replaced under them."""
    texts = [_text(i) for i in range(2000, 2100)]
    scrubbed = [pii.scrub_text(t, "pseudonymize", KEY)[0] for t in texts]
    assert [pii.restore_text(s, KEY) for s in scrubbed] == texts
    mail, phone = texts[0].index("kunde"), texts[0].index("0171")
    assert pii.find_pii(texts[0]) == [
        ("EMAIL_ADDRESS", mail, mail + 27),
        ("PHONE_NUMBER", phone, phone + 12),
    ]
    token, found = pii.scrub_id("kunde.2000@beispiel-mail.de", "redact")
    assert token.startswith("<EMAIL_ADDRESS>-") and found == {"EMAIL_ADDRESS": 1}
