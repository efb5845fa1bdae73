"""A team's first recipe for a new use case, as commented YAML (``feinschliff init``).

What a user must decide (use case, base model, sources, method, evaluation, gate), and only
values that differ from the defaults (they live in ``feinschliff.specs`` alone). Optional
sections (generate, a judge, vLLM servers, a schedule) are commented-out examples that their
tests keep valid. The text is validated with the recipe model; nothing is run or deployed.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args
from urllib.parse import parse_qsl, urlsplit

import yaml
from pydantic import ValidationError

from feinschliff.recipe import Recipe
from feinschliff.recipe_loader import format_errors, parse_yaml
from feinschliff.specs.common import VLLM_LORA_RANKS, is_local_path
from feinschliff.specs.feedback import ArgillaPull, LangfusePull
from feinschliff.specs.register import RegisterSpec
from feinschliff.specs.train import LoraSpec, TrainSpec

# the recipe's train methods, read from its discriminated union (no second list to keep)
METHODS = tuple(
    get_args(c.model_fields["method"].annotation)[0] for c in get_args(get_args(TrainSpec)[0])
)
PULLS = {"argilla": (ArgillaPull, "api_url"), "langfuse": (LangfusePull, "base_url")}
# path segments of the tools' web UIs: such a URL is a page, not the API server
_UI_SEGMENTS = {"argilla": "/dataset/", "langfuse": "/project/"}


class ScaffoldError(ValueError):
    """An argument the recipe cannot be built from; the message is one line naming it."""


@dataclass(frozen=True)
class Source:
    """One ``--source``: an export path as the recipe spells it, or a live pull's settings."""

    kind: str
    path: str | None = None
    pull: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Scaffold:
    use_case: str
    base_model: str  # as written into the recipe (a folder: relative to it)
    method: str = "sft"
    sources: tuple[Source, ...] = ()  # empty: the bundled sample exports
    gpu: str | None = None
    lora_rank: int | None = None
    gradient_checkpointing: bool = False  # memory savers that make the training fit `gpu`
    batch_size: int | None = None
    gradient_accumulation_steps: int | None = None


def check_use_case(name: str) -> str:
    """The recipe's own ``use_case`` rule (its pattern, read from the model)."""
    meta = Recipe.model_fields["use_case"].metadata
    pattern = next(m.pattern for m in meta if getattr(m, "pattern", None))
    if not re.fullmatch(pattern, name):
        raise ScaffoldError(
            f"use case {name!r}: lowercase letters, digits and dashes, starting with a letter or "
            f"digit, at most 63 characters (recipe use_case: {pattern})"
        )
    return name


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ScaffoldError(f"--method {method!r}: not one of {', '.join(METHODS)} (train.method)")
    return method


def check_gpu(name: str) -> str:
    from feinschliff.estimate.hardware import hardware_file, load_gpus

    names = [g.name for g in load_gpus()]
    if name not in names:
        raise ScaffoldError(
            f"--gpu {name!r}: not a GPU of {hardware_file()} (valid: {', '.join(names)})"
        )
    return name


def check_lora_rank(rank: int) -> int:
    if rank < 1 or rank > max(VLLM_LORA_RANKS):
        raise ScaffoldError(f"--lora-rank {rank}: must be 1 to {max(VLLM_LORA_RANKS)}")
    return rank


def recipe_relative(path: str, out_dir: Path) -> str:
    """A path given on the command line (relative to the working directory) as the recipe
    must spell it: relative paths are relative to the recipe's folder. Absolute and ``~``
    paths stay as written."""
    if Path(path).is_absolute() or path.startswith("~"):
        return path
    return _relative(Path(path).resolve(), out_dir)


def _relative(path: Path, out_dir: Path) -> str:
    if os.path.commonpath([path, out_dir.resolve()]) == os.sep:  # only / in common: absolute
        return str(path)
    rel = os.path.relpath(path, out_dir.resolve())
    return rel if rel.startswith("..") else f"./{rel}"


def parse_base_model(name: str, out_dir: Path) -> str:
    """The name as the recipe spells it: a folder as a path relative to the recipe (``models/x``
    that exists is a folder, not a hub id); aliases and hub ids as given."""
    if not name.strip():
        raise ScaffoldError("--base-model '': give an alias, a Hugging Face id or a folder")
    return recipe_relative(name, out_dir) if _is_folder(name) else name


