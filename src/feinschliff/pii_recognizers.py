"""Presidio engines for ``feinschliff.pii``: the recognizers, built offline.

How it runs offline (FACTS 9): a blank spaCy ``de`` pipeline is saved once into the cache dir and
handed to Presidio (``AnalyzerEngine()`` alone would download an English model); the e-mail
recognizer uses tldextract's bundled suffix list instead of fetching one. Gaps it closes: the
Steuer-ID written in groups (``86 095 742 719``) gets an extra checksum-validated pattern; IBANs
typed in lower or mixed case, or with a line break, two blanks or dots between the groups, are
found too; e-mail addresses written "max(at)example.de" or "max [at] example [dot] de" too; the
score threshold is 0.4 because phone numbers score exactly 0.4 without an NER model; dates and
bare digit runs (contract numbers, meter readings), which libphonenumber accepts as German
numbers, are not phone numbers unless a phone word precedes them; an e-mail address whose
local part holds "/", "?" or "#" (a path ``exports/max@example.de``) is checked by its domain
alone (tldextract read it as a URL and let it through). Recall on a synthetic German corpus:
tests/reliability/test_data_leaks.py.

``MAY_HOLD_PII`` says which texts are analysed at all: those holding the least any recognizer's
finding needs, in the plain form the analyzer reads ('@' or "(at)"; four digits close together;
an IBAN's check digits after a country code whose format may follow them with letters; "::" or
a colon between hex digits, for IPv6 addresses without a decimal digit). Support texts with only
small numbers ("3 Werktage", "Version 2.1") are not analysed. Each bound is checked against
generated findings of every recognizer: tests/unit/test_pii_prefilter.py.
"""

from __future__ import annotations

import importlib.abc
import re
import shutil
import sys
import tempfile
import threading
from functools import cache
from pathlib import Path
from typing import Any


def build_engines() -> tuple[Any, Any]:
    """Presidio's analyzer (the recognizers below, a blank spaCy ``de`` pipeline) and anonymizer."""
    load_presidio()
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import NlpEngineProvider
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        DeTaxIdRecognizer,
        DeVatIdRecognizer,
        IbanRecognizer,
        IpRecognizer,
        PhoneRecognizer,
    )
    from presidio_anonymizer import AnonymizerEngine

    nlp = NlpEngineProvider(
        nlp_configuration={
            "nlp_engine_name": "spacy",
            "models": [{"lang_code": "de", "model_name": str(blank_spacy_dir())}],
        }
    ).create_engine()
    registry = RecognizerRegistry(supported_languages=["de"])
    for recognizer in (
        _iban_recognizer(IbanRecognizer),
        _email_recognizer(),
        _obfuscated_email_recognizer(),
        _phone_recognizer(PhoneRecognizer),
        CreditCardRecognizer(supported_language="de"),
        IpRecognizer(supported_language="de"),
        DeTaxIdRecognizer(supported_language="de"),
        _grouped_tax_id_recognizer(DeTaxIdRecognizer),
        DeVatIdRecognizer(supported_language="de"),
    ):
        registry.add_recognizer(recognizer)
    analyzer = AnalyzerEngine(registry=registry, nlp_engine=nlp, supported_languages=["de"])
    return analyzer, AnonymizerEngine()


@cache
def load_presidio() -> None:
    """Import Presidio without Hugging Face transformers, which it imports (its pipelines:
    ~4 of ~8 s of start-up) only for its transformers NLP engine; the pattern recognizers
    never use it (presidio-analyzer's ``hf_pipeline`` stays None). torch is still imported
    (by spaCy's thinc, ~1 s).

    Only the imports made by this thread while it imports Presidio are refused: another thread
    importing transformers meanwhile gets it, and so does any later import (a training in the
    same process). Where transformers is imported already, Presidio simply uses it."""
    refuse = _RefuseInThisThread("transformers")
    sys.meta_path.insert(0, refuse)
    try:
        import presidio_analyzer  # noqa: F401
        import presidio_anonymizer  # noqa: F401
    finally:
        sys.meta_path.remove(refuse)


class _RefuseInThisThread(importlib.abc.MetaPathFinder):
    """An import finder that makes ``package`` (and its submodules) an ImportError in the
    thread that created it; other threads find it as usual."""

    def __init__(self, package: str):
        self.package, self.thread = package, threading.get_ident()

    def find_spec(self, name, path, target=None):  # type: ignore[no-untyped-def]
        if name.partition(".")[0] == self.package and threading.get_ident() == self.thread:
            raise ImportError(f"{name} is not needed by Presidio's pattern recognizers")
        return None  # the other finders decide


