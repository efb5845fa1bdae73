"""The prefilter (``MAY_HOLD_PII``): a text it rejects is not analysed, so it must pass every
text in which the analyzer finds something.

Checked by generating findings: from every pattern of every recognizer in the built engine's
registry (a new recognizer is covered, or this fails), and for the recognizers whose findings
a random pattern match would seldom survive (checksums, libphonenumber's validity) from valid
values: IBANs of every country Presidio knows, Steuer-IDs, card numbers, USt-IdNrs, IP
addresses, e-mail addresses plain and "(at)", phone numbers (every region's example numbers,
digit runs, the shortest German ones), each embedded in random text and written in random digit
scripts. ``pii._analyze`` is the analysis without the prefilter, ``pii.find_pii`` with it.
"""

from __future__ import annotations

import re
import string
from collections import Counter

import phonenumbers
import pytest
import regex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from presidio_analyzer import PatternRecognizer
from presidio_analyzer.predefined_recognizers.generic.iban_patterns import regex_per_country

from feinschliff import pii

# the patterns run as Presidio runs them (``PatternRecognizer.global_regex_flags``)
FLAGS = re.DOTALL | re.MULTILINE | re.IGNORECASE
# the zero of every decimal digit script Python knows, ASCII and full-width among them
ZEROS = [chr(c) for c in range(0x110000) if chr(c).isdecimal() and int(chr(c)) == 0]
WORDS = ["", "Tel. ", "Telefon: ", "IBAN ", "ip ", "Steuer-ID ", "USt-IdNr. ", "Karte ", "an "]
FILLER = st.text(
    st.characters(blacklist_categories=("Nd", "Cs"), blacklist_characters="@"), max_size=8
)
EXAMPLES = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def analyzer():
    return pii._engines()[0]


def check(analyzer, text: str) -> list:
    """The analyzer's findings in ``text``; fails if the prefilter would have skipped it."""
    findings = pii._analyze(analyzer, text)
    if findings:
        expected = sorted((f.entity_type, f.start, f.end) for f in findings)
        assert pii.find_pii(text) == expected, f"prefilter skips {text!r}"
    return findings


def in_script(text: str, zero: str) -> str:
    return text.translate({ord("0") + i: chr(ord(zero) + i) for i in range(10)})


@st.composite
def embedded(draw, values):
    """A value with a context word and random text around it, its digits in some script."""
    value = draw(values)
    if draw(st.booleans()):
        value = in_script(value, draw(st.sampled_from(ZEROS)))
    return draw(FILLER) + draw(st.sampled_from(WORDS)) + value + " " + draw(FILLER)


# --------------------------------------------------------------------------- leaks now closed


@pytest.mark.parametrize(
    "address", ["dead:beef::cafe", "dead:beef:cafe:babe:dead:beef:cafe:babe", "::ffff", "a::"]
)
def test_ipv6_without_decimal_digits_is_redacted(address):
    out = pii.scrub_text(f"Server {address} antwortet nicht", "redact")
    assert out == ("Server <IP_ADDRESS> antwortet nicht", {"IP_ADDRESS": 1})


@pytest.mark.parametrize("zero", ["\u0660", "\u0966", "\U0001d7ce", "\u06f0", "\u0e50"])
@pytest.mark.parametrize(
    "template, entity",
    [
        ("Telefon 0151 12345678", "PHONE_NUMBER"),
        ("USt-IdNr. DE123456789", "DE_VAT_ID"),
        ("IBAN DE89 3704 0044 0532 0130 00", "IBAN_CODE"),
        ("Steuer-ID 86095742719", "DE_TAX_ID"),
        ("Karte 4111 1111 1111 1111", "CREDIT_CARD"),
        ("IP 192.168.0.1", "IP_ADDRESS"),
    ],
)
def test_digits_of_other_scripts_are_found(template, entity, zero):
    # Arabic-Indic, Devanagari, mathematical bold, Persian, Thai: phone numbers and USt-IdNrs
    # were found but skipped by the prefilter, the others not found at all
    text = in_script(template, zero)
    assert [f[0] for f in pii.find_pii(text)] == [entity]


