"""The recipe: one YAML file per use case, validated into typed pydantic models.

Every default lives in the section models (``feinschliff.specs.*``) and nowhere else; every field
carries its documentation in ``Field(description=...)``, from which the editor JSON Schema
(``recipes/recipe.schema.json``) is generated. Runtime code receives these objects, never dicts.
Loading, ``--set`` overrides and error formatting live in ``recipe_loader``.
"""

from __future__ import annotations

import difflib
import warnings
from typing import Any, Literal

import yaml
from pydantic import Field, model_validator

from feinschliff.paths import bundled_task_names, bundled_tasks_dir, judge_questions_file
from feinschliff.specs.base_model import BaseModelSpec
from feinschliff.specs.common import VLLM_LORA_RANKS, RecipePath, Strict
from feinschliff.specs.evaluate import (
    USECASE_TASK,
    EvaluateSpec,
    GateRule,
    GateSpec,
    MaxRule,
    MinRule,
    MinSamplesRule,
    NoRegressionRule,
)
from feinschliff.specs.feedback import DerivationRules, FeedbackSource, FeedbackSpec
from feinschliff.specs.generate import GenerateSpec
from feinschliff.specs.register import RegisterSpec, ScheduleSpec
from feinschliff.specs.train import (
    DPOTrain,
    Hyperparameters,
    KTOTrain,
    LoraSpec,
    ORPOTrain,
    SFTTrain,
    TrainSpec,
)

__all__ = [
    "USECASE_METRIC_LIST",
    "VLLM_LORA_RANKS",
    "BaseModelSpec",
    "DPOTrain",
    "DerivationRules",
    "EvaluateSpec",
    "FeedbackSource",
    "FeedbackSpec",
    "GateRule",
    "GateSpec",
    "GenerateSpec",
    "Hyperparameters",
    "KTOTrain",
    "LoraSpec",
    "MaxRule",
    "MinRule",
    "MinSamplesRule",
    "NoRegressionRule",
    "ORPOTrain",
    "Recipe",
    "RecipePath",
    "RegisterSpec",
    "SFTTrain",
    "ScheduleSpec",
    "Strict",
    "TrainSpec",
]

# --------------------------------------------------------------------------- metric names

# The lm-eval metrics of the use-case task (`usecase_heldout`), whose YAML the harness writes
# (`feinschliff.evaluate.harness.render_usecase_task`, which says why `acc` is not among them).
# Here so that recipe validation knows its metric names without importing the harness.
USECASE_METRIC_LIST: tuple[str, ...] = ("acc_norm",)


FIXED_METRICS: dict[str, list[str]] = {
    "heldout": ["heldout/preference_accuracy", "heldout/correction_chrf"],
    "judge": ["judge/score", "judge/win_rate"],
    "contamination": ["contamination/overlaps"],
    "poisoning": ["poisoning/suspicious_rows"],
}
# Directions of feinschliff's own metrics (lm-eval's carry theirs in the report), and those
# computed for the candidate alone: no base or production value to compare with.
HIGHER_IS_BETTER = {
    "heldout/preference_accuracy": True,
    "heldout/correction_chrf": True,
    "judge/score": True,
    "judge/win_rate": True,
    "contamination/overlaps": False,
    "poisoning/suspicious_rows": False,
}
CANDIDATE_ONLY = {
    "judge/win_rate": "win_rate",
    "contamination/overlaps": "contamination",
    "poisoning/suspicious_rows": "poisoning",
}


def task_metric_names(cfg: dict[str, Any]) -> list[str] | None:
    """The report names of an lm-eval task config's metrics, as ``flatten_results`` writes
    them: ``task/metric`` under the filter ``none`` (or no ``filter_list``), else
    ``task/metric[filter]``. None when the config has no ``metric_list`` (lm-eval's defaults
    for the output type apply: not derived here)."""
    metric_list = cfg.get("metric_list")
    if not isinstance(metric_list, list) or not metric_list:
        return None
    task = cfg["task"]
    filters = [f.get("name", "none") for f in cfg.get("filter_list") or []] or ["none"]
    return [
        f"{task}/{m['metric']}" if filt == "none" else f"{task}/{m['metric']}[{filt}]"
        for filt in filters
        for m in metric_list
    ]


