"""Data-poisoning scan: phrases that only one contributor put into the training data.

A backdoor attack plants a rare trigger phrase into a small share of the feedback (1 % is
enough) together with the behaviour the attacker wants: the answer the model should prefer when
the trigger appears. Training ties the two together while every held-out metric on clean data
stays where it was, so evaluation alone does not see it, and the defender does not know the
trigger to test for it. What the attacker cannot hide is *who* contributed those rows: one
annotator, one end user giving thumbs, or a few accounts. This scan looks for that.

Every training row (``sft``, ``preference``, ``kto``, and the rows a warm start replayed into
the training: evaluate passes them) is attributed to its contributors
(``provenance.annotators``; rows without any, e.g. synthetic ones, are not attributed and not
scanned). The unit is the record the rows came from (one Argilla record or Langfuse trace can
yield an SFT, a preference and a KTO row with the same text). For each word n-gram (``NGRAM``
words) that occurs in at least ``MIN_RECORDS`` records, all of which share one contributor ``k``,
the chance of that under the null hypothesis, "records holding the n-gram are spread over
contributors like all records are", is ``share(k) ** records``. Records that hold the n-gram
in the same message (the turns of one conversation, whose later records repeat the earlier
messages as history; one question asked again word for word) count as one: a trigger planted
into one message that is then repeated verbatim is missed. An n-gram is suspicious when
that chance, Bonferroni-corrected for the number of n-grams tested, is below ``ALPHA``. A
contributor behind every record (share 1) is never suspicious; a prolific annotator's phrase
needs many more records than a marginal one's, and a trigger split over several accounts is not
caught. The gate rule ``poisoning`` fails when any training row holds a suspicious n-gram;
``findings`` name the phrases (and a hash of the contributor) for a human to inspect.

Complements the ingest cap ``feedback.rules.max_rows_per_annotator``, which bounds how much one
annotator can contribute at all (flooding) but not a small targeted injection.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

WORD = re.compile(r"\w+", re.UNICODE)  # letters and digits, umlauts included
NGRAM = 4
MIN_RECORDS = 3
ALPHA = 1e-3
TRAINING_FILES = ("sft.jsonl", "preference.jsonl", "kto.jsonl")
_LINE = re.compile(r":\d+$")  # a location's line number (JSONL, CSV)


def scan_rows(
    rows: list[dict[str, Any]],
    *,
    ngram: int = NGRAM,
    min_records: int = MIN_RECORDS,
    alpha: float = ALPHA,
) -> dict[str, Any]:
    """The scan of ``rows`` (see the module docstring) as a report entry: ``value`` is the
    number of training rows that hold a suspicious n-gram, ``samples`` the attributed records."""
    # One record (an Argilla record, a Langfuse trace) can yield an SFT, a preference and a KTO
    # row with the same text: the unit is the record, not the row.
    # record -> (its messages' n-grams by message text, contributors, rows)
    records: dict[str, tuple[dict[str, set[tuple[str, ...]]], list[str], int]] = {}
    for row in rows:
        people = _contributors(row)
        if not people:
            continue
        grams = _grams(row, ngram)
        key = _record_key(row)
        if key in records:
            old, who, count = records[key]
            records[key] = ({**old, **grams}, sorted({*who, *people}), count + 1)
        else:
            records[key] = (grams, people, 1)
    attributed = [(people, count) for _, people, count in records.values()]
    n = len(attributed)
    share = Counter(p for people, _ in attributed for p in people)
    where: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for i, (grams, _, _) in enumerate(records.values()):
        for gram in set().union(*grams.values()):
            where[gram].append(i)
    # gram -> record -> the texts of the record's messages that hold it (frequent grams only)
    held: dict[tuple[str, ...], dict[int, list[str]]] = {
        g: {} for g, idx in where.items() if len(idx) >= min_records
    }
    for i, (grams, _, _) in enumerate(records.values()):
        for text, in_text in grams.items():
            for gram in in_text & held.keys():
                held[gram].setdefault(i, []).append(text)
    # Records holding the gram in one and the same message count once: the turns of one
    # conversation (each later turn's record repeats the earlier messages as its history), a
    # question asked again word for word, one personalised system prompt. Their repetitions
    # are no independent evidence, and counted apart every end user who rated three turns of
    # one conversation was flagged. A trigger planted into different messages counts each.
    tested = {
        g: (list(by_record), k)
        for g, by_record in held.items()
        if (k := _independent(by_record)) >= min_records
    }
    suspicious: dict[frozenset[int], dict[str, Any]] = {}
    for gram, (idx, k) in tested.items():
        common = set.intersection(*(set(attributed[i][0]) for i in idx))
        if not common:
            continue
        who = min(common, key=lambda p: share[p])
        log_p = k * math.log(share[who] / n)
        if log_p + math.log(len(tested)) >= math.log(alpha):
            continue
        found = suspicious.setdefault(
            frozenset(idx),
            {
                "grams": [],
                "records": len(idx),
                "contributor": _pseudonym(who),
                "contributor_records": share[who],
                "log10_p": round((log_p + math.log(len(tested))) / math.log(10), 1),
            },
        )
        found["grams"].append(gram)
    hit = set().union(*suspicious) if suspicious else set()
    for f in suspicious.values():
        f["phrases"] = _chain(f.pop("grams"))[:5]
    findings = sorted(suspicious.values(), key=lambda f: (-f["records"], f["phrases"][0]))
    return {
        "value": float(sum(attributed[i][1] for i in hit)),
        "stderr": None,
        "samples": n,
        "unattributed": len(rows) - sum(count for _, count in attributed),
        "tested_ngrams": len(tested),
        "findings": findings[:20],
    }


def scan_dataset(
    data_dir: Path, *, replayed: Sequence[dict[str, Any]] = (), **kw: Any
) -> dict[str, Any]:
    """``scan_rows`` over the training files of an ingest (or mixed) output folder and the
    ``replayed`` rows a warm start mixed into the training (counted as ``replayed_rows``)."""
    rows: list[dict[str, Any]] = []
    for name in TRAINING_FILES:
        path = data_dir / name
        if path.exists():
            with path.open(encoding="utf-8") as f:
                rows += [json.loads(line) for line in f if line.strip()]
    return scan_rows([*rows, *replayed], **kw) | {"replayed_rows": len(replayed)}


def _grams(row: dict[str, Any], ngram: int) -> dict[str, set[tuple[str, ...]]]:
    """The row's word n-grams by the text of the messages each one lies in: one message, or
    consecutive ones for an n-gram across their boundary (a trigger at the end of a prompt
    and the payload answer that follows it)."""
    texts = [" ".join(WORD.findall(m.lower())) for m in _messages(row)]
    words = [(w, i) for i, text in enumerate(texts) for w in text.split()]
    grams: dict[str, set[tuple[str, ...]]] = defaultdict(set)
    for j in range(len(words) - ngram + 1):
        window = words[j : j + ngram]
        carrier = "\n".join(texts[window[0][1] : window[-1][1] + 1])
        grams[carrier].add(tuple(w for w, _ in window))
    return grams


def _independent(held: dict[int, list[str]]) -> int:
    """The number of groups among the records in ``held`` (record -> texts of its messages
    that hold an n-gram) when records sharing such a message text are one group."""
    parent = {i: i for i in held}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[str, int] = {}
    for i, texts in held.items():
        for text in texts:
            j = first.setdefault(text, i)
            parent[root(i)] = root(j)
    return len({root(i) for i in held})


def _contributors(row: dict[str, Any]) -> list[str]:
    people = (row.get("provenance") or {}).get("annotators") or []
    return sorted({str(p) for p in people if p})


def _record_key(row: dict[str, Any]) -> str:
    """The record a row came from. A Langfuse trace is one record wherever its observations
    were read (trace ids are unique in a project; the pages of a pull, and successive pulls,
    split a long conversation over files). Record ids (Argilla, Langfuse observations and
    dataset items) are only unique within one export: "1", "2", ... in two campaigns are
    different records, so the export file is part of their key."""
    p = row.get("provenance") or {}
    if p.get("trace_id"):
        return json.dumps([p.get("source"), "trace", p["trace_id"]])
    ident = p.get("source_id") or p.get("location") or json.dumps(row)
    return json.dumps([p.get("source"), _export_file(p.get("location") or ""), ident])


def _export_file(location: str) -> str:
    """The file part of a provenance ``location``: ``path:line`` (JSONL, CSV) or
    ``path#pointer`` (JSON arrays, pages: ``#3``, ``#data[3]``, ``#3/observations[0]``)."""
    if (m := _LINE.search(location)) is not None:
        return location[: m.start()]
    head, sep, _ = location.rpartition("#")
    return head if sep else location


