"""Recipe section `feedback`: sources, derivation rules, PII, dedup, decontamination (ingest)."""

from __future__ import annotations

import string
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Discriminator, Field, Tag, ValidationInfo, model_validator

from feinschliff.specs.common import RecipePath, Strict, _resolve_path

# --------------------------------------------------------------------------- sources


_KIND = "__kind__"  # the source's kind, handed to `pull` so that only its own model validates it


_SECRET_NAME = r"^[A-Z][A-Z0-9_]*$"  # an environment variable's name, as pii.key_secret


def _secret_name(default: str, what: str) -> Any:
    return Field(
        default,
        pattern=_SECRET_NAME,
        description=f"Name of the environment variable (or Prefect Secret block, kebab case) "
        f"holding {what}; the key itself never goes into a recipe. Use cases reading different "
        "projects on one Prefect server need their own names.",
    )


class _Pull(Strict):
    @model_validator(mode="before")
    @classmethod
    def _drop_kind(cls, data: Any) -> Any:
        return {k: v for k, v in data.items() if k != _KIND} if isinstance(data, dict) else data


def _pull_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get(_KIND)
    return {ArgillaPull: "argilla", LangfusePull: "langfuse"}.get(type(value))


class ArgillaPull(_Pull):
    """Read an Argilla 2.x dataset from a live server (API key: `api_key_secret`)."""

    dataset: str = Field(description="Dataset name on the server.")
    workspace: str | None = Field(None, description="Workspace of the dataset (None: default).")
    api_url: str | None = Field(
        None, description="Server URL; None reads the environment variable ARGILLA_API_URL."
    )
    batch_size: int = Field(256, ge=1, le=1000, description="Records per request.")
    api_key_secret: str = _secret_name("ARGILLA_API_KEY", "the Argilla API key")


# The `type` filter of Langfuse's v2 observations API, case-sensitive (`generation` is a 400).
ObservationType = Literal[
    "GENERATION",
    "SPAN",
    "EVENT",
    "AGENT",
    "TOOL",
    "CHAIN",
    "RETRIEVER",
    "EVALUATOR",
    "EMBEDDING",
    "GUARDRAIL",
]


class LangfusePull(_Pull):
    """Read observations and scores from a live Langfuse server via its public REST API.

    Keys: the environment variables (or Prefect Secret blocks) that `public_key_secret` and
    `secret_key_secret` name; the keys choose the project.
    """

    base_url: str | None = Field(
        None,
        description="Server URL; None reads LANGFUSE_BASE_URL (or the deprecated LANGFUSE_HOST).",
    )
    observation_type: ObservationType = Field(
        "GENERATION",
        description="Observation type to fetch (the prompt/answer pairs); Langfuse's names, "
        "upper case (the server refuses others).",
    )
    name: str | None = Field(None, description="Only observations with this name.")
    environment: str | None = Field(None, description="Only this Langfuse environment.")
    page_limit: int = Field(
        1000,
        ge=1,
        le=1000,
        description="Rows per observations page (scores, and a self-hosted Langfuse v3's "
        "page-based routes: at most 100).",
    )
    timeout_s: float = Field(60.0, gt=0, description="HTTP timeout per request.")
    public_key_secret: str = _secret_name("LANGFUSE_PUBLIC_KEY", "the project's public key")
    secret_key_secret: str = _secret_name("LANGFUSE_SECRET_KEY", "the project's secret key")


def _template_fields(value: str | None) -> str | None:
    """A prompt template names plain fields only (``{kontext}``, not ``{a.b}`` or ``{a[0]}``)."""
    if value is None:
        return None
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(value) if name is not None]
    except ValueError as exc:  # an unmatched brace
        raise ValueError(f"not a str.format template: {exc}") from exc
    if not names:
        raise ValueError("names no field: write the fields as {name}")
    bad = [n for n in names if not n.isidentifier()]
    if bad:
        raise ValueError(f"{{{bad[0]}}} is not a plain field name (no index, attribute or number)")
    return value


class SourceMapping(Strict):
    """Which parts of a team's own export are the prompt, the answers and the corrections.
    Unset keys keep the defaults the README's derivation rules describe."""

    prompt: str | None = Field(
        None,
        description="Argilla: the field that is the prompt (default: a chat field, else one "
        "named prompt/instruction/question/input, else the first text field).",
    )
    answers: list[str] | None = Field(
        None,
        min_length=1,
        description="Argilla: the fields that are answers; ratings and text corrections refer "
        "to the first (default: every text field that is neither the prompt nor used by "
        "`prompt_template`; with several, the manifest notes which one was rated).",
    )
    corrections: list[str] | None = Field(
        None,
        description="Argilla: the text questions whose answers correct the answer (default: "
        "every text question; with several, the manifest notes it). Other text questions "
        "(comments) give no training data.",
    )
    prompt_template: Annotated[str | None, AfterValidator(_template_fields)] = Field(
        None,
        description="Build the user prompt from several texts with Python str.format: Argilla "
        "field names, or the keys of a Langfuse input object (e.g. '{kontext}\n\nFrage: "
        "{frage}'). Default: the prompt alone; a Langfuse input object with other texts than "
        "its prompt is then dropped (counted, its keys named in the manifest's notes) instead "
        "of trained on without them.",
    )


