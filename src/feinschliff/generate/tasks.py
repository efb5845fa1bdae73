"""The distilabel pipeline: German self-instruct -> answers -> (ratings -> pairs).

```
seeds ─▶ self_instruct ─┬─▶ instructions_raw                      (leaf: every reply, parsed)
                        └─▶ select ─▶ answers                      (leaf without preference)
                                        └─▶ judge ─▶ preferences   (leaf with preference)
```

- ``GermanSelfInstruct``: distilabel's SelfInstruct with the German template; its reply is a
  JSON object (constrained) or one question per line.
- ``SelectInstructions`` (global): flattens the questions, drops empty, too short/long and
  repeated ones, keeps the first ``limit``; the same pure function ``select_instructions``
  recounts the drops from ``instructions_raw`` afterwards, so no side channel is needed.
  When nothing is left (a failed teacher, a spent budget, every reply filtered) it sends one
  ``PLACEHOLDER`` row: distilabel 1.5 never passes an empty last batch on, so the steps after
  it would wait for input forever and the run would never end. The placeholder is sent to no
  teacher and is not a row of the output (``postprocess`` skips it).
- ``answers``: distilabel's TextGeneration (N answers per question when rating).
- ``GermanUltraFeedback``: UltraFeedback's overall rating with a German template and JSON
  reply; rows with a missing answer are not sent to the judge at all.
- ``PairRatedAnswers``: FormatTextGenerationDPO for rows with valid ratings only (the stock
  step fails a whole batch on one ``None`` rating); the others keep chosen/rejected ``None``.

Only imported in the child process (``feinschliff.generate.child``).
"""

from typing import TYPE_CHECKING, Any

from distilabel.pipeline import Pipeline
from distilabel.steps import GlobalStep, KeepColumns, LoadDataFromDicts, StepInput, StepOutput
from distilabel.steps.formatting.dpo import FormatTextGenerationDPO
from distilabel.steps.tasks import SelfInstruct, TextGeneration, UltraFeedback
from jinja2 import Template

from feinschliff.generate import templates
from feinschliff.generate.select import PLACEHOLDER, is_placeholder, select_instructions
from feinschliff.generate.teacher import TeacherLLM
from feinschliff.specs.generate import LocalTeacher, OpenAITeacher

if TYPE_CHECKING:
    from feinschliff.generate.child import GenerateJob