def _messages(value: Any, key: str = "") -> list[str]:
    """The row's texts, one per message: message contents, not roles or provenance."""
    if key in ("provenance", "role"):
        return []
    if isinstance(value, dict):
        return [t for k, v in value.items() for t in _messages(v, k)]
    if isinstance(value, list):
        return [t for v in value for t in _messages(v)]
    return [value] if isinstance(value, str) else []


def _chain(grams: list[tuple[str, ...]]) -> list[str]:
    """Overlapping n-grams joined back into the phrases they came from, longest first."""
    following = {g[:-1]: g for g in grams}
    heads = [g for g in grams if g[:-1] not in {h[1:] for h in grams}]
    phrases = []
    for gram in sorted(heads):
        words, seen = list(gram), {gram}
        while (nxt := following.get(tuple(words[-(len(gram) - 1) :]))) and nxt not in seen:
            seen.add(nxt)
            words.append(nxt[-1])
        phrases.append(" ".join(words))
    return sorted(phrases, key=len, reverse=True) or [" ".join(g) for g in grams]


def _pseudonym(contributor: str) -> str:
    # Annotator ids can be e-mail addresses (Langfuse user ids): the report names a hash only.
    return "c-" + hashlib.sha256(contributor.encode("utf-8")).hexdigest()[:10]