@pytest.mark.parametrize(
    "text",
    [
        "max\uff08at\uff09example.de",  # full-width brackets
        "max(a\u00adt)example.de",  # soft hyphen
        "max(a\u200bt)example.de",  # zero-width space
        "max (\uff41\uff54) example.de",  # full-width letters
    ],
)
def test_at_written_with_look_alikes_is_found(text):
    assert [f[0] for f in pii.find_pii(text)] == ["EMAIL_ADDRESS"]


@pytest.mark.parametrize(
    "text",
    [
        "Das dauert etwa 3 Werktage.",
        "wegen meiner Nachzahlung von 52 Euro",
        "Bitte installieren Sie Version 2.1 oder neuer.",
        "Bei Fragen erreichen Sie uns von 8 bis 18 Uhr.",
        "Ich möchte meinen Abschlag zum 12. März ändern.",
        "Das geht nicht ab 1. 2. oder 3. Mai, aber um 10 Uhr.",
    ],
)
def test_texts_with_small_numbers_are_not_analysed(text, monkeypatch):
    def fail(*args):
        raise AssertionError(f"analysed {text!r}")

    monkeypatch.setattr(pii, "_analyze", fail)
    assert pii.scrub_text(text, "redact") == (text, {})


# --------------------------------------------------------------------------- every recognizer


def test_every_recognizer_is_covered(analyzer):
    # pattern recognizers by their own patterns below (one with a checksum also needs a
    # generator of valid values here), the phone recognizer by phone numbers
    names = {r.name for r in analyzer.registry.recognizers}
    assert {"GermanPhone", "LooseIban", "IpRecognizer"} <= names
    for recognizer in analyzer.registry.recognizers:
        assert isinstance(recognizer, PatternRecognizer) or recognizer.name == "GermanPhone", (
            f"{recognizer.name}: no generator for it in this test"
        )


@EXAMPLES
@given(data=st.data())
def test_pattern_matches_pass_the_prefilter(analyzer, data):
    patterns = [
        (r, p)
        for r in analyzer.registry.recognizers
        if isinstance(r, PatternRecognizer)
        for p in r.patterns
    ]
    recognizer, pattern = data.draw(st.sampled_from(patterns), label="pattern")
    value = st.from_regex(re.compile(pattern.regex, FLAGS), fullmatch=True)
    check(analyzer, data.draw(embedded(value)))


def iban(country: str, bban: str) -> str:
    digits = (
        (bban + country + "00")
        .upper()
        .translate({ord(c): str(ord(c) - 55) for c in string.ascii_uppercase})
    )
    return f"{country}{98 - int(digits) % 97:02d}{bban}"


# BBANs per country, drawn from Presidio's format check; the alphanumeric parts also all
# letters, which leaves the fewest digits
BBANS = st.sampled_from(sorted(regex_per_country)).flatmap(
    lambda cc: st.tuples(
        st.just(cc),
        st.one_of(
            st.from_regex(regex_per_country[cc], fullmatch=True),
            st.from_regex(regex_per_country[cc].replace("[a-zA-Z0-9]", "[A-Z]"), fullmatch=True),
        ).map(lambda s: re.sub(r"\s", "", s)[4:]),
    )
)


@st.composite
def ibans(draw):
    country, bban = draw(BBANS)
    code = iban(country, bban)
    sep = draw(st.sampled_from(["", " ", "-", "  ", ".", "\n"]))
    code = sep.join(code[i : i + 4] for i in range(0, len(code), 4))
    return code.lower() if draw(st.booleans()) else code


def test_ibans_with_fewest_digits_pass(analyzer):
    # every country's format with letters wherever allowed: the least digits its IBANs have
    for country, rx in regex_per_country.items():
        value = iban(country, _fewest_digits_bban(country, rx))
        assert regex.fullmatch(rx, value), value
        findings = check(analyzer, f"IBAN {value} bitte")
        assert [f.entity_type for f in findings] == ["IBAN_CODE"], value