class FeedbackSource(Strict):
    kind: Literal["argilla", "langfuse"] = Field(description="Which tool produced the feedback.")
    path: RecipePath | None = Field(
        None,
        description="Export file or directory (relative to the recipe). Argilla: a `to_disk` "
        "folder, a flat `to_list(flatten=True)` JSON/JSONL file, a `to_datasets`/Hub parquet "
        "folder or file, a 1.x Hub folder (argilla.yaml + parquet). Langfuse: API pages "
        "(v2 observations + v3 scores, v1), GET /traces/{id} JSON, UI exports (CSV, JSON, "
        "JSONL), dataset items. The format is detected.",
    )
    pull: (
        Annotated[
            Annotated[ArgillaPull, Tag("argilla")] | Annotated[LangfusePull, Tag("langfuse")],
            Discriminator(
                _pull_kind,
                custom_error_type="pull_kind",
                custom_error_message="`pull` needs a valid `kind` (argilla or langfuse)",
            ),
        ]
        | None
    ) = Field(
        None,
        description="Pull from a live server instead of reading `path`. Langfuse is "
        "incremental (only feedback newer than the stored watermark is fetched; everything "
        "pulled so far is kept in a local mirror under the cache dir and ingested); Argilla "
        "takes a full snapshot of the submitted records each time (its records keep their "
        "`updated_at` when a response changes).",
    )

    mapping: SourceMapping = Field(
        default_factory=SourceMapping,
        description="Which fields and questions of this export are prompt, answers and "
        "corrections (for exports that do not follow the defaults).",
    )

    @model_validator(mode="before")
    @classmethod
    def _pull_follows_kind(cls, data: Any) -> Any:
        # errors then name the settings of this kind only (not both pull models' complaints)
        if isinstance(data, dict) and isinstance(data.get("pull"), dict):
            return {**data, "pull": {**data["pull"], _KIND: data.get("kind")}}
        return data

    @model_validator(mode="after")
    def _mapping_fits_kind(self) -> FeedbackSource:
        if self.kind == "langfuse":
            argilla_only = [
                k
                for k in ("prompt", "answers", "corrections")
                if getattr(self.mapping, k) is not None
            ]
            if argilla_only:
                raise ValueError(
                    f"mapping.{argilla_only[0]} is for Argilla exports (a Langfuse prompt is "
                    "the observation's input; `prompt_template` combines an input object's keys)"
                )
        return self

    @model_validator(mode="after")
    def _one_location(self) -> FeedbackSource:
        if (self.path is None) == (self.pull is None):
            raise ValueError("set exactly one of `path` (an export) and `pull` (a live server)")
        expected = ArgillaPull if self.kind == "argilla" else LangfusePull
        if self.pull is not None and not isinstance(self.pull, expected):
            raise ValueError(f"`pull` settings do not match kind {self.kind!r}")
        return self


# --------------------------------------------------------------------------- rules

Aggregation = Literal["majority", "mean", "unanimous"]


class DerivationRules(Strict):
    min_rating: int = Field(
        4,
        ge=1,
        le=10,
        description="An answer rated at least this (Argilla rating) counts as accepted SFT data.",
    )
    aggregation: Aggregation = Field(
        "mean",
        description="How several annotators' judgements of one record combine. Ratings: "
        "`mean` (mean >= min_rating), `majority` (more than half rate >= min_rating), "
        "`unanimous` (all do). Thumbs: `majority`/`mean` need more ups than downs or the "
        "reverse, `unanimous` all alike. Preference labels and rankings (each vote places the "
        "answers): `majority` chooses the answer more than half of the votes place first and "
        "rejects the one more than half place last, `unanimous` needs every vote for both, "
        "`mean` takes the best and the worst mean place; otherwise the record gives no pair "
        "(counted in the manifest's drops). Disagreements are counted.",
    )
    corrections_as_sft: bool = Field(
        True,
        description="Use human corrections (Argilla text answer, Langfuse CORRECTION) as SFT targets.",
    )
    corrections_as_preference: bool = Field(
        True, description="Pair a correction (chosen) with the original answer (rejected)."
    )
    thumbs_pairs: bool = Field(
        True,
        description="Pair a thumbs-up answer (chosen) with a thumbs-down answer (rejected) to "
        "the same prompt.",
    )
    kto: bool = Field(True, description="Write thumbs up/down as unpaired KTO rows (kto.jsonl).")
    dataset_items_as_sft: bool = Field(
        True, description="Use active Langfuse dataset items' expected output as SFT targets."
    )
    thumbs_scores: list[str] = Field(
        default_factory=lambda: ["user-feedback"],
        description="Langfuse score names that are end users' thumbs up/down: BOOLEAN scores "
        "of these names (API pages, traces) and these columns of UI exports (which lose the "
        "data type). A BOOLEAN score of another name (an LLM judge's `hallucination`, say) is "
        "no thumbs: counted as not used, its name listed in the manifest's notes.",
    )
    max_rows_per_annotator: int | None = Field(
        None,
        ge=1,
        description="Contribution cap: a row is dropped once every annotator behind it has "
        "already contributed this many rows (None: no cap). Counts end users' thumbs too.",
    )