def known_metric_names(tasks: set[str]) -> dict[str, list[str]]:
    """Task -> the metric names it reports, for the bundled tasks and ``usecase_heldout``
    among ``tasks`` (upstream tasks are not known here and are left out)."""
    known: dict[str, list[str]] = {}
    if USECASE_TASK in tasks:
        names = task_metric_names(
            {"task": USECASE_TASK, "metric_list": [{"metric": m} for m in USECASE_METRIC_LIST]}
        )
        known[USECASE_TASK] = names or []
    for yml in sorted(bundled_tasks_dir().glob("*.yaml")):
        try:
            cfg = yaml.safe_load(yml.read_text(encoding="utf-8"))
        except yaml.YAMLError:  # the harness reports it when it runs the task
            continue
        # a group YAML lists its tasks (`task: [a, b]`): not a task of its own here
        if isinstance(cfg, dict) and isinstance(cfg.get("task"), str) and cfg["task"] in tasks:
            names = task_metric_names(cfg)
            if names is not None:
                known[cfg["task"]] = names
    return known


# --------------------------------------------------------------------------- recipe


# BaseModel inherits ABCMeta.register; a recipe section called `register` is what users expect.
warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)


class Recipe(Strict):
    schema_version: Literal[1] = Field(description="Recipe format version.")
    use_case: str = Field(
        pattern=r"^[a-z0-9][a-z0-9-]{0,62}$",
        description="Use-case name: registry folder and adapter name (lowercase, digits, dashes).",
    )
    description: str = Field("", description="What this recipe is for, who owns it.")
    base_model: BaseModelSpec = Field(description="The model the adapter is trained on.")
    feedback: FeedbackSpec = Field(description="Production feedback exports to learn from.")
    generate: GenerateSpec | None = Field(None, description="Optional synthetic data generation.")
    train: TrainSpec = Field(description="Training method, backend, LoRA and hyperparameters.")
    evaluate: EvaluateSpec = Field(default_factory=EvaluateSpec, description="Evaluation suite.")
    gate: GateSpec = Field(description="Promotion rules over the evaluation report.")
    register: RegisterSpec = Field(default_factory=RegisterSpec, description="Adapter registry.")
    schedule: ScheduleSpec | None = Field(None, description="Optional retraining schedule.")

    # Cross-field rules. A message starts with the YAML path it is about (the loader reports
    # it there); each one is a mistake that would otherwise pass `validate` and fail only after
    # training, or never (a gate rule on a metric nobody computes rejects every run).
    @model_validator(mode="after")
    def _adapter_fits_server(self) -> Recipe:
        if self.train.lora.r > self.register.max_lora_rank:
            raise ValueError(
                f"train.lora.r: {self.train.lora.r} exceeds register.max_lora_rank="
                f"{self.register.max_lora_rank}: the serving vLLM would refuse the adapter"
            )
        return self

    @model_validator(mode="after")
    def _gate_metrics_are_computed(self) -> Recipe:
        evaluate, tasks = self.evaluate, set(self.evaluate.tasks)
        producers = {"contamination", "poisoning", *tasks}
        producers |= {"heldout"} if evaluate.heldout else set()
        producers |= {"judge"} if evaluate.judge else set()
        # an upstream lm-eval group reports its subtasks under their own names: unknowable here
        upstream = tasks - set(bundled_task_names()) - {USECASE_TASK}
        # bundled tasks and usecase_heldout: their exact metric names (metric and filter);
        # the other producers' names are fixed (evaluate.stage, evaluate.extra, judge)
        known = {**FIXED_METRICS, **known_metric_names(tasks)}
        local = set(bundled_task_names()) | {USECASE_TASK}
        # what the contamination metric can check (evaluate.stage.contamination)
        checkable = bool(tasks & set(bundled_task_names())) or (
            evaluate.judge is not None and evaluate.judge.asks_bundled
        )
        for i, rule in enumerate(self.gate.rules):
            metric = getattr(rule, "metric", None)
            if metric is None:
                continue
            where = f"gate.rules.{i}.metric: {metric!r}"
            _check_rule_fits_metric(rule, metric, where)
            prefix = metric.split("/", 1)[0]
            if prefix == "judge" and evaluate.judge is None:
                raise ValueError(f"{where} needs evaluate.judge (no judge is configured)")
            if prefix == "heldout" and not evaluate.heldout:
                raise ValueError(f"{where} needs evaluate.heldout: true")
            if prefix == "contamination" and not checkable:
                raise ValueError(
                    f"{where} has no eval data to check training rows against: upstream "
                    "tasks have no local data and usecase_heldout is held out by construction, "
                    "so the value would be n/a and the rule would reject every run; add a "
                    "bundled task to evaluate.tasks or a judge with bundled questions"
                )
            if prefix in local - tasks:
                raise ValueError(f"{where} is not computed: task {prefix} is not in evaluate.tasks")
            if prefix not in producers and not upstream:
                sources = ", ".join(sorted(producers))
                raise ValueError(
                    f"{where} is not computed: its task must be in evaluate.tasks "
                    f"(metrics come from: {sources})"
                )
            if prefix in known and metric not in known[prefix]:
                valid = known[prefix]
                close = difflib.get_close_matches(metric, valid, n=1, cutoff=0.0)
                hint = f": did you mean {close[0]!r}?" if close else ""
                raise ValueError(
                    f"{where} is not a metric of task {prefix}{hint} "
                    f"(it reports {', '.join(valid) or 'nothing'})"
                )
            # with upstream tasks any prefix may be a group's subtask, but not a near-miss of
            # a known producer that no upstream name explains
            near = difflib.get_close_matches(prefix, sorted(producers | local), n=1, cutoff=0.8)
            typo = (
                near and prefix not in producers and not any(prefix.startswith(u) for u in upstream)
            )
            if "/" not in metric or typo:
                hint = f": did you mean {near[0]!r}?" if near else ""
                raise ValueError(f"{where} is not a metric any producer reports{hint}")
        return self

    @model_validator(mode="after")
    def _generated_rows_are_trained(self) -> Recipe:
        # dpo/orpo train on preference pairs, kto on answers with a verdict: a `generate`
        # without `preference` writes SFT rows only, so its teacher requests would be spent on
        # rows the training never reads
        method = self.train.method
        if self.generate is not None and self.generate.preference is None and method != "sft":
            raise ValueError(
                f"generate.preference: missing, but train.method is {method}: without it "
                f"generate writes SFT rows only, which {method} never trains on (the teacher "
                "requests would be spent for nothing); add generate.preference or use "
                "train.method: sft"
            )
        return self

    @model_validator(mode="after")
    def _usecase_task_has_data(self) -> Recipe:
        if USECASE_TASK in self.evaluate.tasks and self.feedback.heldout_fraction == 0:
            raise ValueError(
                f"evaluate.tasks: {USECASE_TASK} scores held-out feedback pairs, but "
                "feedback.heldout_fraction is 0 (nothing is held out)"
            )
        return self