class GermanSelfInstruct(SelfInstruct):
    structured: bool = True

    def load(self) -> None:
        super().load()
        self._template = Template(templates.SELF_INSTRUCT)

    def format_input(self, input: dict[str, Any]) -> list[dict[str, str]]:
        content = self._template.render(
            input=input["input"],
            application_description=self.application_description,
            criteria_for_query_generation=self.criteria_for_query_generation,
            num_instructions=self.num_instructions,
            structured=self.structured,
        )
        return [{"role": "user", "content": content}]

    def format_output(
        self, output: str | None, input: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        # a JSON request's reply is never split into lines (its syntax would become questions)
        return {"instructions": templates.parse_instructions(output, self.structured)}


class GermanTextGeneration(TextGeneration):
    def format_output(
        self, output: str | None, input: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        return {"generation": output}

    def process(self, inputs: StepInput) -> StepOutput:  # type: ignore[override]
        # The placeholder has no question: it is passed on unanswered, nothing is asked.
        real = [r for r in inputs if not is_placeholder(r)]
        answered = next(super().process(real)) if real else []
        empty = {"generation": None, "model_name": self.llm.model_name}
        yield answered + [{**r, **empty} for r in inputs if is_placeholder(r)]


class SelectInstructions(GlobalStep):
    limit: int
    min_chars: int
    max_chars: int

    @property
    def inputs(self) -> list[str]:
        return ["instructions"]

    @property
    def outputs(self) -> list[str]:
        return ["instruction", "seed_id"]

    def process(self, inputs: StepInput) -> StepOutput:  # type: ignore[override]
        selected, _ = select_instructions(
            [(row["seed_id"], row["instructions"]) for row in inputs],
            self.limit,
            self.min_chars,
            self.max_chars,
        )
        rows = [{"seed_id": seed_id, "instruction": text} for seed_id, text in selected]
        yield rows or [dict(PLACEHOLDER)]


class GermanUltraFeedback(UltraFeedback):
    structured: bool = True

    def load(self) -> None:
        super().load()
        self._template = Template(templates.JUDGE)

    def format_input(self, input: dict[str, Any]) -> list[dict[str, str]]:
        n = len(input["generations"])
        return [
            {"role": "system", "content": templates.JUDGE_SYSTEM.format(no_texts=n)},
            {
                "role": "user",
                "content": self._template.render(
                    instruction=input["instruction"],
                    generations=input["generations"],
                    structured=self.structured,
                ),
            },
        ]

    def format_output(
        self, output: str | None, input: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        assert input is not None
        ratings, rationales = templates.parse_ratings(output, len(input["generations"]))
        return {"ratings": ratings, "rationales": rationales}

    def process(self, inputs: StepInput) -> StepOutput:  # type: ignore[override]
        # A question whose answers are incomplete cannot be rated: do not pay for the request.
        ready = [r for r in inputs if _answered(r)]
        skipped = [
            {
                **r,
                "ratings": None,
                "rationales": None,
                "model_name": self.llm.model_name,
                # Like a judged row's (a list here would not fit the column in Arrow).
                "distilabel_metadata": {f"raw_output_{self.name}": None},
            }
            for r in inputs
            if not _answered(r)
        ]
        rated = next(super().process(ready)) if ready else []
        yield rated + skipped


class PairRatedAnswers(FormatTextGenerationDPO):
    def process(self, *inputs: StepInput) -> StepOutput:  # type: ignore[override]
        for rows in inputs:
            valid = [r for r in rows if _answered(r) and _rated(r)]
            for row in rows:
                if not (_answered(row) and _rated(row)):
                    row.update(
                        prompt=row.get("instruction"),
                        chosen=None,
                        rejected=None,
                        chosen_rating=None,
                        rejected_rating=None,
                    )
            for _ in super().process(valid):  # fills the valid rows in place
                pass
            yield rows


def _answered(row: dict[str, Any]) -> bool:
    """N usable answers: broken text (an unpaired surrogate in a reply) is not worth judging;
    ``postprocess`` counts the row as ``answer_invalid_text``."""
    gens = row.get("generations")
    return (
        isinstance(gens, list)
        and len(gens) > 1
        and all(isinstance(g, str) and g and not templates.invalid_text(g) for g in gens)
    )


def _rated(row: dict[str, Any]) -> bool:
    ratings = row.get("ratings")
    return (
        isinstance(ratings, list)
        and len(ratings) == len(row["generations"])
        and all(isinstance(x, int) for x in ratings)
    )


# --------------------------------------------------------------------------- pipeline


def _model(job: "GenerateJob", which: str) -> OpenAITeacher | LocalTeacher:
    pref = job.spec.preference
    if which == "judge" and pref is not None and pref.judge is not None:
        return pref.judge
    return job.spec.teacher


def _teacher(job: "GenerateJob", which: str, **generation: Any) -> TeacherLLM:
    spec, model = job.spec, _model(job, which)
    extra = (
        {
            "base_url": model.base_url,
            "api_key_env": model.api_key_env,
            "constrain": model.structured_output,
            "timeout_s": model.timeout_s,
        }
        if model.kind == "openai"
        else {"dtype": model.dtype, "constrain": "off"}
    )
    return TeacherLLM(
        kind=model.kind,
        model=job.judge_model if which == "judge" else job.teacher_model,
        cache_path=job.judge_cache if which == "judge" else job.teacher_cache,
        ledger_path=job.ledger,
        max_requests=spec.budget.max_requests,
        max_tokens=spec.budget.max_tokens,
        retries=spec.retries,
        backoff_s=spec.backoff_s,
        concurrency=spec.concurrency,
        generation_kwargs=generation,
        **extra,
    )


def build_pipeline(job: "GenerateJob") -> Pipeline:
    spec, s = job.spec, job.spec.sampling
    structured = _structured(job, "teacher")
    per_seed = spec.instructions_per_seed
    batch = spec.concurrency
    with Pipeline(name="feinschliff-generate", cache_dir=job.pipeline_cache) as pipeline:
        seeds = LoadDataFromDicts(
            name="seeds",
            data=[{"seed_id": seed_id, "input": text} for seed_id, text in job.seeds],
            batch_size=batch,
        )
        sampling = {"temperature": s.temperature, "top_p": s.top_p, "seed": s.seed}
        self_instruct = GermanSelfInstruct(
            name="self_instruct",
            llm=_teacher(
                job,
                "teacher",
                max_new_tokens=s.instruction_max_tokens,
                constraint=_json(
                    structured,
                    templates.instructions_schema(per_seed, spec.filters.max_instruction_chars),
                ),
                **sampling,
            ),
            num_instructions=per_seed,
            application_description=spec.application_description,
            criteria_for_query_generation=templates.CRITERIA,
            structured=structured,
            input_batch_size=batch,
            add_raw_input=False,
        )
        raw = KeepColumns(name="instructions_raw", columns=["seed_id", "instructions"])
        select = SelectInstructions(
            name="select",
            limit=spec.num_instructions,
            min_chars=spec.filters.min_instruction_chars,
            max_chars=spec.filters.max_instruction_chars,
        )
        n = spec.preference.num_generations if spec.preference else 1
        answer_constraint = _answer_constraint(job) if structured else None
        answers = GermanTextGeneration(
            name="answers",
            llm=_teacher(
                job,
                "teacher",
                max_new_tokens=s.answer_max_tokens,
                constraint=answer_constraint,
                **sampling,
            ),
            system_prompt=spec.system_prompt,
            num_generations=n,
            group_generations=n > 1,
            # Grouped answers are lists: name them as UltraFeedback/FormatTextGenerationDPO expect.
            output_mappings={"generation": "generations", "model_name": "generation_models"}
            if n > 1
            else {},
            input_batch_size=batch,
            add_raw_input=False,
        )
        seeds >> self_instruct >> [raw, select]
        select >> answers
        if spec.preference is not None:
            judge_structured = _structured(job, "judge")
            judge = GermanUltraFeedback(
                name="judge",
                llm=_teacher(
                    job,
                    "judge",
                    max_new_tokens=s.judge_max_tokens,
                    temperature=0.0,  # a judge should be repeatable
                    top_p=1.0,
                    seed=s.seed,
                    constraint=_json(judge_structured, templates.ratings_schema(n)),
                ),
                aspect="overall-rating",
                use_default_structured_output=False,
                structured=judge_structured,
                input_batch_size=batch,
                add_raw_input=False,
            )
            answers >> judge >> PairRatedAnswers(name="preferences")
    return pipeline


def _json(structured: bool, schema: dict[str, Any]) -> dict[str, Any] | None:
    return {"json": schema} if structured else None


def _answer_constraint(job: "GenerateJob") -> dict[str, Any] | None:
    limit = job.spec.sampling.answer_max_chars
    if limit is None:
        return None
    # plain text, bounded length: the spec allows the limit only with `structured_output: vllm`
    return {"regex": f"[\\s\\S]{{1,{limit}}}"}


def _structured(job: "GenerateJob", which: str) -> bool:
    model = _model(job, which)
    return model.kind == "openai" and model.structured_output != "off"