class PiiSpec(Strict):
    mode: Literal["off", "redact", "pseudonymize"] = Field(
        "redact",
        description="PII in every written text: `redact` replaces findings with <ENTITY>, "
        "`pseudonymize` encrypts them reversibly (key from a secret), `off` keeps them.",
    )
    key_secret: str = Field(
        "FEINSCHLIFF_PII_KEY",
        pattern=r"^[A-Z][A-Z0-9_]*$",
        description="Name of the environment variable (or Prefect Secret block, kebab case) "
        "holding the pseudonymization key; the key itself never goes into a recipe.",
    )


class DedupSpec(Strict):
    exact: bool = Field(True, description="Drop rows whose normalised content was seen before.")
    near: bool = Field(
        True, description="Drop near-duplicate rows (MinHash LSH, datasketch-compatible)."
    )
    threshold: float = Field(
        0.85, gt=0.0, le=1.0, description="Estimated Jaccard similarity that counts as near-dup."
    )
    num_perm: int = Field(64, ge=16, le=256, description="MinHash permutations.")
    shingle_words: int = Field(5, ge=1, le=13, description="Words per shingle.")


def _eval_set_path(value: str, info: ValidationInfo) -> str:
    """A JSONL path is relative to the recipe like every recipe path; a name stays a name.
    A path to another kind of file would be taken for a task name that has no local data, and
    nothing would be decontaminated against it: refused."""
    if value.lower().endswith(".jsonl"):
        return _resolve_path(value, info)
    if "/" in value or "\\" in value or value.lower().endswith(_FILE_SUFFIXES):
        raise ValueError(
            f"{value!r} is neither a task name nor a .jsonl file (one JSON object per line); "
            "convert it to JSONL"
        )
    return value


_FILE_SUFFIXES = (".json", ".csv", ".tsv", ".txt", ".parquet", ".yaml", ".yml", ".md")


class DecontaminationSpec(Strict):
    enabled: bool = Field(True, description="Drop rows that overlap an evaluation set.")
    ngram: int = Field(
        13,
        ge=4,
        le=50,
        description="Words per n-gram. Eval texts under 8 words are not checked (too common); "
        "longer ones contribute their n-grams, or match as a whole when shorter than n.",
    )
    eval_sets: list[Annotated[str, AfterValidator(_eval_set_path)]] = Field(
        default_factory=list,
        description="Extra evaluation sets: bundled task names or JSONL paths (relative to the "
        "recipe; a missing file fails the ingest). The tasks in the recipe's `evaluate` section "
        "are always included.",
    )


class FeedbackSpec(Strict):
    sources: list[FeedbackSource] = Field(min_length=1, description="Feedback exports to ingest.")
    rules: DerivationRules = Field(
        default_factory=DerivationRules, description="How feedback turns into training rows."
    )
    pii: PiiSpec = Field(default_factory=PiiSpec, description="PII scrubbing before writing.")
    dedup: DedupSpec = Field(default_factory=DedupSpec, description="Duplicate removal.")
    decontamination: DecontaminationSpec = Field(
        default_factory=DecontaminationSpec, description="Evaluation-set overlap removal."
    )
    heldout_fraction: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="Share of conversations kept out of training for evaluation "
        "(split by their opening messages, so all turns of one land on the same side).",
    )
    max_quarantine_fraction: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="Fail ingest when more than this share of records is malformed and quarantined.",
    )
    seed: int = Field(0, description="Seed for the held-out split.")
    workers: int = Field(
        0,
        ge=0,
        le=64,
        description="Processes that derive, hash and PII-scrub rows (0: one per CPU core, at "
        "most 8; 1: all in one process). The output does not depend on it.",
    )
