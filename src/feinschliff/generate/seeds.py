"""Seeds for self-instruct: topics and document passages, PII-scrubbed before any prompt exists.

- topics file: one topic per line; blank lines and ``#`` comments are skipped;
- documents folder (recursively, sorted): ``.txt``/``.md`` are split into paragraphs at blank
  lines and packed into passages of up to ``passage_chars``; ``.jsonl`` lines are a string or
  ``{"text": ...}``, cut at ``passage_chars``. macOS AppleDouble files (``._name.md``: resource
  forks a copy from a Mac leaves beside each file, binary) are skipped with a log line.

Every file must be UTF-8: one that is not is a ``SeedError`` naming the file and the first bad
byte (an argument error, raised before the stage writes anything).

Every seed passes ``feinschliff.pii.scrub_text`` (the same Presidio step as the feedback) in
this process, so the child process that talks to the teacher only ever sees scrubbed text.
Whole paragraphs and ``.jsonl`` values are scrubbed *before* they are packed and cut to
``passage_chars``: an IBAN cut in two would no longer be recognised, and its halves would
reach the teacher. A cut never splits a ``<ENTITY>`` placeholder.
The fingerprint of the inputs (path -> sha256 of the raw files) goes into the cache key and
the manifest. A seed whose text repeats an earlier one's is left out (``drop_repeats``).
"""

from __future__ import annotations

import codecs
import json
import logging
import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from feinschliff.artifacts import sha256_file
from feinschliff.generate.select import normalize
from feinschliff.generate.templates import replace_surrogates
from feinschliff.specs.generate import SeedsSpec

log = logging.getLogger(__name__)

DOC_SUFFIXES = (".txt", ".md", ".jsonl")
_PLACEHOLDER = re.compile(r"<[A-Z][A-Z_]*>")  # what ``redact`` writes in place of a finding


class SeedError(ValueError):
    """Seeds are missing, unreadable or empty."""


@dataclass(frozen=True)
class Seeds:
    items: list[tuple[str, str]]  # (seed id, scrubbed text)
    inputs: dict[str, str]  # file -> sha256
    pii_findings: Counter[str] = field(default_factory=Counter)
    repeats: dict[str, str] = field(default_factory=dict)  # left-out seed id -> the kept one


def read_seeds(spec: SeedsSpec, *, scrubbed: bool = True) -> Seeds:
    """The seeds, PII-scrubbed. ``scrubbed=False``: the same reading and checks without the
    scrubber, for `feinschliff run` to refuse unreadable seeds before the ingest starts."""
    findings: Counter[str] = Counter()

    def scrub(text: str) -> str:
        if not scrubbed:
            return text
        clean, found = _scrub(text, spec.pii)
        findings.update(found)
        return clean

    items: list[tuple[str, str]] = []
    inputs: dict[str, str] = {}
    if spec.topics is not None:
        path = Path(spec.topics)
        if not path.is_file():
            raise SeedError(f"seeds.topics: {path} is not a file")
        inputs[str(path)] = sha256_file(path)
        lines = _read_text(path, "seeds.topics").splitlines()
        items += [
            (f"{path.name}:{n}", scrub(line.strip()))
            for n, line in enumerate(lines, start=1)
            if line.strip() and not line.lstrip().startswith("#")
        ]
    if spec.documents is not None:
        folder = Path(spec.documents)
        if not folder.is_dir():
            raise SeedError(f"seeds.documents: {folder} is not a directory")
        files, skipped = document_files(folder)
        for path in skipped:
            log.info("generate: skipping %s (a macOS AppleDouble file, no document)", path)
        for path in files:
            rel = path.relative_to(folder).as_posix()
            inputs[str(path)] = sha256_file(path)
            for n, text in enumerate(_document_seeds(path, spec.passage_chars, scrub), start=1):
                items.append((f"{rel}#{n}", text))
    if not items:
        raise SeedError("no seeds: the topics file and documents folder hold no text")
    items, repeats = drop_repeats(items)
    return Seeds(items=items, inputs=inputs, pii_findings=findings, repeats=repeats)


