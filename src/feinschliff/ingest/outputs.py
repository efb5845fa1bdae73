"""Output files of the ingest stage: incremental JSONL sinks and the dataset card.

Each sink writes one row at a time to a temporary file, hashing the bytes as they go, and is
renamed into place when closed, so the sha256 in the manifest is computed without a second read
and a crashed run never leaves a half-written file under the final name.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import IO, Any

from feinschliff.ingest.jsonio import dumps

OUTPUTS = (
    "sft.jsonl",
    "preference.jsonl",
    "kto.jsonl",
    "heldout/sft.jsonl",
    "heldout/preference.jsonl",
    "heldout/kto.jsonl",
    "quarantine.jsonl",
)


class JsonlSink:
    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = path.with_name(path.name + ".tmp")
        self._f: IO[bytes] = self._tmp.open("wb")
        self._sha = hashlib.sha256()
        self.rows = 0

    def write(self, row: Any) -> None:
        self.write_bytes(dumps(row))

    def write_bytes(self, serialized: bytes) -> None:
        line = serialized + b"\n"
        self._f.write(line)
        self._sha.update(line)
        self.rows += 1

    def close(self) -> str:
        self._f.close()
        self._tmp.replace(self.path)
        return self._sha.hexdigest()

    def abort(self) -> None:
        self._f.close()
        self._tmp.unlink(missing_ok=True)


def write_card(out: Path, manifest: dict[str, Any]) -> None:
    """A dataset card (Hugging Face conventions: YAML metadata block, then prose)."""
    counts = manifest["counts"]
    total = sum(counts[f] for f in OUTPUTS if f != "quarantine.jsonl")
    size = "n<1K" if total < 1000 else "1K<n<10K" if total < 10_000 else "10K<n<100K"
    if total >= 100_000:
        size = "100K<n<1M" if total < 1_000_000 else "n>1M"
    configs = [
        ("sft", "sft.jsonl", "heldout/sft.jsonl"),
        ("preference", "preference.jsonl", "heldout/preference.jsonl"),
        ("kto", "kto.jsonl", "heldout/kto.jsonl"),
    ]
    yaml_configs = "\n".join(
        f"- config_name: {name}\n  data_files:\n  - split: train\n    path: {train}\n"
        f"  - split: test\n    path: {test}"
        for name, train, test in configs
    )
    pii = manifest["pii"]
    found = ", ".join(f"{k} {v}" for k, v in sorted(pii["found"].items())) or "none"
    drops = "\n".join(f"| {k} | {v} |" for k, v in manifest["drops"].items()) or "| - | 0 |"
    sources = "\n".join(
        f"| {s['kind']} | {s['format']} | `{s['path']}` | {s['records']} | {s['quarantined']} |"
        for s in manifest["sources"]
    )
    rows = "\n".join(f"| `{name}` | {counts[name]} |" for name in OUTPUTS)
    unchecked = manifest["decontamination"]["unchecked"]
    card = f"""---
language:
- de
pretty_name: feinschliff feedback dataset
tags:
- feinschliff
- human-feedback
- sft
- dpo
- kto
task_categories:
- text-generation
size_categories:
- {size}
configs:
{yaml_configs}
---

# Feedback dataset (feinschliff ingest)

Training data derived from production feedback (Argilla annotations, Langfuse traces and
scores) by `feinschliff ingest`. Rows are in TRL's conversational formats:

- `sft.jsonl`: `{{"messages": [...], "provenance": {{...}}}}`, the last message is the target;
- `preference.jsonl`: `{{"prompt": [...], "chosen": [...], "rejected": [...], "provenance": {{...}}}}`;
- `kto.jsonl`: `{{"prompt": [...], "completion": [...], "label": true|false, "provenance": {{...}}}}`;
- `heldout/`: the same three, for prompts kept out of training ({manifest["heldout_fraction"]:.0%}
  of conversations, split by a hash of the conversation's opening, i.e. its messages up to the
  first user message, so neither a prompt nor the later turns of its conversation land on both
  sides).

Every row's `provenance` names its source, source id, trace/observation id, annotators, times,
the file position it was read from and the derivation `rule`.

## Counts

| file | rows |
|---|---|
{rows}

| source | format | path | records | quarantined |
|---|---|---|---|---|
{sources}

Rows and records not used, by reason:

| reason | count |
|---|---|
{drops}

## How it was made

- Derivation rules (`feinschliff.ingest.derive`): corrections and accepted answers -> SFT;
  corrections vs originals, annotated preferences/rankings and thumbs-up vs thumbs-down answers
  to the same prompt -> preference; thumbs up/down -> KTO. Aggregation over annotators:
  `{manifest["rules"]["aggregation"]}`; minimum rating {manifest["rules"]["min_rating"]}.
  Only submitted Argilla responses count.
- Deduplication: exact (normalised content) and near-duplicate (MinHash LSH, threshold
  {manifest["dedup"]["threshold"]}), across all sources, before any PII pseudonymization.
- Decontamination against {", ".join(manifest["decontamination"]["eval_sets"]) or "no eval sets"}:
  rows holding a {manifest["decontamination"]["ngram"]}-gram of an eval text, or a whole eval
  text of 8 words or more that is shorter than that, are dropped (`feinschliff.ngrams`).
  {"Not checked (no local data): " + ", ".join(unchecked) if unchecked else ""}
- PII (Presidio, pattern recognizers, German identifiers): mode `{pii["mode"]}`; findings: {found}.
  Person names and addresses are not detected (no NER model).

## Limitations

Feedback reflects the judgement of a few annotators and of end users' thumbs; it is biased
towards the prompts users happened to send. Check `manifest.json` (`disagreements`) for how
often annotators disagreed, and `quarantine.jsonl` for records that could not be used.
"""
    (out / "README.md").write_text(card, encoding="utf-8")
