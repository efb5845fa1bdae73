"""Which layers ``train.lora.target_modules`` adapts, as far as the estimate knows the model.

Names match as PEFT matches them (the last part of a dotted name). Where the estimate knows the
family's layout (``KNOWN_MODEL_TYPES``, and a multimodal wrapper's vision tower when it knows
that too), a name the model does not have is refused rather than counted as nothing (Phi-3 has
qkv_proj, not q_proj; Llama has no qkv_proj). Elsewhere (Phi-2's dense, fc1, fc2) the names
it knows are counted and the others named in an assumption line: training checks the real
model (train/checks.py) and accepts what it has. ``embed_tokens`` is an embedding PEFT adapts
(r x vocab + hidden x r, once). A wrapper's vision tower has layers of the names too (SigLIP's
q/k/v_proj): PEFT adapts them as well, and the estimate counts them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from feinschliff.estimate.shape import KNOWN_MODEL_TYPES, EstimateError, ModelShape

EMBEDDING_MODULES = ("embed_tokens",)


@dataclass(frozen=True)
class LoraTargets:
    """The target names sorted by where they adapt: (in, out) features per layer."""

    block: dict[str, tuple[int, int]] = field(default_factory=dict)
    tower: dict[str, tuple[int, int]] = field(default_factory=dict)
    embedding: bool = False
    uncounted: tuple[str, ...] = ()


def lora_targets(shape: ModelShape, targets: str | list[str]) -> LoraTargets:
    """Sort ``targets``; refuse lm_head, and names a layout the estimate knows lacks."""
    if targets == "all-linear":  # PEFT's all-linear leaves out the embedding and lm_head
        return LoraTargets(block=shape.linear_shapes(), tower=shape.tower_linear_shapes())
    names = list(dict.fromkeys(n.rsplit(".", 1)[-1] for n in targets))
    if "lm_head" in names:  # as train/checks.py refuses it, before the model loads
        raise EstimateError(
            "cannot estimate LoRA on 'lm_head': it is the output layer, where TRL trains no "
            "LoRA; remove it from train.lora.target_modules"
        )
    linears, tower = shape.linear_shapes(), shape.tower_linear_shapes()
    if not shape.tower_layout_known:
        tower = {}
    unknown = [
        n for n in names if n not in linears and n not in tower and n not in EMBEDDING_MODULES
    ]
    layout_known = shape.model_type in KNOWN_MODEL_TYPES and (
        not shape.tower_layers or shape.tower_layout_known
    )
    if unknown and layout_known:
        extra = f"; its vision tower's: {', '.join(tower)}" if tower else ""
        raise EstimateError(
            f"cannot estimate LoRA on {', '.join(map(repr, unknown))}: a {shape.model_type} "
            f"decoder block's linear layers are {', '.join(linears)}{extra} "
            "(train.lora.target_modules, or all-linear)"
        )
    return LoraTargets(
        block={n: linears[n] for n in names if n in linears},
        tower={n: tower[n] for n in names if n in tower},
        embedding=any(n in EMBEDDING_MODULES for n in names),
        uncounted=tuple(unknown),
    )


def adapted_linears(shape: ModelShape, targets: str | list[str]) -> dict[str, tuple[int, int]]:
    """(in, out) features of the linear layers of one decoder block that LoRA adapts."""
    return lora_targets(shape, targets).block


def lora_params(shape: ModelShape, r: int, targets: str | list[str]) -> int:
    """PEFT's trainable parameters: the decoder blocks', the vision tower's, the embedding's."""
    t = lora_targets(shape, targets)
    block = shape.layers * sum(r * (n_in + n_out) for n_in, n_out in t.block.values())
    tower = shape.tower_layers * sum(r * (n_in + n_out) for n_in, n_out in t.tower.values())
    return block + tower + (r * (shape.vocab + shape.hidden) if t.embedding else 0)


def target_notes(shape: ModelShape, targets: str | list[str]) -> list[str]:
    """Assumption lines about the targets: those not counted, the tower's layers adapted too."""
    t = lora_targets(shape, targets)
    out = []
    if t.uncounted:
        out.append(
            f"LoRA on {', '.join(map(repr, t.uncounted))} not counted: the estimate does not "
            f"know a {shape.model_type} model's layers of those names (training checks the "
            "real model); trainable parameters and activations are low by their share"
        )
    if targets != "all-linear" and t.tower:
        out.append(
            f"the vision tower's {', '.join(t.tower)} layers are adapted too (PEFT matches "
            "the names there): counted"
        )
    if targets != "all-linear" and shape.tower_layers and not shape.tower_layout_known:
        out.append(
            f"the vision tower ({shape.tower_type or 'unknown type'}) may have layers named "
            f"{', '.join(n.rsplit('.', 1)[-1] for n in targets)} too: PEFT adapts them, "
            "the estimate does not count them"
        )
    if t.embedding:
        out.append("LoRA on embed_tokens: r x (vocab + hidden) parameters, counted")
    return out