def drop_repeats(items: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """The seeds without those whose text repeats an earlier one (case, width and whitespace
    aside: a topic listed twice, a footer in every document, two texts alike once redacted),
    and for each left out the id of the seed it repeats. The teacher would be asked the
    identical prompt twice, paid twice, for questions ``select`` then drops as duplicates."""
    first: dict[str, str] = {}
    kept: list[tuple[str, str]] = []
    repeats: dict[str, str] = {}
    for seed_id, text in items:
        key = normalize(text)
        if key in first:
            repeats[seed_id] = first[key]
        else:
            first[key] = seed_id
            kept.append((seed_id, text))
    if repeats:
        example = next(iter(repeats.items()))
        log.info(
            "generate: %d seeds repeat an earlier one and are asked once (%s repeats %s)",
            len(repeats),
            *example,
        )
    return kept, repeats


def document_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """The seed documents below ``folder`` (sorted), and the AppleDouble files left out."""
    found = sorted(p for p in folder.rglob("*") if p.suffix in DOC_SUFFIXES and p.is_file())
    skipped = [p for p in found if p.name.startswith("._")]
    return [p for p in found if not p.name.startswith("._")], skipped


def _read_text(path: Path, field: str) -> str:
    """The file's text; a UTF-8 byte-order mark (Windows editors write one) is no text: it
    made the first line of a JSONL file invalid JSON and hid a first ``#`` comment."""
    data = path.read_bytes()
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        text = data[bom:].decode("utf-8")
    except UnicodeDecodeError as exc:
        byte = exc.object[exc.start]
        raise SeedError(
            f"{field}: {path} is not UTF-8 (byte 0x{byte:02x} at offset {bom + exc.start}); "
            "save it as UTF-8"
        ) from None
    # as read_text: universal newlines (a Windows file's blank lines still part paragraphs)
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _scrub(text: str, mode: str) -> tuple[str, Counter[str]]:
    from feinschliff.pii import scrub_text

    return scrub_text(text, "redact" if mode == "redact" else "off")


def _document_seeds(path: Path, max_chars: int, scrub: Callable[[str], str]) -> list[str]:
    text = _read_text(path, "seeds.documents")
    if path.suffix == ".jsonl":
        seeds = []
        # split at "\n" only (as ``artifacts.jsonl_lines``): ``splitlines`` also cuts at a raw
        # U+2028/U+2029/U+0085 inside a JSON string
        for n, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError as exc:
                raise SeedError(f"{path}:{n}: invalid JSON ({exc})") from exc
            value = value.get("text") if isinstance(value, dict) else value
            if not isinstance(value, str):
                raise SeedError(f"{path}:{n}: expected a string or an object with `text`")
            value = replace_surrogates(value)  # "\ud83d" alone: no UTF-8, no prompt
            if value.strip():
                seeds.append(cut(scrub(value.strip()), max_chars)[0])
        return seeds
    return pack_passages([scrub(p) for p in paragraphs(text)], max_chars)


def paragraphs(text: str) -> list[str]:
    """Blocks between blank lines, whitespace collapsed to single spaces."""
    return [" ".join(p.split()) for p in text.split("\n\n") if p.strip()]


def cut(text: str, max_chars: int) -> list[str]:
    """``text`` in pieces of at most ``max_chars``; a cut that would split an ``<ENTITY>``
    placeholder moves before it."""
    pieces = []
    while len(text) > max_chars:
        at = max_chars
        placeholder = _PLACEHOLDER.match(text, max(text.rfind("<", 0, at), 0))
        if placeholder and 0 < placeholder.start() < at < placeholder.end():
            at = placeholder.start()
        pieces.append(text[:at])
        text = text[at:]
    return [*pieces, text] if text else pieces


def pack_passages(blocks: list[str], max_chars: int) -> list[str]:
    """Paragraphs packed greedily into passages of <= max_chars; a single longer paragraph is
    cut at the limit."""
    passages: list[str] = []
    current = ""
    for para in blocks:
        for piece in cut(para, max_chars):
            if current and len(current) + 2 + len(piece) > max_chars:
                passages.append(current)
                current = piece
            else:
                current = f"{current}\n\n{piece}" if current else piece
    if current:
        passages.append(current)
    return passages


def plan_requests(
    seeds: list[tuple[str, str]], num_instructions: int, per_seed: int
) -> list[tuple[str, str]]:
    """Self-instruct inputs: enough requests for ``num_instructions`` questions, cycling over
    the seeds; a seed's second and later rounds are marked so the prompts (and their sampling
    seeds) differ and the teacher is not asked the identical question twice."""
    needed = math.ceil(num_instructions / per_seed)
    if needed <= len(seeds):  # spread over topics and documents alike
        return [seeds[i * len(seeds) // needed] for i in range(needed)]
    plan = []
    for i in range(needed):
        seed_id, text = seeds[i % len(seeds)]
        round_ = i // len(seeds)
        if round_:
            plan.append((f"{seed_id}@{round_ + 1}", f"{text}\n\n(Variante {round_ + 1})"))
        else:
            plan.append((seed_id, text))
    return plan
