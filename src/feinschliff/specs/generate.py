"""Recipe section `generate`: synthetic German training data from a teacher LLM (distilabel).

Seeds (topics and/or internal documents) -> German self-instruct questions -> teacher answers
-> optionally N answers per question rated by a judge (UltraFeedback-style) -> chosen/rejected
pairs. The teacher is an OpenAI-compatible endpoint (vLLM, OpenAI, ...) or a local transformers
model; its API key is read from an environment variable named here, never written in a recipe.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from feinschliff.specs.common import ModelName, RecipePath, Strict

# --------------------------------------------------------------------------- seeds


class SeedsSpec(Strict):
    topics: RecipePath | None = Field(
        None,
        description="Text file with one topic per line (blank lines and `#` comments ignored).",
    )
    documents: RecipePath | None = Field(
        None,
        description="Folder of internal documents: .txt/.md (split into passages at blank "
        "lines) and .jsonl (one seed per line: a string or an object with a `text` field).",
    )
    passage_chars: int = Field(
        1200,
        ge=200,
        le=20000,
        description="Documents are cut into passages of at most this many characters.",
    )
    pii: Literal["redact", "off"] = Field(
        "redact",
        description="PII in seeds before any prompt is built (the teacher may be a third-party "
        "API): `redact` replaces e-mails, IBANs, phone numbers, ... with <ENTITY>.",
    )

    @model_validator(mode="after")
    def _some_seed(self) -> SeedsSpec:
        if self.topics is None and self.documents is None:
            raise ValueError("set `topics`, `documents` or both")
        return self


# --------------------------------------------------------------------------- teachers


class OpenAITeacher(Strict):
    """An OpenAI-compatible chat completions endpoint (vLLM, OpenAI, TGI, ...). `preference`
    needs one that honours the request's `n` (vLLM, OpenAI); TGI ignores it and returns one
    answer, which fails the run."""

    kind: Literal["openai"] = Field(
        description="An OpenAI-compatible HTTP endpoint (vLLM, OpenAI, TGI, ...; `preference` "
        "needs `n` answers per request, which TGI does not give: use vLLM or OpenAI there)."
    )
    base_url: str = Field(
        pattern=r"^https?://",
        description="Base URL including the API prefix, e.g. http://127.0.0.1:8000/v1.",
    )
    model: str = Field(description="The `model` string the endpoint expects in requests.")
    api_key_env: str | None = Field(
        None,
        pattern=r"^[A-Z][A-Z0-9_]*$",
        description="Name of the environment variable holding the API key (None: no key).",
    )
    structured_output: Literal["response_format", "vllm", "off"] = Field(
        "response_format",
        description="How outputs are constrained to JSON: `response_format` (OpenAI json_schema "
        "in strict mode, also understood by vLLM; without string lengths, which strict mode "
        "refuses), `vllm` (vLLM's `structured_outputs` body field, string lengths included), "
        "`off` (free text, parsed line by line; small teachers then often fail to parse).",
    )
    timeout_s: float = Field(120.0, gt=0, description="HTTP timeout per request.")


class LocalTeacher(Strict):
    """A transformers model on this machine (slow: one prompt at a time, no constrained output)."""

    kind: Literal["transformers"] = Field(description="A local transformers model.")
    model: ModelName = Field(
        description="A model alias (`feinschliff models`), a Hugging Face id, or a local HF "
        "folder written as a path (./x, ../x, /abs or ~/x; relative paths are relative to the "
        "recipe file)."
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Weights dtype (CPU: float32)."
    )


Teacher = Annotated[OpenAITeacher | LocalTeacher, Field(discriminator="kind")]


# --------------------------------------------------------------------------- steps


class SamplingSpec(Strict):
    temperature: float = Field(0.7, ge=0.0, le=2.0, description="Sampling temperature.")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    seed: int = Field(
        0,
        description="Base sampling seed; each request's seed is this plus a hash of its "
        "messages (reproducible, and different prompts sample differently).",
    )
    instruction_max_tokens: int = Field(
        256, ge=16, description="Token limit of one self-instruct reply (all its questions)."
    )
    answer_max_tokens: int = Field(512, ge=8, description="Token limit of one answer.")
    answer_max_chars: int | None = Field(
        None,
        ge=20,
        description="Constrain each answer to at most this many characters, so that even a "
        "rambling teacher finishes within the token limit (needs `structured_output: vllm`, "
        "which sends a regex; refused for a local teacher and for `response_format` or `off`: "
        "OpenAI's strict json_schema has no string lengths; None: unconstrained). Answers cut "
        "at the token limit are always dropped.",
    )
    judge_max_tokens: int = Field(256, ge=16, description="Token limit of one judge reply.")


class PreferenceSpec(Strict):
    num_generations: int = Field(
        2,
        ge=2,
        le=8,
        description="Answers per question, rated against each other; asked in one request with "
        "`n`, which the teacher endpoint must honour (vLLM, OpenAI; not TGI).",
    )
    judge: OpenAITeacher | LocalTeacher | None = Field(
        None, discriminator="kind", description="The judge model (None: the teacher)."
    )
    min_margin: int = Field(
        1,
        ge=1,
        le=4,
        description="Chosen minus rejected rating (1-5 scale) needed for a pair; ties dropped.",
    )


class FilterSpec(Strict):
    language: Literal["de"] | None = Field(
        "de", description="Keep rows in this language (function-word test; None: keep all)."
    )
    min_instruction_chars: int = Field(10, ge=1, description="Shorter questions are dropped.")
    max_instruction_chars: int = Field(1000, ge=1, description="Longer questions are dropped.")
    min_answer_chars: int = Field(20, ge=1, description="Shorter answers are dropped.")
    max_answer_chars: int = Field(4000, ge=1, description="Longer answers are dropped.")
    dedup_against_feedback: bool = Field(
        True,
        description="Drop generated rows whose question duplicates one in the feedback data.",
    )
    decontaminate: bool = Field(
        True,
        description=(
            "Drop rows holding text of an evaluation set, the ones ingest checks (the recipe's "
            "`evaluate.tasks` and `feedback.decontamination.eval_sets`): an n-gram of an eval "
            "text (n: `feedback.decontamination.ngram`) or a whole eval text of 8 to n-1 words "
            "(the rule of the gate's contamination metric)."
        ),
    )

    @model_validator(mode="after")
    def _ranges(self) -> FilterSpec:
        if self.min_instruction_chars > self.max_instruction_chars:
            raise ValueError("min_instruction_chars exceeds max_instruction_chars")
        if self.min_answer_chars > self.max_answer_chars:
            raise ValueError("min_answer_chars exceeds max_answer_chars")
        return self


class MixSpec(Strict):
    feedback: float = Field(
        1.0,
        ge=0.0,
        le=10.0,
        description="Row multiplier for feedback-derived rows in the training mix (1: all once).",
    )
    synthetic: float = Field(
        1.0,
        ge=0.0,
        le=10.0,
        description="Row multiplier for generated rows (0.5: a deterministic half; 2: twice).",
    )


class BudgetSpec(Strict):
    max_requests: int | None = Field(
        None,
        ge=1,
        description="Teacher and judge requests per run, counted together (cache hits are "
        "free; None: no limit).",
    )
    max_tokens: int | None = Field(
        None,
        ge=1,
        description="Prompt + completion tokens per run, teacher and judge together (None: no "
        "limit).",
    )


# --------------------------------------------------------------------------- generate


class GenerateSpec(Strict):
    seeds: SeedsSpec = Field(description="Seed topics and documents.")
    num_instructions: int = Field(50, ge=1, description="Questions to generate (upper bound).")
    instructions_per_seed: int = Field(
        5, ge=1, le=20, description="Questions the teacher writes per self-instruct request."
    )
    application_description: str = Field(
        "Ein deutschsprachiger KI-Assistent für den Kundenservice.",
        min_length=1,
        description="What the adapter will be used for (goes into the self-instruct prompt).",
    )
    system_prompt: str = Field(
        "Du bist ein hilfsbereiter Kundenservice-Assistent. Antworte immer auf Deutsch, "
        "freundlich, korrekt und knapp.",
        description="System prompt for the teacher's answers (not written into the data).",
    )
    teacher: Teacher = Field(description="The model that writes questions and answers.")
    sampling: SamplingSpec = Field(
        default_factory=SamplingSpec, description="Sampling and token limits."
    )
    preference: PreferenceSpec | None = Field(
        None, description="Also write chosen/rejected pairs (N answers + a judge)."
    )
    filters: FilterSpec = Field(default_factory=FilterSpec, description="Row filters.")
    mix: MixSpec = Field(default_factory=MixSpec, description="Mix with the feedback data.")
    concurrency: int = Field(8, ge=1, le=256, description="Requests in flight per pipeline step.")
    retries: int = Field(
        3, ge=0, le=10, description="Retries of a failed request (connection, 429, 5xx)."
    )
    backoff_s: float = Field(
        1.0, ge=0.0, le=60.0, description="First retry delay; doubles on each retry."
    )
    budget: BudgetSpec = Field(
        default_factory=BudgetSpec, description="Stop cleanly after this much teacher use."
    )

    @model_validator(mode="after")
    def _sampled_preferences(self) -> GenerateSpec:
        if self.preference is not None and self.sampling.temperature == 0:
            raise ValueError(
                "sampling.temperature: 0 is greedy decoding, which gives the same answer "
                f"{self.preference.num_generations} times; `preference` needs different "
                "answers to rate, so set a temperature > 0 (e.g. 0.7) or remove `preference`"
            )
        return self

    @model_validator(mode="after")
    def _constrainable_answers(self) -> GenerateSpec:
        # The limit is enforced by vLLM's structured output only (a regex); ignoring it silently
        # let a rambling teacher spend the token budget on answers that are then cut off and
        # dropped. OpenAI's strict json_schema (`response_format`) refuses string lengths.
        teacher = self.teacher
        if self.sampling.answer_max_chars is not None and (
            teacher.kind != "openai" or teacher.structured_output != "vllm"
        ):
            how = {
                "response_format": "structured_output: response_format has not (OpenAI's strict "
                "json_schema refuses string lengths)",
                "off": "structured_output: off has not",
            }.get(
                teacher.structured_output if teacher.kind == "openai" else "",
                "a local teacher has not",
            )
            raise ValueError(
                "sampling.answer_max_chars: needs structured output with string lengths from "
                f"the teacher, which {how}; remove it (answers longer than "
                "filters.max_answer_chars are dropped after generation either way) or, with a "
                "vLLM teacher, use `structured_output: vllm`"
            )
        return self