def _check_rule_fits_metric(rule: Any, metric: str, where: str) -> None:
    """Rules that would reject every run, or read a metric upside down, are refused here."""
    kind = rule.rule
    own = {"win_rate": "judge/win_rate", **{v: k for k, v in CANDIDATE_ONLY.items()}}
    if kind in ("win_rate", "contamination", "poisoning") and metric != own[kind]:
        raise ValueError(f"{where}: the {kind} rule reads {own[kind]!r} only")
    if kind == "no_regression" and metric in CANDIDATE_ONLY:
        raise ValueError(
            f"{where} is computed for the candidate only (no base or production value to "
            f"compare with), so no_regression would reject every run: use the "
            f"{CANDIDATE_ONLY[metric]} rule"
        )
    direction = HIGHER_IS_BETTER.get(metric)
    if kind == "no_regression" and direction is not None and rule.higher_is_better != direction:
        raise ValueError(
            f"{where} is {'higher' if direction else 'lower'}-is-better: remove "
            f"higher_is_better: {str(rule.higher_is_better).lower()} (regressions would pass "
            "and improvements fail)"
        )


def evaluated_sets(recipe: Recipe) -> list[str]:
    """The eval data ``evaluate`` reads, as eval-set names for decontamination: its tasks and,
    when the judge asks the bundled questions, their file. Ingest and generate drop rows
    holding any of it (besides ``feedback.decontamination.eval_sets``), the same data the
    gate's ``contamination`` metric checks: a row they kept would fail that rule."""
    names = list(recipe.evaluate.tasks)
    judge = recipe.evaluate.judge
    if judge is not None and judge.asks_bundled:
        names.append(str(judge_questions_file()))
    return names