def blank_spacy_dir() -> Path:
    """A blank spaCy ``de`` pipeline on disk (created once in the cache; no model download)."""
    import spacy

    from feinschliff.models import feinschliff_home

    target = feinschliff_home() / "cache" / f"spacy-blank-de-{spacy.__version__}"
    if (target / "config.cfg").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".spacy-"))
    spacy.blank("de").to_disk(tmp)
    try:
        tmp.rename(target)
    except OSError:  # another process won the race; its copy is as good as ours
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _grouped_tax_id_recognizer(base: type) -> Any:
    """Steuer-ID written in groups (``86 095 742 719``, ``86/095/742/719``), checksum-validated."""
    from presidio_analyzer import Pattern, PatternRecognizer

    class GroupedTaxId(PatternRecognizer):
        def validate_result(self, pattern_text: str) -> bool | None:
            digits = re.sub(r"\D", "", pattern_text)
            return base().validate_result(digits)

    return GroupedTaxId(
        supported_entity="DE_TAX_ID",
        supported_language="de",
        name="DeTaxIdGroupedRecognizer",
        patterns=[Pattern("Steuer-ID grouped", r"\b[1-9]\d(?:[ ./-]\d{3}){3}\b", 0.5)],
        context=list(base.CONTEXT),
    )


def _iban_recognizer(base: type) -> Any:
    """Presidio's IBAN recognizer, also for IBANs typed in lower or mixed case (``de89 3704
    ...``, ``De89...``) or with other separators between the groups: a line break (pasted from
    a letter), two blanks, a dot.

    The upstream pattern is upper case with one blank or hyphen between groups. Each IBAN-shaped
    span is analysed on its own in that form (separator runs made one blank, letters upper
    case), its findings mapped back; on its own, because an upper-cased word after an IBAN would
    be read as one more group and fail the checksum. The checksum keeps false findings out.
    """

    class LooseIban(base):  # type: ignore[misc, valid-type]
        def analyze(self, text, entities, nlp_artifacts=None, regex_flags=None):  # type: ignore[no-untyped-def]
            results = super().analyze(text, entities, nlp_artifacts, regex_flags)
            for match in _LOOSE_IBAN.finditer(text):
                plain, back = _iban_form(match.group())
                if plain == match.group():
                    continue  # found above, or no IBAN
                # a word after the IBAN may have been taken for more groups: drop them
                while not (found := super().analyze(plain, entities, nlp_artifacts)):
                    cut = plain.rfind(" ")
                    if cut < 14:  # country, check digits and two groups at least
                        break
                    plain = plain[:cut]
                for r in found:
                    r.start, r.end = match.start() + back[r.start], match.start() + back[r.end]
                    results.append(r)
            return results

    return LooseIban(supported_language="de")


_IBAN_SEP = r"[\s.\-]{0,3}"
_LOOSE_IBAN = re.compile(
    rf"(?i)(?<![a-z0-9])[a-z]{{2}}\d{{2}}(?:{_IBAN_SEP}[a-z0-9]{{4}}){{2,7}}"
    rf"(?:{_IBAN_SEP}[a-z0-9]{{1,3}})?(?![a-z0-9])"
)


def _iban_form(span: str) -> tuple[str, list[int]]:
    """``span`` upper case with one blank for each separator run, and for each of its
    positions (and its end) the position in ``span``."""
    plain, back = [], []
    for i, char in enumerate(span):
        if char.isalnum():
            plain.append(char.upper())
            back.append(i)
        elif not back or plain[-1] != " ":
            plain.append(" ")
            back.append(i)
    back.append(len(span))
    return "".join(plain), back


# A date (03.11.2026, 7.7.26) or a bare digit run without trunk prefix (a contract or meter
# number): libphonenumber accepts both as German numbers, but redacting them would strip
# useful content from the training data. A bare run still counts right after a phone word.
_DATE = re.compile(r"\d{1,2}\.\d{1,2}\.(?:\d{2}|\d{4})")
_BARE = re.compile(r"\(?[1-9]\d*\)?")
_PHONE_WORDS = re.compile(
    r"(?i)\b(?:tel|telefon\w*|handy\w*|mobil\w*|rufnummer|nummer|anruf\w*|rufen|"
    r"erreichbar|fax|whatsapp)\b"
)


def _phone_recognizer(base: type) -> Any:
    class GermanPhone(base):  # type: ignore[misc, valid-type]
        def analyze(self, text, entities, nlp_artifacts=None):  # type: ignore[no-untyped-def]
            return [
                r
                for r in super().analyze(text, entities, nlp_artifacts)
                if _plausible_phone(text, r.start, r.end)
            ]

    return GermanPhone(supported_regions=("DE",), supported_language="de")


def _plausible_phone(text: str, start: int, end: int) -> bool:
    found = text[start:end]
    if _DATE.fullmatch(found):
        return False
    if _BARE.fullmatch(found):
        before = text[max(0, start - 30) : start]
        gap = re.split(r"\d", before)[-1]  # only the words since the previous number
        return bool(_PHONE_WORDS.search(gap))
    return True