def base_model_doubt(name: str) -> str | None:
    """Why ``name`` may not be what the user meant (a typo in an alias, a missing folder)."""
    from feinschliff.models import PACKAGED_MODELS

    if _is_folder(name):
        return None if Path(name).expanduser().is_dir() else f"{name}: no such folder here"
    if "/" in name or name in PACKAGED_MODELS:
        return None
    close = difflib.get_close_matches(name, list(PACKAGED_MODELS), n=1, cutoff=0.4)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return (
        f"{name!r} is no feinschliff alias{hint} and no folder here: taken as a Hugging Face "
        "id (`feinschliff models list` shows the aliases)"
    )


def _is_folder(name: str) -> bool:
    return is_local_path(name) or Path(name).is_dir()


def parse_source(item: str, out_dir: Path) -> Source:
    """``argilla:PATH``, ``langfuse:PATH`` (an export), ``argilla:URL?dataset=NAME`` or
    ``langfuse:URL`` (a live pull; other settings of the pull as query parameters)."""
    kind, sep, where = item.partition(":")
    if not sep or kind not in PULLS or not where:
        raise ScaffoldError(
            f"--source {item!r}: expected argilla:PATH_OR_URL or langfuse:PATH_OR_URL"
        )
    if not where.startswith(("http://", "https://")):
        return Source(kind, path=recipe_relative(where, out_dir))
    model, url_key = PULLS[kind]
    url = urlsplit(where)
    if url.username or url.password:
        raise ScaffoldError(
            f"--source {kind}:<url>: credentials never go into a recipe: drop user:password@ "
            "(the pull reads its keys from the variables the recipe's comments name)"
        )
    if _UI_SEGMENTS[kind] in url.path:
        raise ScaffoldError(
            f"--source {item!r}: a page of the {kind} UI; give the server's base URL "
            f"({url.scheme}://{url.netloc})"
        )
    allowed = [k for k in model.model_fields if k != url_key and not k.endswith("_secret")]
    pull: dict[str, Any] = {}
    for key, value in parse_qsl(url.query, keep_blank_values=True):
        if key in pull:
            raise ScaffoldError(f"--source {item!r}: setting {key!r} given twice")
        if key not in allowed:
            raise ScaffoldError(
                f"--source {item!r}: unknown setting {key!r} (a {kind} pull takes "
                f"{', '.join(allowed)})"
            )
        text = model.model_fields[key].annotation in (str, str | None)  # environment=2024
        pull[key] = (value if text else parse_yaml(value)) if value else None
    if kind == "argilla" and not pull.get("dataset"):
        raise ScaffoldError(
            f"--source {item!r}: a live Argilla pull needs its dataset: "
            f"argilla:{url.scheme}://{url.netloc}{url.path}?dataset=NAME[&workspace=NAME]"
        )
    base = f"{url.scheme}://{url.netloc}{url.path}".rstrip("/")
    return Source(kind, pull={url_key: base, **pull})


# --------------------------------------------------------------------------- text


def schema_line(out: Path) -> str:
    from feinschliff.paths import project_root

    schema = project_root() / "recipes" / "recipe.schema.json"
    return f"# yaml-language-server: $schema={_relative(schema, out.parent)}"


def render_recipe(spec: Scaffold, out: Path) -> tuple[str, Recipe]:
    """The commented recipe, and the recipe ``load_recipe`` will read from it at ``out``."""
    text = schema_line(out) + "\n" + render_sections(spec, out)
    data = parse_yaml(text)
    try:
        return text, Recipe.model_validate(data, context={"base_dir": out.parent.resolve()})
    except ValidationError as exc:
        raise ScaffoldError(
            "; ".join(format_errors(f"{out} (not written)", exc, data, {}))
        ) from None


def secrets_of(spec: Scaffold) -> list[str]:
    """The variables (or Prefect Secret blocks) the live pulls read their keys from."""
    names: list[str] = []
    for source in spec.sources:
        if source.pull:
            model = PULLS[source.kind][0]
            names += [f.default for k, f in model.model_fields.items() if k.endswith("_secret")]
    return list(dict.fromkeys(names))


def _scalar(value: Any) -> str:  # one value in flow style, quoted where YAML needs it
    return yaml.safe_dump([value], default_flow_style=True, width=10**6).strip()[1:-1]


def _lines(*pairs: tuple[str, str]) -> str:  # key: value lines, comments at column 33
    return "".join(f"{text:<32} # {why}\n" if why else f"{text}\n" for text, why in pairs)


def _serving_rank(rank: int) -> int:
    """register.max_lora_rank for an adapter of this rank: the default while that serves it
    (servers keep their --max-lora-rank), else the smallest vLLM rank that does."""
    default = RegisterSpec.model_fields["max_lora_rank"].default
    return max(default, min(r for r in VLLM_LORA_RANKS if r >= rank))


