"""Recipe sections `register` and `schedule`."""

from __future__ import annotations

import re
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, Field, ValidationInfo, field_validator, model_validator

from feinschliff.specs.common import VLLM_LORA_RANKS, RecipePath, Strict, _resolve_path

# --------------------------------------------------------------------------- register

ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _registry_location(value: str, info: ValidationInfo) -> str:
    """A URL (`file:///...`, `s3://...`) stays as written; a plain path is resolved like any
    other recipe path (relative to the recipe file)."""
    return value if "://" in value else _resolve_path(value, info)


RegistryLocation = Annotated[str, AfterValidator(_registry_location)]


class VllmServer(Strict):
    url: str = Field(
        pattern=r"^https?://[^\s/]+(/[^\s]*)?$",
        description="Base URL of one vLLM replica, e.g. http://vllm-0:8000 (no /v1 suffix).",
    )
    api_key_env: str | None = Field(
        None,
        description="Name of the environment variable that holds this server's --api-key "
        "(the key itself never goes into a recipe). None: the server has no API key.",
    )

    @field_validator("url")
    @classmethod
    def _strip_slash(cls, url: str) -> str:
        return url.rstrip("/")

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, name: str | None) -> str | None:
        if name is not None and not ENV_NAME_RE.match(name):
            raise ValueError(f"{name!r} is not an environment variable name")
        return name


class VllmSpec(Strict):
    servers: list[VllmServer] = Field(
        min_length=1, description="The vLLM replicas that serve this use case; each is updated."
    )
    model: str = Field(
        description="The servers' --model string exactly as passed to vLLM (HF id or path). "
        "The filesystem resolver only loads adapters whose base_model_name_or_path equals it."
    )
    mode: Literal["runtime", "resolver"] = Field(
        "runtime",
        description="runtime: load/unload adapters over /v1/load_lora_adapter (servers need "
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING=true). resolver: write the lora_filesystem_resolver "
        "layout into resolver_dir; servers load an adapter on its first request.",
    )
    adapter_dir: RecipePath | None = Field(
        None,
        description="Directory the servers can read (a shared volume) where every served version "
        "gets its own new path; default `$FEINSCHLIFF_HOME/serving`.",
    )
    server_adapter_dir: str | None = Field(
        None,
        description="adapter_dir as the servers see it (e.g. its mount path in the pod); "
        "default: the same path.",
    )
    resolver_dir: RecipePath | None = Field(
        None,
        description="resolver mode: the servers' VLLM_LORA_RESOLVER_CACHE_DIR "
        "(adapters are written to <resolver_dir>/<name>/).",
    )
    keep_versions: int = Field(
        1,
        ge=1,
        le=8,
        description="How many recent production versions stay loaded under their pinned names "
        "(<use_case>@<version>); 1 unloads a superseded version as soon as the new one serves.",
    )
    max_loras: int = Field(
        4,
        ge=1,
        description="The servers' --max-loras. At least the adapters in play (keep_versions + 1 "
        "for the stable name + one being staged); on vLLM CPU keep one more free: with every slot "
        "used, an adapter can leak into base-model requests batched with adapter requests "
        "(upstream bug, vLLM PRs #48421/#49656).",
    )
    verify_prompt: str = Field(
        "Wie kann ich mein Passwort zurücksetzen?",
        min_length=1,
        description="Prompt of the completion request that checks each loaded adapter answers.",
    )
    timeout_s: float = Field(60.0, gt=0, description="Per-request timeout in seconds.")
    retries: int = Field(
        3, ge=0, le=10, description="Retries (exponential backoff) on connection errors and 5xx."
    )

    @model_validator(mode="after")
    def _layout_fits(self) -> VllmSpec:
        if self.mode == "resolver" and self.resolver_dir is None:
            raise ValueError("mode=resolver needs resolver_dir (the VLLM_LORA_RESOLVER_CACHE_DIR)")
        if self.max_loras < self.keep_versions + 2:
            raise ValueError(
                f"max_loras={self.max_loras} must be >= keep_versions + 2 = "
                f"{self.keep_versions + 2} (stable name, kept versions, one being staged)"
            )
        return self


class RegisterSpec(Strict):
    registry: RegistryLocation | None = Field(
        None,
        description="Registry root: a local directory or any fsspec URL (file://, "
        "s3://bucket/registry, ...); default `$FEINSCHLIFF_HOME/registry`. Object stores need "
        "an exclusive create for the alias lock (S3: If-None-Match); see the README.",
    )
    max_lora_rank: int = Field(
        16, description="The serving vLLM's --max-lora-rank; adapters above it are refused."
    )
    vllm: VllmSpec | None = Field(
        None, description="vLLM servers to load the production adapter into; None: registry only."
    )

    @field_validator("max_lora_rank")
    @classmethod
    def _rank_allowed(cls, rank: int) -> int:
        if rank not in VLLM_LORA_RANKS:
            raise ValueError(f"vLLM's --max-lora-rank must be one of {list(VLLM_LORA_RANKS)}")
        return rank


# (name, lowest, highest, names) per field; weekday 7 is Sunday as in cron
_CRON_FIELDS = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    (
        "month",
        1,
        12,
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
    ),
    ("weekday", 0, 7, ("sun", "mon", "tue", "wed", "thu", "fri", "sat")),
)


_CRON_MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")


def _cron_value(text: str, low: int, high: int, names: tuple[str, ...]) -> int:
    if text.lower() in names:
        return names.index(text.lower()) + (1 if low == 1 else 0)
    if not text.isdigit() or not low <= int(text) <= high:
        raise ValueError(f"{text!r} is not in {low}-{high}")
    return int(text)


def _check_cron(cron: str) -> str:
    """Five standard fields (``*``, numbers, names, ``a-b``, ``/step``, lists; ``L`` as the
    last day of the month, ``day#n`` as the n-th weekday, ``@daily`` and its kin): checked here, because a bad
    expression would otherwise pass `validate` and fail only at deployment."""
    if cron.strip().lower() in _CRON_MACROS:
        return cron
    fields = cron.split()
    if len(fields) != 5:
        raise ValueError(f"cron {cron!r} must have 5 fields (minute hour day month weekday)")
    for text, (what, low, high, names) in zip(fields, _CRON_FIELDS, strict=True):
        for item in text.split(","):
            span, _, step = item.partition("/")
            if item == "?" and what in ("day of month", "weekday"):
                continue  # "no specific value", as in croniter
            if what == "day of month" and item.upper() in ("L", "1-L"):
                continue
            if what == "weekday" and "#" in item:
                day, _, nth = item.partition("#")
                if nth not in ("1", "2", "3", "4", "5"):
                    raise ValueError(f"cron {cron!r}: weekday field {text!r}: {nth!r} is not 1-5")
                span = day
            try:
                if step and (not step.isdigit() or int(step) == 0):
                    raise ValueError(f"step {step!r} is not a positive number")
                if span != "*":
                    for end in span.split("-", 1):  # a-b; b < a wraps around, as in croniter
                        _cron_value(end, low, high, names)
            except ValueError as exc:
                raise ValueError(f"cron {cron!r}: {what} field {text!r}: {exc}") from None
    return cron


def _check_timezone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown IANA timezone {name!r} (e.g. Europe/Berlin, UTC)") from None
    return name


class ScheduleSpec(Strict):
    cron: Annotated[str, AfterValidator(_check_cron)] = Field(
        description="Cron expression for scheduled retraining, e.g. '0 2 * * 1'."
    )
    timezone: Annotated[str, AfterValidator(_check_timezone)] = Field(
        "Europe/Berlin", description="IANA timezone of the cron expression."
    )