def _email_recognizer() -> Any:
    """Presidio's e-mail recognizer, validating domains against tldextract's bundled list."""
    from presidio_analyzer import Pattern
    from presidio_analyzer.predefined_recognizers import EmailRecognizer

    class OfflineEmailRecognizer(EmailRecognizer):
        def validate_result(self, pattern_text: str) -> bool:
            # The domain alone: tldextract reads the whole match as a URL, so a local part
            # with "/", "?" or "#" (legal in e-mail addresses; "exports/max@example.de" in a
            # path) became a host "exports" without a suffix and the address was let through.
            return _tld_extract()(pattern_text.rpartition("@")[2]).fqdn != ""

    # An address has at most 254 characters: unbounded ("{0,}"), the pattern tried from every
    # word of a long "a.a.a...@x" rescanned it to the '@' each time (5 s for 10,000 characters,
    # quadratic: a hostile record could stall the ingest for hours).
    patterns = [
        Pattern(p.name, p.regex.replace("{0,}", "{0,252}"), p.score)
        for p in EmailRecognizer.PATTERNS
    ]
    return OfflineEmailRecognizer(supported_language="de", patterns=patterns)


# "max(at)example.de", "info [at] firma [dot] de": how addresses are written against
# harvesters (imprints, e-mail signatures pasted into chats). Only with the brackets: a bare
# "at"/"dot" is a word in prose, not an address. The domain must have a public suffix.
_AT = r"(?:\s?[(\[{]\s?at\s?[)\]}]\s?| @ )"
_DOT_WORD = r"\s?[(\[{]\s?(?:dot|punkt)\s?[)\]}]\s?"
_DOT = rf"(?:{_DOT_WORD}|\.)"
# Bounded runs (a local part has at most 64 characters, a label 63): tried from every word,
# unbounded ones took seconds on a long run of "a.a.a." before an "(at)".
_OBFUSCATED_EMAIL = (
    rf"\b[\w.+-]{{1,64}}(?:{_DOT_WORD}[\w.+-]{{1,64}}){{0,4}}{_AT}"
    rf"[\w-]{{1,63}}(?:{_DOT}[\w-]{{1,63}}){{1,8}}\b"
)
_AT_MARK = re.compile(_AT, re.IGNORECASE).search
# Text that none of the recognizers can match, skipped unanalysed (an analysis costs 0.2-0.4
# ms, and most support texts hold some small number). Searched in the plain form the analyzer
# reads (``pii_normalize``: other scripts' digits, full-width forms and encoded '@'s made
# ASCII); each branch holds the least that some recognizer's finding needs, which
# tests/unit/test_pii_prefilter.py checks against generated findings of every recognizer:
_IBAN_FEW_DIGITS = "BH|GI|GT|KW|LC|LV|MD|QA|RO"
MAY_HOLD_PII = re.compile(
    # e-mail; "max(at)example.de"
    r"@|[(\[{]\s?at\s?[)\]}]"
    # four digits, at most four separators apart: the shortest valid German phone number has
    # four ("Tel. 1640", a pager), after a phone word; an IPv4 address four ("1.2.3.4"); a
    # Steuer-ID, USt-IdNr., card number and most IBANs more; libphonenumber allows up to four
    # punctuation marks, 'x' and 'ー' among them, between digits
    r"|\d(?:(?:[\W_xー]{0,4}\d){3}"
    # or an IBAN's check digits after a country code whose format allows letters right after
    # them (QA58 DOHB ...); every other country's format holds four digits in a row. Looked
    # behind from the digit: a branch starting with the country codes was tried at every
    # position and made this search 5x slower.
    rf"|(?<=(?:{_IBAN_FEW_DIGITS})\d)\d)"
    # IPv6: every form holds "::" or a colon between hex digits ("dead:beef::cafe", "::1")
    r"|:(?::|(?<=[0-9a-f]:)[0-9a-f])",
    re.IGNORECASE,
).search


def _obfuscated_email_recognizer() -> Any:
    from presidio_analyzer import Pattern, PatternRecognizer

    class ObfuscatedEmail(PatternRecognizer):
        def analyze(self, text, entities, nlp_artifacts=None, regex_flags=None):  # type: ignore[no-untyped-def]
            if not _AT_MARK(text):  # its pattern is slow to fail; most texts have no "(at)"
                return []
            return super().analyze(text, entities, nlp_artifacts, regex_flags)

        def validate_result(self, pattern_text: str) -> bool:
            domain = re.split(_AT, pattern_text, flags=re.IGNORECASE)[-1]
            domain = re.sub(_DOT, ".", domain, flags=re.IGNORECASE)
            return _tld_extract()(domain).fqdn != ""

    return ObfuscatedEmail(
        supported_entity="EMAIL_ADDRESS",
        supported_language="de",
        name="ObfuscatedEmailRecognizer",
        patterns=[Pattern("e-mail with (at)", _OBFUSCATED_EMAIL, 0.5)],
    )


@cache
def _tld_extract() -> Any:
    import tldextract

    # No suffix_list_urls: never fetch the public-suffix list, use the snapshot in the wheel.
    return tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)