def _commented(text: str, prefix: str) -> str:
    return "".join(f"{prefix}{line}".rstrip() + "\n" for line in text.splitlines())


# --------------------------------------------------------------------------- sections

# Gate rules as the shipped recipes set them (recipes/support-de-8b.yaml, recipes/examples/):
# rule, metric, setting (None: the method's tolerance), why
_PAIRS = "heldout/preference_accuracy"
_RULES = {
    "pairs": ("no_regression", _PAIRS, None, "swapped chosen/rejected feedback shows up here"),
    "pairs_sft": ("no_regression", _PAIRS, "tolerance: 0.05", "swapped pairs show up here"),
    "pairs_n": ("min_samples", _PAIRS, "threshold: 50", "too few held-out pairs decide nothing"),
    "usecase": ("no_regression", "usecase_heldout/acc_norm", None, "pairs as two-way choice"),
    "short": ("no_regression", "de_kurzantwort/exact_match[strip]", None, "ORPO's SFT half"),
    "knowledge": ("no_regression", "de_wissen_mc/acc", None, "German knowledge must not drop"),
    "knowledge_n": ("min_samples", "de_wissen_mc/acc", "threshold: 100", "enough questions"),
}
# method: (learning rate, held-out share, tolerance, evaluate.tasks, rules); None: the default
_MC, _SHORT, _HELDOUT = "de_wissen_mc", "de_kurzantwort", "usecase_heldout"
_METHODS: dict[str, tuple[float | None, float | None, float, list[str], list[str]]] = {
    "sft": (None, None, 0.01, [_MC, _SHORT], ["knowledge", "knowledge_n", "pairs_sft"]),
    "dpo": (2e-5, 0.15, 0.02, [_MC, _HELDOUT], ["pairs", "pairs_n", "usecase", "knowledge"]),
    "orpo": (5e-5, 0.15, 0.02, [_MC, _SHORT], ["pairs", "pairs_n", "short", "knowledge"]),
    "kto": (2e-5, None, 0.02, [_MC, _HELDOUT], ["pairs", "usecase", "knowledge", "knowledge_n"]),
}


def optional_examples(spec: Scaffold, out: Path) -> dict[str, str]:
    """Dotted location -> YAML of each commented-out example (tests uncomment them)."""
    from feinschliff.paths import project_root

    topics = _relative(project_root() / "data" / "seeds" / "themen-de.txt", out.parent)
    pairs = [] if spec.method == "sft" else [("preference: {}", f"pairs: {spec.method} needs")]
    return {
        "evaluate.judge": "base_url: http://vllm-judge:8000/v1\n"
        "model: Qwen/Qwen2.5-72B-Instruct\napi_key_env: JUDGE_API_KEY\n",
        "gate.rules": _lines(
            ("- rule: win_rate", "needs evaluate.judge"),
            ("- rule: require_approval", "a human decides in the Prefect UI"),
            ("  timeout_s: 43200", "12 h; a timeout rejects"),
        ),
        "register.vllm": _lines(
            ("servers:", ""),
            ("  - {url: http://vllm-0:8000, api_key_env: VLLM_API_KEY}", ""),
            (f"model: {_scalar(spec.base_model)}", "the servers' --model, exactly"),
        ),
        "generate": _lines(
            ("seeds:", ""),
            (f"  topics: {_scalar(topics)}", "one topic per line"),
            ("application_description: What the assistant does, for whom.", ""),
            ("teacher:", "an OpenAI-compatible endpoint"),
            ("  kind: openai", ""),
            ("  base_url: http://vllm-teacher:8000/v1", ""),
            ("  model: meta-llama/Llama-3.3-70B-Instruct", ""),
            ("  api_key_env: TEACHER_API_KEY", ""),
            *pairs,
            ("budget: {max_requests: 1500}", "teacher and judge requests per run"),
        ),
        "schedule": _lines(('cron: "0 3 * * 1"', "Mondays 03:00"), ("timezone: Europe/Berlin", "")),
    }