def _fewest_digits_bban(country: str, rx: str) -> str:
    """A BBAN in Presidio's format for ``country``, letters wherever it allows them."""
    form = regex.sub(r"\[ \]\?", "", rx)
    body = form[len(f"({country})") + len("[0-9]{2}") :]
    out = []
    for cls, count in regex.findall(r"\(?(\[[^\]]+\])\)?(?:\{(\d+)\})?", body):
        out.append(("7" if cls == "[0-9]" else "0" if cls == "[0]" else "B") * int(count or 1))
    return "".join(out)


@EXAMPLES
@given(text=embedded(ibans()))
def test_ibans_pass(analyzer, text):
    check(analyzer, text)


def tax_id(first10: str) -> str:
    product = 10
    for digit in first10:
        total = (int(digit) + product) % 10 or 10
        product = total * 2 % 11
    return first10 + str((11 - product) % 10)


TAX_IDS = st.lists(st.sampled_from("0123456789"), min_size=9, max_size=9).map(
    lambda ds: tax_id(str(1 + int(ds[0]) % 9) + "".join(ds))
)


@EXAMPLES
@given(
    text=embedded(
        st.tuples(TAX_IDS, st.sampled_from(["", " ", ".", "/", "-"])).map(
            lambda t: t[0][:2] + "".join(t[1] + t[0][i : i + 3] for i in (2, 5, 8))
        )
    )
)
def test_tax_ids_pass(analyzer, text):
    check(analyzer, text)


def luhn(body: str) -> str:
    total = 0
    for i, digit in enumerate(reversed(body)):
        d = int(digit) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return body + str(-total % 10)


CARDS = st.tuples(
    st.sampled_from(["4", "51", "55", "6", "3", "1"]),
    st.integers(12, 18),
    st.randoms(use_true_random=False),
).map(lambda t: luhn(t[0] + "".join(t[2].choice("0123456789") for _ in range(t[1] - len(t[0])))))


@EXAMPLES
@given(
    text=embedded(
        st.tuples(CARDS, st.sampled_from(["", " ", "-"])).map(
            lambda t: t[1].join(t[0][i : i + 4] for i in range(0, len(t[0]), 4))
        )
    )
)
def test_card_numbers_pass(analyzer, text):
    check(analyzer, text)


@EXAMPLES
@given(
    text=embedded(
        st.one_of(
            st.ip_addresses().map(str),
            st.ip_addresses(v=6).map(lambda ip: ip.exploded),
            st.sampled_from(["::", "::1", "a::", "::a", "a::b", "ffff::1.2.3.4"]),
        )
    )
)
def test_ip_addresses_pass(analyzer, text):
    check(analyzer, text)


AT = ["@", " @ ", "(at)", " [at] ", "{AT}", "\uff08at\uff09", "(a\u00adt)"]
AT += ["\\u0040", "%40", "&#64;"]  # the encodings pii_normalize decodes


@EXAMPLES
@given(
    text=embedded(
        st.tuples(st.emails(), st.sampled_from(AT)).map(lambda t: t[0].replace("@", t[1], 1))
    )
)
def test_email_addresses_pass(analyzer, text):
    check(analyzer, text)


# pieces of what the recognizers read, glued at random, so some random texts hold a finding
NEAR_PII = st.lists(
    st.one_of(
        st.from_regex(r"[0-9]{1,5}", fullmatch=True),
        st.sampled_from([" ", ".", "-", "/", ":", "::", "(", ")", "+", "@", "x", "\n", "\u00a0"]),
        st.sampled_from(["0", "+49", "de", "QA", "cafe", "(at)", "mail.de", "\u0660", "\uff11"]),
    ),
    min_size=2,
    max_size=12,
).map("".join)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=NEAR_PII)
def test_random_texts_pass(analyzer, text):
    check(analyzer, text)


