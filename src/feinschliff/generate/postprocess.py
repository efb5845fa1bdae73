"""Saved Distiset -> training rows in ingest's contract, with every drop counted by reason.

distilabel only warns about missing outputs and unparseable ratings and emits ``None``; here
each such row is dropped and counted, and so is a pair whose two answers are the same text.
An answer holding broken text (an unpaired surrogate in the reply, ``templates.invalid_text``)
is dropped as ``answer_invalid_text``. Then the filters: answer length, language (German, by a
function-word test on the question and on each answer: no model, no download), the feedback's
held-out prompts (always, whatever ``dedup_against_feedback`` says: ``HeldoutGuard``), duplicates
(within the generated rows and, with ``dedup_against_feedback``, against the feedback's prompts)
and evaluation-set text (a 13-gram or a whole 8-12-word item: the contamination rule of
``feinschliff.ngrams``, the one ingest and the gate apply).

Rows (TRL conversational, like ingest):
- sft: ``{"messages": [user, assistant], "provenance": {...}}``
- preference: ``{"prompt": [user], "chosen": [assistant], "rejected": [assistant], ...}``
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from feinschliff.artifacts import jsonl_lines
from feinschliff.generate.select import is_placeholder, normalize, select_instructions
from feinschliff.generate.templates import invalid_text
from feinschliff.ngrams import EvalIndex, contaminated, word_hashes
from feinschliff.specs.generate import GenerateSpec

Row = dict[str, Any]

# Frequent function words that are (almost) never words of the other language.
_DE_WORDS = (
    "der die das und ist nicht ich sie es ein eine einen einem einer mit von den dem zu auf "
    "für sich auch wie wird werden kann können bei oder aber wenn noch nur mein meine ihr "
    "ihre ihren ihnen sind haben hat wir uns schon dass über nach bitte gerne danke sehr "
    "kein keine diese dieser dieses wo warum welche welcher durch zum zur im vom beim"
)
_EN_WORDS = (
    "the and is are not you it of to with for on this that be have has was were will "
    "can could would should your my our their they we what which how why when please "
    "thanks very no yes an as at by from if or but do does"
)
_DE, _EN = frozenset(_DE_WORDS.split()), frozenset(_EN_WORDS.split())
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)


def german_verdict(text: str) -> bool | None:
    """True: German (German function words outnumber English ones at least 2:1, and there are
    some); False: English words and fewer than twice as many German ones; None: too little to
    tell. Umlauts and ß count as half a German word each."""
    words = [w.casefold() for w in _WORD.findall(text)]
    de = sum(w in _DE for w in words) + 0.5 * sum(ch in "äöüßÄÖÜ" for ch in text)
    en = sum(w in _EN for w in words)
    if de >= 2 and de >= 2 * en:
        return True
    return False if en else None


def is_german(text: str) -> bool:
    return german_verdict(text) is True


# in generate's cache key: outputs filtered by older rules are not reused (2: language per text,
# identical pairs dropped, seeds scrubbed before cutting; 3: kto prompts are feedback too, and
# text ratings in markdown or as "4/5" parse; 4: fenced JSON parses and a JSON reply is never
# split into lines, broken text dropped, held-out prompts always excluded, also unpunctuated;
# 5: every user turn of a held-out conversation excluded on its own)
FILTERS_VERSION = 5


def row_is_german(texts: list[str]) -> bool:
    """The question and every answer judged on its own, so a German question cannot outvote an
    English answer: none may lean to another language, and together they must be German (a
    short text without function words, "Zählerstand melden?", is judged with the others)."""
    verdicts = [german_verdict(t) for t in texts]
    return False not in verdicts and (True in verdicts or is_german("\n".join(texts)))


@dataclass
class Result:
    sft: list[Row] = field(default_factory=list)
    preference: list[Row] = field(default_factory=list)
    drops: dict[str, Counter[str]] = field(
        default_factory=lambda: {
            "instructions": Counter(),
            "sft": Counter(),
            "preference": Counter(),
        }
    )
    selected_instructions: int = 0


def rows_from_distiset(
    leaves: dict[str, list[Row]], spec: GenerateSpec, teacher: str, judge: str
) -> Result:
    """Leaf rows of the saved Distiset -> unfiltered sft/preference rows with drop counts."""
    result = Result()
    selected, drops = select_instructions(
        [(r["seed_id"], r["instructions"]) for r in leaves.get("instructions_raw", [])],
        spec.num_instructions,
        spec.filters.min_instruction_chars,
        spec.filters.max_instruction_chars,
    )
    result.drops["instructions"].update(drops)
    result.selected_instructions = len(selected)
    prov = {"source": "generate", "teacher": teacher}
    # `select`'s placeholder (no question was left) is no row; its drops are counted above.
    leaves = {name: [r for r in rows if not _placeholder(name, r)] for name, rows in leaves.items()}
    if spec.preference is None:
        for row in leaves.get("answers", []):
            answer = row.get("generation")
            if not answer:
                result.drops["sft"]["answer_missing"] += 1
                continue
            if invalid_text(answer):
                result.drops["sft"]["answer_invalid_text"] += 1
                continue
            result.sft.append(_sft(row["instruction"], answer, {**prov, "seed": row["seed_id"]}))
        return result
    for row in leaves.get("preferences", []):
        gens = row.get("generations") or []
        if len(gens) < spec.preference.num_generations or not all(gens):
            result.drops["sft"]["answer_missing"] += 1
            result.drops["preference"]["answer_missing"] += 1
            continue
        if any(invalid_text(g) for g in gens):
            result.drops["sft"]["answer_invalid_text"] += 1
            result.drops["preference"]["answer_invalid_text"] += 1
            continue
        seed_prov = {**prov, "seed": row["seed_id"]}
        ratings = row.get("ratings")
        if row.get("chosen") is None or not ratings or None in ratings:
            result.drops["preference"]["rating_unparseable"] += 1
            result.sft.append(_sft(row["instruction"], gens[0], seed_prov))
            continue
        chosen, rejected = row["chosen"][-1]["content"], row["rejected"][-1]["content"]
        result.sft.append(_sft(row["instruction"], chosen, seed_prov))
        margin = row["chosen_rating"] - row["rejected_rating"]
        if margin < spec.preference.min_margin:  # ties included (chosen is then rejected)
            result.drops["preference"]["rating_margin_too_small"] += 1
            continue
        if normalize(chosen) == normalize(rejected):  # two samples, one text: nothing to prefer
            result.drops["preference"]["chosen_equals_rejected"] += 1
            continue
        result.preference.append(
            {
                "prompt": [m for m in row["chosen"][:-1] if m["role"] == "user"],
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
                "provenance": {
                    **seed_prov,
                    "judge": judge,
                    "chosen_rating": row["chosen_rating"],
                    "rejected_rating": row["rejected_rating"],
                },
            }
        )
    return result


def _placeholder(leaf: str, row: Row) -> bool:
    return leaf in ("answers", "preferences") and is_placeholder(row)


def _sft(instruction: str, answer: str, provenance: dict[str, Any]) -> Row:
    return {
        "messages": [
            {"role": "user", "content": instruction},
            {"role": "assistant", "content": answer},
        ],
        "provenance": {**provenance, "rule": "self_instruct"},
    }


# --------------------------------------------------------------------------- filters


def prompt_text(row: Row) -> str:
    msgs = row["messages"][:-1] if "messages" in row else row["prompt"]
    return "\n".join(m["content"] for m in msgs if m["role"] == "user")


def answers(row: Row) -> list[str]:
    if "messages" in row:
        return [row["messages"][-1]["content"]]
    return [row["chosen"][-1]["content"], row["rejected"][-1]["content"]]


def filter_rows(
    rows: list[Row],
    spec: GenerateSpec,
    feedback_prompts: set[str],
    eval_index: EvalIndex | None,
    drops: Counter[str],
    heldout: HeldoutGuard | None = None,
) -> list[Row]:
    """Apply length, language, held-out, duplicate and contamination filters, counting drops."""
    f = spec.filters
    kept: list[Row] = []
    seen: set[str] = set()
    for row in rows:
        texts = answers(row)
        key = normalize(prompt_text(row) + "\n" + texts[0])
        if any(len(t) < f.min_answer_chars for t in texts):
            drops["answer_too_short"] += 1
        elif any(len(t) > f.max_answer_chars for t in texts):
            drops["answer_too_long"] += 1
        # the question and the answer trained towards; a rejected answer in English is a
        # useful "answer in German" signal for preference training
        elif f.language == "de" and not row_is_german([prompt_text(row), texts[0]]):
            drops["not_german"] += 1
        elif heldout is not None and heldout.leaks(row):
            drops["heldout_prompt"] += 1
        elif key in seen:
            drops["duplicate"] += 1
        elif f.dedup_against_feedback and normalize(prompt_text(row)) in feedback_prompts:
            drops["duplicate_of_feedback"] += 1
        else:
            seen.add(key)
            kept.append(row)
    if eval_index:
        bad = set(contaminated(kept, eval_index))
        drops["eval_contamination"] += len(bad)
        kept = [r for i, r in enumerate(kept) if i not in bad]
    return kept


def feedback_prompts(data_dir: Path) -> set[str]:
    """Normalised user prompts of an ingest output (training and held-out rows, every kind:
    sft, preference and kto)."""
    prompts: set[str] = set()
    kinds = ("sft", "preference", "kto")
    for name in [f"{kind}.jsonl" for kind in kinds] + [f"heldout/{kind}.jsonl" for kind in kinds]:
        path = data_dir / name
        if not path.exists():
            continue
        for line in jsonl_lines(path.read_text(encoding="utf-8")):
            if line.strip():
                prompts.add(normalize(prompt_text(json.loads(line))))
    return prompts


# --------------------------------------------------------------------------- held-out split


class HeldoutGuard:
    """The feedback's held-out prompts, which no generated question may hold: they are the
    ``usecase_heldout`` evaluation ("not in training by construction").

    Only the question is compared (a row's user text, never its answers: a grounded answer
    quoting the same knowledge base is no leak): it leaks when it is a held-out prompt up to
    case, width, whitespace and punctuation (``ngrams``' words: "Wie kündige ich
    (fristgerecht)?" is "wie kündige ich fristgerecht."), or when it shares an ``ngram``-word
    run with a held-out prompt (one quoted inside a longer question); texts shorter than
    ``ngram`` words match exactly only. ``turns``: each user message of a held-out conversation
    with several, matched exactly too (its prompt is the turns joined, so a short first
    question of it, "Wie hoch ist mein Abschlag?", matched nothing). Word runs are kept as
    hashes (ints), not tuples."""

    def __init__(self, prompts: list[str], ngram: int, turns: Iterable[str] = ()):
        self.count = len(prompts)
        self.n = ngram
        self.keys: set[int] = set()
        self.grams: set[int] = set()
        for words in map(_words, prompts):
            if words:
                self.keys.add(hash(words))
                self.grams.update(_grams(words, ngram))
        self.keys.update(hash(words) for words in map(_words, turns) if words)

    def leaks(self, row: Row) -> bool:
        words = _words(prompt_text(row))
        if not words:
            return False
        if hash(words) in self.keys:
            return True
        return any(g in self.grams for g in _grams(words, self.n))


def _grams(words: tuple[int, ...], n: int):
    # hashes of tuples of ints are the same in every process (no string hash randomisation)
    return (hash(words[i : i + n]) for i in range(len(words) - n + 1))


def _words(text: str) -> tuple[int, ...]:
    # ngrams' word hashes (lowercased, punctuation around each word ignored), NFKC first; words
    # of punctuation alone hash as the empty word (crc32 0) and are left out ("ab ?" is "ab?")
    return tuple(h for h in word_hashes(unicodedata.normalize("NFKC", text)) if h)


def heldout_prompts(data_dir: Path) -> list[str]:
    """The user prompts of an ingest output's held-out split (``heldout/*.jsonl``)."""
    return [prompt_text(row) for row in _heldout_rows(data_dir)]


def heldout_turns(data_dir: Path) -> list[str]:
    """Each user message of the held-out conversations with more than one (``HeldoutGuard``)."""
    turns: list[str] = []
    for row in _heldout_rows(data_dir):
        msgs = row["messages"][:-1] if "messages" in row else row["prompt"]
        users = [m["content"] for m in msgs if m["role"] == "user"]
        turns += users if len(users) > 1 else []
    return turns


def _heldout_rows(data_dir: Path) -> Iterator[Row]:
    for path in sorted((data_dir / "heldout").glob("*.jsonl")):
        for line in jsonl_lines(path.read_text(encoding="utf-8")):
            row = json.loads(line)
            if isinstance(row, dict) and ("messages" in row or "prompt" in row):
                yield row