def render_sections(spec: Scaffold, out: Path) -> str:
    lr, heldout, tol, tasks, rules = _METHODS[spec.method]
    examples = optional_examples(spec, out)
    rank = spec.lora_rank or LoraSpec.model_fields["r"].default
    text = (
        f"# {spec.use_case}: {spec.method} LoRA adapter on {spec.base_model} (`feinschliff init`).\n"
        "# Only values that differ from the defaults are written: `feinschliff validate --print`\n"
        "# shows them all, `feinschliff schema` documents every field. Relative paths are\n"
        "# relative to this file.\n"
    )
    if secrets := secrets_of(spec):
        text += (
            "# Live pulls read their keys from environment variables (or Prefect Secret blocks of\n"
            f"# the same name in kebab case), never from this file:\n#   {', '.join(secrets)}\n"
        )
    samples = "" if spec.sources else "the bundled samples: point at your exports"
    text += _lines(
        ("schema_version: 1", ""),
        (f"use_case: {_scalar(spec.use_case)}", "registry folder, adapter and served name"),
        ("# description:", "what this adapter is for, who owns it"),
        ("base_model:", "the model the adapter is trained on"),
        (f"  name: {_scalar(spec.base_model)}", ""),
        ("  # dtype: float32", "on a CPU"),
        ("feedback:", "production feedback to learn from"),
        ("  sources:", samples),
    )
    text += _render_sources(spec, out)
    if heldout is not None:
        text += _lines((f"  heldout_fraction: {heldout}", "pairs are scarce: hold out enough"))
    text += _lines(("train:", "method, LoRA and hyperparameters"), (f"  method: {spec.method}", ""))
    if rank != LoraSpec.model_fields["r"].default:
        text += _lines(
            ("  lora:", ""),
            (f"    r: {rank}", "at most register.max_lora_rank"),
            (f"    alpha: {2 * rank}", "scaling alpha / r = 2"),
        )
    memory = [
        ("    gradient_checkpointing: true", f"~30 % more compute; fits {spec.gpu}"),
        (f"    batch_size: {spec.batch_size}", f"a micro-batch {spec.gpu} fits"),
        (f"    gradient_accumulation_steps: {spec.gradient_accumulation_steps}", "same rows/step"),
    ]
    chosen = (spec.gradient_checkpointing, spec.batch_size, spec.gradient_accumulation_steps)
    hyper = [line for line, value in zip(memory, chosen, strict=True) if value]
    if lr is not None:
        hyper[:0] = [
            (f"    learning_rate: {lr:.1e}", "preference losses want far less than SFT"),
            ("    warmup_ratio: 0.1", ""),
        ]
    if hyper:
        text += _lines(("  hyperparameters:", ""), *hyper)
    else:
        text += _lines(("  # hyperparameters:", "learning rate, steps, batch, max_length"))
    if spec.gpu:
        text += _lines((f"  gpu: {spec.gpu}", "`run` refuses a training that would not fit"))
    text += _lines(
        ("evaluate:", "what is measured (candidate vs base and production)"),
        (f"  tasks: [{', '.join(tasks)}]", ""),
        ("  # judge:", "optional LLM-as-judge (gate rule win_rate)"),
    )
    text += _commented(examples["evaluate.judge"], "  #   ")
    text += _lines(("gate:", "every rule must pass to promote"), ("  rules:", ""))
    for key in rules:
        rule, metric, setting, why = _RULES[key]
        text += _lines(
            (f"    - rule: {rule}", why),
            (f"      metric: {metric}", ""),
            (f"      {setting or f'tolerance: {tol}'}", ""),
        )
    text += _lines(
        ("    - rule: contamination", "no training row may hold eval text"),
        ("    - rule: poisoning", "no phrase planted by one contributor"),
    )
    text += _commented(examples["gate.rules"], "    # ")
    served = _serving_rank(rank)
    written = served != RegisterSpec.model_fields["max_lora_rank"].default
    text += _lines(
        (f"{'' if written else '# '}register:", "the adapter registry and the vLLM servers"),
        (f"{'  ' if written else '#   '}max_lora_rank: {served}", "the servers' --max-lora-rank"),
        (f"{'  # ' if written else '#   '}vllm:", "servers that load each promoted adapter"),
    )
    text += _commented(examples["register.vllm"], "  #   " if written else "#     ")
    text += _lines(("# generate:", "optional synthetic data from a teacher model"))
    text += _commented(examples["generate"], "#   ")
    text += _lines(("# schedule:", "optional cron for `feinschliff deployments sync`"))
    return text + _commented(examples["schedule"], "#   ")


def _render_sources(spec: Scaffold, out: Path) -> str:
    from feinschliff.paths import project_root

    samples = project_root() / "data" / "samples"
    sources = spec.sources or (
        Source("argilla", path=_relative(samples / "argilla" / "feedback-de", out.parent)),
        Source("langfuse", path=_relative(samples / "langfuse", out.parent)),
    )
    text = ""
    for source in sources:
        text += f"    - kind: {source.kind}\n"
        if source.path is not None:
            text += f"      path: {_scalar(source.path)}\n"
        else:
            pull = "".join(f"        {k}: {_scalar(v)}\n" for k, v in source.pull.items())
            text += "      pull:\n" + pull
    return text