# --------------------------------------------------------------------------- phone numbers


def _example_numbers() -> list[str]:
    """Every region's example number of every type, international and (German) national."""
    numbers = []
    regions = [(r, None) for r in sorted(phonenumbers.SUPPORTED_REGIONS)]
    regions += [("001", cc) for cc in sorted(phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS)]
    for region, cc in regions:
        for kind in range(11):
            if cc is None:
                number = phonenumbers.example_number_for_type(region, kind)
            else:
                number = phonenumbers.example_number_for_non_geo_entity(cc)
            if number is None:
                continue
            fmt = phonenumbers.PhoneNumberFormat
            numbers.append(phonenumbers.format_number(number, fmt.INTERNATIONAL))
            numbers.append(phonenumbers.format_number(number, fmt.E164))
            if region == "DE":
                numbers.append(phonenumbers.format_number(number, fmt.NATIONAL))
    return sorted(set(numbers))


SEPARATORS = st.sampled_from([" ", "-", "/", ".", "(", ")", "x", "\u30fc", " - ", " // ", "~"])


@st.composite
def phone_like(draw):
    """Digit runs with a prefix and separators, or an example number regrouped."""
    prefix = draw(st.sampled_from(["", "0", "+49", "0049", "+49 (0)", "(0", "+"]))
    digits = draw(st.from_regex(r"[1-9][0-9]{1,12}", fullmatch=True))
    if draw(st.booleans()):
        digits = re.sub(r"\D", "", draw(st.sampled_from(EXAMPLE_NUMBERS)))
        prefix = "+" if draw(st.booleans()) else ""
    cuts = sorted(draw(st.lists(st.integers(1, max(1, len(digits) - 1)), max_size=3)))
    parts = [digits[i:j] for i, j in zip([0, *cuts], [*cuts, len(digits)], strict=True)]
    return prefix + "".join(p + draw(SEPARATORS) for p in parts[:-1]) + parts[-1]


EXAMPLE_NUMBERS = _example_numbers()


def test_example_numbers_of_every_region_pass(analyzer):
    found = 0
    for number in EXAMPLE_NUMBERS:
        found += bool(check(analyzer, f"Telefon {number}"))
    assert found > len(EXAMPLE_NUMBERS) * 0.9  # the generator yields numbers the matcher finds


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=embedded(phone_like()))
def test_phone_like_texts_pass(analyzer, text):
    check(analyzer, text)


def test_no_phone_number_has_fewer_than_four_digits(analyzer):
    # libphonenumber's metadata: the shortest valid national number anywhere has four digits
    # (a German pager, 1640), so every number written with its country code has more; and no
    # run of up to three digits (or a trunk '0' and three) is a phone number, after a phone
    # word, with '+' or '('
    meta = phonenumbers.PhoneMetadata
    regions = [meta.metadata_for_region(r) for r in phonenumbers.SUPPORTED_REGIONS]
    regions += [
        meta.metadata_for_nongeo_region(c) for c in phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS
    ]
    shortest = min(
        min(length for length in region.general_desc.possible_length if length > 0)
        for region in regions
    )
    assert shortest >= 4
    phone = next(r for r in analyzer.registry.recognizers if r.name == "GermanPhone")
    for length in (1, 2, 3):
        for n in range(10**length):
            for text in ("Telefon {}", "Telefon +{}", "Tel. ({})", "Tel. 0{}"):
                text = text.format(f"{n:0{length}d}")
                assert not phone.analyze(text, ["PHONE_NUMBER"], None), text
    assert check(analyzer, "Tel. 1640")  # four digits can be one, and pass


def test_four_digit_phone_number_under_a_phone_key_is_redacted():
    # the phone word a bare run needs may be the dict key: the value alone must pass
    counts = Counter()
    assert pii.scrub_value({"telefon": "1640"}, "redact", None, counts) == {
        "telefon": "<PHONE_NUMBER>"
    }
    assert counts == {"PHONE_NUMBER": 1}
