"""Seeds for self-instruct: topics and document passages, PII-scrubbed before any prompt exists.

- topics file: one topic per line; blank lines and ``#`` comments are skipped;
- documents folder (recursively, sorted): ``.txt``/``.md`` are split into passages at blank
  lines and packed up to ``passage_chars``; ``.jsonl`` lines are a string or ``{"text": ...}``.

Every seed passes ``feinschliff.pii.scrub_text`` (the same Presidio step as the feedback) in
this process, so the child process that talks to the teacher only ever sees scrubbed text.
The fingerprint of the inputs (path -> sha256 of the raw files) goes into the cache key and
the manifest.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from feinschliff.artifacts import sha256_file
from feinschliff.specs.generate import SeedsSpec

DOC_SUFFIXES = (".txt", ".md", ".jsonl")


class SeedError(ValueError):
    """Seeds are missing, unreadable or empty."""


@dataclass(frozen=True)
class Seeds:
    items: list[tuple[str, str]]  # (seed id, scrubbed text)
    inputs: dict[str, str]  # file -> sha256
    pii_findings: Counter[str] = field(default_factory=Counter)


def read_seeds(spec: SeedsSpec) -> Seeds:
    raw: list[tuple[str, str]] = []
    inputs: dict[str, str] = {}
    if spec.topics is not None:
        path = Path(spec.topics)
        if not path.is_file():
            raise SeedError(f"seeds.topics: {path} is not a file")
        inputs[str(path)] = sha256_file(path)
        lines = path.read_text(encoding="utf-8").splitlines()
        raw += [
            (f"{path.name}:{n}", line.strip())
            for n, line in enumerate(lines, start=1)
            if line.strip() and not line.lstrip().startswith("#")
        ]
    if spec.documents is not None:
        folder = Path(spec.documents)
        if not folder.is_dir():
            raise SeedError(f"seeds.documents: {folder} is not a directory")
        for path in sorted(p for p in folder.rglob("*") if p.suffix in DOC_SUFFIXES):
            rel = path.relative_to(folder).as_posix()
            inputs[str(path)] = sha256_file(path)
            for n, text in enumerate(_document_seeds(path, spec.passage_chars), start=1):
                raw.append((f"{rel}#{n}", text))
    if not raw:
        raise SeedError("no seeds: the topics file and documents folder hold no text")
    findings: Counter[str] = Counter()
    items = []
    for seed_id, text in raw:
        clean, found = _scrub(text, spec.pii)
        findings.update(found)
        items.append((seed_id, clean))
    return Seeds(items=items, inputs=inputs, pii_findings=findings)


def _scrub(text: str, mode: str) -> tuple[str, Counter[str]]:
    from feinschliff.pii import scrub_text

    return scrub_text(text, "redact" if mode == "redact" else "off")


def _document_seeds(path: Path, max_chars: int) -> list[str]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        seeds = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError as exc:
                raise SeedError(f"{path}:{n}: invalid JSON ({exc})") from exc
            value = value.get("text") if isinstance(value, dict) else value
            if not isinstance(value, str):
                raise SeedError(f"{path}:{n}: expected a string or an object with `text`")
            if value.strip():
                seeds.append(value.strip()[:max_chars])
        return seeds
    return pack_passages(text, max_chars)


def pack_passages(text: str, max_chars: int) -> list[str]:
    """Paragraphs (split at blank lines) packed greedily into passages of <= max_chars;
    a single longer paragraph is cut at the limit."""
    paragraphs = [" ".join(p.split()) for p in text.split("\n\n") if p.strip()]
    passages: list[str] = []
    current = ""
    for para in paragraphs:
        for piece in (para[i : i + max_chars] for i in range(0, len(para), max_chars)):
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
