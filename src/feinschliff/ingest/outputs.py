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
        try:
            self._f.write(line)
        except OSError as exc:  # a full disk: the error names no file by itself
            _name_file(exc, self.path)
            raise
        self._sha.update(line)
        self.rows += 1

    def close(self) -> str:
        try:
            self._f.close()  # flushes the buffer: a full disk may only show here
            self._tmp.replace(self.path)
        except OSError as exc:
            _name_file(exc, self.path)
            raise
        return self._sha.hexdigest()

    def abort(self) -> None:
        """Discard the file. Closing flushes the buffer, which fails again on a full disk:
        the unlink must happen anyway (it frees the space the failure record needs)."""
        try:
            self._f.close()
        except OSError:
            pass  # the rows are discarded: a failed flush loses nothing
        finally:
            self._tmp.unlink(missing_ok=True)


def _name_file(exc: OSError, path: Path) -> None:
    if exc.filename is None:
        exc.filename = str(path)


FAILED_TITLE = "# INGEST FAILED: not a usable dataset"
NO_STATUS_NOTE_START = "Argilla to_disk (nested) export carries no response status"


def write_card(out: Path, manifest: dict[str, Any]) -> None:
    """A dataset card (Hugging Face conventions: YAML metadata block, then prose). A failed
    run's card starts with ``FAILED_TITLE`` and the error, and has no metadata block (it is
    not a dataset to publish)."""
    if manifest.get("status") == "failed":
        head = f"{FAILED_TITLE}\n\n`feinschliff ingest` failed:\n\n```\n{manifest['error']}\n```\n"
        if "counts" not in manifest:  # failed before any row was written
            text = head + "\nNo rows were written. See `manifest.json`.\n"
        else:
            text = head + (
                "\nThe files below were written for inspection only: there is no `.complete` "
                "marker, and `train`, `evaluate`, `generate` and `estimate --data` refuse this "
                "folder.\n\n"
                + _body(manifest).replace("# Feedback dataset", "## Feedback dataset", 1)
            )
        (out / "README.md").write_text(text, encoding="utf-8")
        return
    (out / "README.md").write_text(_front_matter(manifest) + _body(manifest), encoding="utf-8")


def _front_matter(manifest: dict[str, Any]) -> str:
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
    return f"""---
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

"""


def _pii_line(pii: dict[str, Any]) -> str:
    if pii["mode"] == "off":
        return (
            "- PII: not scanned (mode off): rows may contain PII (e-mail addresses, phone "
            "numbers, IBANs, IP addresses, names, ...)."
        )
    found = ", ".join(f"{k} {v}" for k, v in sorted(pii["found"].items())) or "none"
    return (
        f"- PII (Presidio, pattern recognizers, German identifiers): mode `{pii['mode']}`; "
        f"findings: {found}.\n  Person names and addresses are not detected (no NER model)."
    )


def _argilla_line(manifest: dict[str, Any]) -> str:
    """What counted of Argilla's responses, as read: a ``to_disk`` export keeps no status."""
    if not any(s["kind"] == "argilla" for s in manifest["sources"]):
        return ""
    if any(n.startswith(NO_STATUS_NOTE_START) for n in manifest.get("notes", [])):
        return (
            "\n  Argilla responses without a status (a `to_disk` export keeps none) were all "
            "counted as submitted: drafts and discarded responses in it cannot be told apart "
            "and are included; where a status was present, only submitted responses count."
        )
    return (
        "\n  Only submitted Argilla responses count (drafts and discarded ones are counted "
        "as drops)."
    )


def _decontamination_lines(decontam: dict[str, Any]) -> str:
    lines = []
    if decontam["unchecked"]:
        lines.append("Not checked (no local data): " + ", ".join(decontam["unchecked"]) + ".")
    for name, why in decontam.get("own_heldout", {}).items():
        lines.append(f"Not checked, `{name}`: {why}.")
    return "".join(f"\n  {line}" for line in lines)


def _cell(value: Any) -> str:
    """A markdown table cell: a ``|`` would end the cell and a line break the table (reasons,
    formats and paths come from the data)."""
    return " ".join(str(value).split()).replace("|", "\\|")


def _code(value: Any) -> str:
    text = _cell(value)
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def _dedup_line(dedup: dict[str, Any]) -> str:
    """What deduplication ran (``feedback.dedup.exact`` / ``near`` can switch either off)."""
    exact = "exact (normalised content)" if dedup.get("exact", True) else None
    near = (
        f"near-duplicate (MinHash LSH, threshold\n  {dedup['threshold']})"
        if dedup.get("near", True)
        else None
    )
    if not (exact or near):
        return "- Deduplication: none (`feedback.dedup.exact` and `near` are off): rows may repeat."
    off = "" if exact and near else f"; {'exact' if near else 'near-duplicate'} removal was off"
    ran = " and ".join(x for x in (exact, near) if x)
    return f"- Deduplication: {ran}{off}, across all sources, before any PII pseudonymization."


def _body(manifest: dict[str, Any]) -> str:
    counts = manifest["counts"]
    drops = "\n".join(f"| {_cell(k)} | {v} |" for k, v in manifest["drops"].items()) or "| - | 0 |"
    sources = "\n".join(
        f"| {_cell(s['kind'])} | {_cell(s['format'])} | {_code(s['path'])} | {s['records']} | "
        f"{s['quarantined']} |"
        for s in manifest["sources"]
    )
    rows = "\n".join(f"| `{name}` | {counts[name]} |" for name in OUTPUTS)
    # a note of several lines stays one list item
    notes = "".join(f"- {n}".replace("\n", "\n  ") + "\n" for n in manifest.get("notes", []))
    notes_section = f"\n## Notes (from `manifest.json`)\n\n{notes}" if notes else ""
    return f"""# Feedback dataset (feinschliff ingest)

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
  `{manifest["rules"]["aggregation"]}`; minimum rating {manifest["rules"]["min_rating"]}.{_argilla_line(manifest)}
{_dedup_line(manifest["dedup"])}
- Decontamination against {", ".join(manifest["decontamination"]["eval_sets"]) or "no eval sets"}:
  rows holding a {manifest["decontamination"]["ngram"]}-gram of an eval text, or a whole eval
  text of 8 words or more that is shorter than that, are dropped (`feinschliff.ngrams`).{_decontamination_lines(manifest["decontamination"])}
{_pii_line(manifest["pii"])}
{notes_section}
## Limitations

Feedback reflects the judgement of a few annotators and of end users' thumbs; it is biased
towards the prompts users happened to send. Check `manifest.json` (`disagreements`) for how
often annotators disagreed, and `quarantine.jsonl` for records that could not be used.
"""
