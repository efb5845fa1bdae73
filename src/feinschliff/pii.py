"""PII scrubbing with Presidio: pattern recognizers only, German identifiers, offline.

Modes:
  - ``off``: text passes unchanged;
  - ``redact``: every finding becomes ``<ENTITY_TYPE>`` (deterministic, irreversible);
  - ``pseudonymize``: every finding becomes ``<ENTITY_TYPE:ciphertext>`` where the ciphertext is
    Presidio's ``encrypt`` operator (AES-CBC, random IV); ``restore_text`` decrypts it back exactly.

The key for ``pseudonymize`` comes from a secret (``FEINSCHLIFF_PII_KEY`` in the environment, or a
Prefect Secret block of the same name in kebab case when Prefect is installed) and is never written
anywhere by this module; a short fingerprint (``key_fingerprint``) may be recorded instead. The
encryption is not deterministic: deduplicate *before* scrubbing.

Identifiers (annotator and end-user ids, trace and record ids: ``scrub_id``) are replaced whole
by a *stable* token instead, ``<EMAIL_ADDRESS>-3f2a9c0d1e4b``, when they hold PII, so rows of one
contributor still group together in the written rows (the poisoning scan). The hex is
HMAC-SHA256 of the id under a key derived from the pseudonymization key (``pseudonymize``), or
its plain SHA-256 (``redact``). That is pseudonymous, not anonymous: whoever can guess an id
(an e-mail address) can compute its token, in ``redact`` mode without any key; tokens cannot be
decrypted (``restore_text`` leaves them as they are). Ids without PII stay as they are. Ids
generated at random (UUIDs, 16/32-hex span and trace ids) are not analysed (``_GENERATED_ID``);
a ``location`` keeps its row index after its path's token (``scrub_location``).

How it runs offline, and the recognizers' German gaps closed: ``pii_recognizers``; values
written with look-alike characters or encoded (a non-breaking space in an IBAN, full-width
digits, ``\\u0040`` or ``%40`` for '@'): ``pii_normalize``. Recall on a synthetic German corpus:
tests/reliability/test_data_leaks.py; on its look-alike forms: tests/unit/test_pii_adversarial.py.
Texts that no recognizer could find anything in (``pii_recognizers.MAY_HOLD_PII``: no '@', no
four digits close together, ...) are not analysed.

Not detected: names, addresses and anything else that needs a language model.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import threading
from collections import Counter
from functools import cache, lru_cache
from typing import Any, Literal

from feinschliff.pii_normalize import normalized
from feinschliff.pii_recognizers import MAY_HOLD_PII as _MAY_HOLD_PII
from feinschliff.pii_recognizers import build_engines, load_presidio

PiiMode = Literal["off", "redact", "pseudonymize"]
KEY_ENV = "FEINSCHLIFF_PII_KEY"
SCORE_THRESHOLD = 0.4  # PhoneRecognizer scores German numbers at 0.4 with a blank pipeline
ENTITIES = (
    "EMAIL_ADDRESS",
    "IBAN_CODE",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "IP_ADDRESS",
    "DE_TAX_ID",
    "DE_VAT_ID",
)
_PSEUDONYM = re.compile(r"<([A-Z][A-Z_]*):([A-Za-z0-9_=+/-]{24,})>")
# An ISO-8601 date or time (provenance timestamps) holds none of the entities above.
_ISO_TIME = re.compile(
    r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?"
).fullmatch
# Ids services generate at random (UUIDs; OpenTelemetry's and Langfuse's 16/32-hex span and
# trace ids) hold no PII, and analysing each costs ~0.4 ms (2-3 per Langfuse record). Only
# with a hex letter after the first two characters: every entity above is digits there (an
# all-digit id may be a phone or card number; "be" + 14 digits is a Belgian IBAN).
_HEX = "[0-9a-fA-F]"
_GENERATED_ID = re.compile(
    rf"(?=..[0-9a-fA-F-]*?[a-fA-F])(?:{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}"
    rf"|{_HEX}{{16}}|{_HEX}{{32}})"
).fullmatch
# The row index our readers append to a file's path in a ``location`` (``#data[3]``, ``#3``,
# ``:12``, then ``/observations[0]``): generated, never PII; the path is analysed once.
_LOCATION_SUFFIX = re.compile(
    r"(?:#data\[\d+\]|#\d+|:\d+)(?:/(?:scores|observations)\[\d+\])?$"
).search
MIN_NUMBER_DIGITS = 6  # shorter numbers (ratings, counts) are no identifier: not analysed
_LOCK = threading.Lock()
RELOAD_ANALYSES = 10_000  # analyses per spaCy pipeline (see _Vocab)


class PiiError(RuntimeError):
    """Missing or invalid key, or Presidio could not be set up."""


def scrub_text(text: str, mode: PiiMode, key: str | None = None) -> tuple[str, Counter[str]]:
    """Scrub one text; returns the new text and the number of findings per entity type."""
    if mode == "off" or not text or not _may_hold_pii(text):
        return text, Counter()
    if mode == "pseudonymize":
        check_key(key)
    return _scrub(text, mode, key)


def find_pii(text: str) -> list[tuple[str, int, int]]:
    """Every finding as ``(entity_type, start, end)``, the spans ``scrub_text`` would replace."""
    if not text or not _may_hold_pii(text):
        return []
    analyzer, _ = _engines()
    return sorted((f.entity_type, f.start, f.end) for f in _analyze(analyzer, text))


def restore_text(text: str, key: str) -> str:
    """Decrypt every ``<ENTITY:ciphertext>`` that ``pseudonymize`` wrote back into the original."""
    check_key(key)
    load_presidio()
    from presidio_anonymizer import DeanonymizeEngine
    from presidio_anonymizer.entities import OperatorConfig, OperatorResult

    engine = DeanonymizeEngine()
    decrypt = {"DEFAULT": OperatorConfig("decrypt", {"key": key})}

    def plain(match: re.Match[str]) -> str:
        cipher = match.group(2)
        entity = OperatorResult(start=0, end=len(cipher), entity_type=match.group(1))
        return engine.deanonymize(text=cipher, entities=[entity], operators=decrypt).text

    return _PSEUDONYM.sub(plain, text)


def scrub_value(
    value: Any, mode: PiiMode, key: str | None, counts: Counter[str], context: str = ""
) -> Any:
    """Scrub a JSON-like value (dicts, lists; a quarantined record's raw value); counts are added
    to ``counts``.

    Strings are scrubbed like ``scrub_text``; numbers (not booleans) whose decimal form holds PII
    (a Steuer-ID or phone number stored as an integer) become the string ``scrub_text`` makes of
    that form. A value under a dict key is analysed with the key in front (``telefon: 49151...``),
    so the key counts as context, e.g. as the phone word a bare digit run needs. Dict keys that
    hold PII (user ids as keys) become their stable ``scrub_id`` token, so distinct keys stay
    distinct (``redact`` would merge them) and one person's key is the same everywhere.
    """
    if mode == "off":
        return value
    if isinstance(value, str):
        text, found = _scrub_in_context(value, context, mode, key)
        counts.update(found)
        return text
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out[_scrub_key(k, mode, key, counts)] = scrub_value(
                v, mode, key, counts, k if isinstance(k, str) else ""
            )
        return out
    if isinstance(value, list | tuple):
        return [scrub_value(v, mode, key, counts, context) for v in value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        digits = str(value)
        if sum(c.isdigit() for c in digits) < MIN_NUMBER_DIGITS:
            return value
        text, found = _scrub_in_context(digits, context, mode, key)
        if found:
            counts.update(found)
            return text
    return value


def scrub_id(value: str, mode: PiiMode, key: str | None = None) -> tuple[str, Counter[str]]:
    """An identifier (annotator or end-user id, trace id, record id, location) that holds PII,
    replaced whole by its stable token ``<ENTITY>-<12 hex>`` (see the module docstring), and the
    findings per entity type; an id without PII, unchanged. The same id always gives the same
    token (under one key), distinct ids distinct tokens. Memoised: ids repeat across rows."""
    if (
        mode == "off"
        or not value
        or not _may_hold_pii(value)
        or _ISO_TIME(value)
        or _GENERATED_ID(value)
    ):
        return value, Counter()
    if mode == "pseudonymize":
        check_key(key)
    token, found = _id_token(value, mode, key if mode == "pseudonymize" else None)
    return token, Counter(dict(found))


def scrub_location(value: str, mode: PiiMode, key: str | None = None) -> tuple[str, Counter[str]]:
    """A record's ``location`` (an export file's path and the row's index in it): the path is
    ``scrub_id``-ed (memoised: one analysis per file, not per row), the index kept, so a path
    that holds PII becomes ``<ENTITY>-<12 hex>#data[3]``."""
    suffix = _LOCATION_SUFFIX(value)
    if suffix is None or suffix.start() == 0:
        return scrub_id(value, mode, key)
    token, found = scrub_id(value[: suffix.start()], mode, key)
    return token + suffix.group(), found


@lru_cache(maxsize=1 << 16)
def _id_token(
    value: str, mode: PiiMode, key: str | None
) -> tuple[str, tuple[tuple[str, int], ...]]:
    analyzer, anonymizer = _engines()  # before importing Presidio: it imports it lean
    from presidio_anonymizer.entities import OperatorConfig

    findings = _analyze(analyzer, value)
    if not findings:
        return value, ()
    items = anonymizer.anonymize(
        text=value,
        analyzer_results=findings,
        operators={"DEFAULT": OperatorConfig("replace", {"new_value": ""})},
    ).items
    types = [i.entity_type for i in sorted(items, key=lambda i: i.start)]
    data = value.encode("utf-8")
    if mode == "pseudonymize":
        assert key is not None
        subkey = hmac.new(key.encode("utf-8"), b"feinschliff-pii-id", hashlib.sha256).digest()
        digest = hmac.new(subkey, data, hashlib.sha256).hexdigest()
    else:
        digest = hashlib.sha256(b"feinschliff-pii-id:" + data).hexdigest()
    return f"<{'+'.join(dict.fromkeys(types))}>-{digest[:12]}", tuple(Counter(types).items())


def _scrub_key(k: Any, mode: PiiMode, key: str | None, counts: Counter[str]) -> Any:
    if isinstance(k, bool) or not isinstance(k, str | int | float):
        return k
    token, found = scrub_id(str(k), mode, key)
    if not found:
        return k
    counts.update(found)
    return token


def _scrub_in_context(
    text: str, context: str, mode: PiiMode, key: str | None
) -> tuple[str, Counter[str]]:
    """``scrub_text`` of ``text``, analysed as ``"{context}: {text}"``; only findings that reach
    into ``text`` count (clipped to it)."""
    if not context or not text or not _may_hold_pii(text):
        return scrub_text(text, mode, key)
    if mode == "pseudonymize":
        check_key(key)
    analyzer, _ = _engines()  # before importing Presidio: it imports it lean
    from presidio_analyzer import RecognizerResult

    prefix = f"{context}: "
    n = len(prefix)
    findings = [
        RecognizerResult(f.entity_type, max(f.start - n, 0), f.end - n, f.score)
        for f in _analyze(analyzer, prefix + text)
        if f.end > n
    ]
    return _anonymize(text, findings, mode, key)


def load_key(name: str = KEY_ENV) -> str:
    """The pseudonymization key from the environment or a Prefect Secret block; never a file."""
    from feinschliff.ingest.credentials import lookup_secret

    key = lookup_secret(name)
    if key is None:
        raise PiiError(
            f"pii mode 'pseudonymize' needs a key: set the environment variable {name} "
            f"(16, 24 or 32 bytes in UTF-8) or a Prefect Secret block '{_block_name(name)}'"
        )
    try:
        check_key(key)
    except PiiError as exc:  # say where the bad key came from
        raise PiiError(f"{exc}; it is {len(key.encode())} bytes ({name} or its block)") from None
    return key


def check_key(key: str | None) -> None:
    if not key or len(key.encode("utf-8")) not in (16, 24, 32):
        raise PiiError("the pseudonymization key must be 16, 24 or 32 bytes long (AES-128/192/256)")


def key_fingerprint(key: str) -> str:
    """A short, non-reversible id of the key, so a manifest can say which key was used."""
    return hashlib.sha256(b"feinschliff-pii-key:" + key.encode("utf-8")).hexdigest()[:12]


def _block_name(env_name: str) -> str:
    return env_name.lower().replace("_", "-")


# --------------------------------------------------------------------------- presidio


def _scrub(text: str, mode: PiiMode, key: str | None) -> tuple[str, Counter[str]]:
    analyzer, _ = _engines()
    return _anonymize(text, _analyze(analyzer, text), mode, key)


def _may_hold_pii(text: str) -> bool:
    """Whether any recognizer could find something in ``text`` (``MAY_HOLD_PII``, on the plain
    form the analyzer reads); other texts are not analysed."""
    return _MAY_HOLD_PII(normalized(text).text) is not None


def _analyze(analyzer: Any, text: str) -> list[Any]:
    """Findings in ``text``, analysed in its plain form (``pii_normalize``: JSON escapes
    decoded, look-alike spaces, dashes and digits made ASCII), their spans mapped back onto
    ``text``. A quarantined raw value is often JSON still encoded as a string (Langfuse's v2
    ``input``); there ``\\n0151 1234567`` glued the ``n`` to the number, and the recognizers'
    word boundaries missed it."""
    plain = normalized(text)
    with _VOCAB.lock:
        _VOCAB.count(analyzer)
        findings = analyzer.analyze(
            text=plain.text,
            language="de",
            entities=list(ENTITIES),
            score_threshold=SCORE_THRESHOLD,
        )
    if plain.text is not text:
        for finding in findings:
            finding.start, finding.end = plain.span(finding.start, finding.end)
    return findings  # type: ignore[no-any-return]


class _Vocab:
    """spaCy keeps every token it ever saw in its vocab, and each e-mail address, phone number
    or IBAN is a new one: a scrubbing process grew by ~0.4 KiB per distinct token, without
    bound. A fresh pipeline (the blank one from disk, ~0.06 s) every ``RELOAD_ANALYSES``
    analyses bounds that. spaCy's memory zones would too, but its tokenizer caches nothing
    inside one (measured: +35 % CPU per analysis). One analysis at a time (``lock``): a
    reload empties the engine's model table under a running analysis."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.analyses = 0

    def count(self, analyzer: Any) -> None:
        """Before an analysis, with ``lock`` held: reload after ``RELOAD_ANALYSES``."""
        self.analyses += 1
        if self.analyses > RELOAD_ANALYSES:
            self.analyses = 1
            engine = getattr(analyzer, "nlp_engine", None)
            if hasattr(engine, "load"):
                engine.load()  # presidio's SpacyNlpEngine: spacy.load of its configured models


_VOCAB = _Vocab()


def _anonymize(
    text: str, findings: list[Any], mode: PiiMode, key: str | None
) -> tuple[str, Counter[str]]:
    if not findings:
        return text, Counter()
    _, anonymizer = _engines()  # before importing Presidio: it imports it lean
    from presidio_anonymizer.entities import OperatorConfig

    if mode == "redact":
        result = anonymizer.anonymize(text=text, analyzer_results=findings)
        return result.text, Counter(item.entity_type for item in result.items)
    result = anonymizer.anonymize(
        text=text,
        analyzer_results=findings,
        operators={"DEFAULT": OperatorConfig("encrypt", {"key": key})},
    )
    # Wrap each ciphertext with its entity type, so restore_text can find and decrypt it.
    out = result.text
    for item in sorted(result.items, key=lambda i: i.start, reverse=True):
        out = (
            f"{out[: item.start]}<{item.entity_type}:{out[item.start : item.end]}>{out[item.end :]}"
        )
    return out, Counter(item.entity_type for item in result.items)


@cache
def _engines() -> tuple[Any, Any]:
    with _LOCK:
        return build_engines()


def warm_up() -> None:
    """Build the engines now (a few seconds), e.g. before timing a run."""
    _engines()
