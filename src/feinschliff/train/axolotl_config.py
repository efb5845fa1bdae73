"""Axolotl YAML from a recipe: the generator behind ``train.backend: axolotl``.

Builds the Axolotl 0.19.0 config in explicit code from the typed recipe (FACTS 6, 10.5), adds the
six CPU overrides on a machine without CUDA, rewrites training rows into the shape each Axolotl
prompt strategy reads, and refuses any key outside ``TOP_KEYS``/``DATASET_KEYS`` (Axolotl would
silently drop it). Running Axolotl is ``axolotl_backend``'s job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from feinschliff.recipe import DPOTrain, ORPOTrain, Recipe, SFTTrain
from feinschliff.train.data import read_jsonl, write_jsonl
from feinschliff.train.schedule import scheduler_type

# Every key the generator may emit; each is a field of Axolotl 0.19.0's AxolotlInputConfig
# (checked again against the installed schema before training).
TOP_KEYS = frozenset(
    {
        "base_model", "chat_template", "datasets", "test_datasets", "val_set_size",
        "dataset_prepared_path", "output_dir", "adapter", "load_in_4bit", "lora_r", "lora_alpha",
        "lora_dropout", "lora_target_linear", "lora_target_modules", "sequence_len",
        "micro_batch_size", "gradient_accumulation_steps", "num_epochs", "max_steps",
        "learning_rate", "lr_scheduler", "warmup_ratio", "optimizer", "gradient_checkpointing",
        "seed", "logging_steps", "save_strategy", "save_steps", "save_total_limit",
        "eval_strategy", "eval_steps", "sample_packing", "pad_to_sequence_len", "rl", "rl_beta",
        "orpo_alpha", "remove_unused_columns", "resume_from_checkpoint", "dataloader_num_workers",
        "save_safetensors", "bf16", "fp16", "lora_mlp_kernel", "lora_qkv_kernel",
        "lora_o_kernel", "lora_embedding_kernel", "lora_model_dir", "revision_of_model",
    }
)  # fmt: skip
DATASET_KEYS = frozenset(
    {
        "path", "ds_type", "type", "split", "field_messages", "message_property_mappings",
        "roles_to_train", "train_on_eos", "field_chosen", "field_rejected",
    }
)  # fmt: skip
CPU_OVERRIDES = {
    "bf16": False,
    "fp16": False,
    "lora_mlp_kernel": False,
    "lora_qkv_kernel": False,
    "lora_o_kernel": False,
    "lora_embedding_kernel": False,
}

# An eval period no run reaches: transformers then evaluates only at the last step.
EVAL_AT_END_ONLY = 2**31 - 1


class AxolotlError(RuntimeError):
    """Axolotl cannot train this recipe, its venv is missing, or its run failed."""


# --------------------------------------------------------------------------- config


def axolotl_rows(recipe: Recipe, src: Path, dst: Path) -> Path:
    """Rewrite prepared rows into the shape the Axolotl prompt strategy for the method reads."""
    rows = read_jsonl(src)
    if isinstance(recipe.train, ORPOTrain):
        # chat_template.argilla reads chosen/rejected as [user, assistant] (+ optional system).
        _refuse_multi_turn(rows, src)
        converted = []
        for r in rows:
            system = [m for m in r["prompt"] if m["role"] == "system"]
            turns = [m for m in r["prompt"] if m["role"] != "system"]
            row = {"chosen": turns + r["chosen"][-1:], "rejected": turns + r["rejected"][-1:]}
            if system:
                row["system"] = system[0]["content"]
            converted.append(row)
        rows = converted
    write_jsonl(dst, rows)
    return dst


def _refuse_multi_turn(rows: list[dict[str, Any]], src: Path) -> None:
    """Axolotl's ORPO strategy keeps one user turn: a conversation's earlier turns would be
    dropped, so such rows are refused, counted and the first one named (TRL trains them)."""
    multi = [
        i for i, r in enumerate(rows, 1) if sum(m["role"] != "system" for m in r["prompt"]) != 1
    ]
    if not multi:
        return
    first = rows[multi[0] - 1].get("provenance") or {}
    ident = ", ".join(f"{k} {first[k]}" for k in ("source", "source_id") if first.get(k))
    raise AxolotlError(
        f"Axolotl ORPO (chat_template.argilla) takes single-turn prompts: {len(multi)} of "
        f"{len(rows)} rows of {src.name} hold earlier turns (first: row {multi[0]}"
        + (f", {ident}" if ident else "")
        + "). Train them with train.backend: trl, which keeps conversations"
    )


def _dataset_entry(recipe: Recipe, path: Path) -> dict[str, Any]:
    spec = recipe.train
    if isinstance(spec, SFTTrain):
        roles = ["assistant"] if spec.assistant_only_loss else ["system", "user", "assistant"]
        return {
            "path": str(path),
            "ds_type": "json",
            "type": "chat_template",
            "field_messages": "messages",
            "message_property_mappings": {"role": "role", "content": "content"},
            "roles_to_train": roles,
            "train_on_eos": "turn",
        }
    if isinstance(spec, DPOTrain):
        # chat_template.default: prompt messages, and the last message of chosen/rejected
        return {
            "path": str(path),
            "split": "train",
            "type": "chat_template.default",
            "field_messages": "prompt",
            "field_chosen": "chosen",
            "field_rejected": "rejected",
        }
    if isinstance(spec, ORPOTrain):
        return {"path": str(path), "split": "train", "type": "chat_template.argilla"}
    raise AxolotlError(f"method {spec.method} is not supported by the Axolotl backend; use trl")


def build_config(
    recipe: Recipe,
    model_path: str,
    files: dict[str, Path],
    out: Path,
    *,
    on_cpu: bool,
    resume: Path | None = None,
    init_adapter: Path | None = None,
) -> dict[str, Any]:
    """The Axolotl YAML as a dict, from the typed recipe (``files`` already in Axolotl's shape)."""
    spec = recipe.train
    hp = spec.hyperparameters
    lora = spec.lora
    dtype = recipe.base_model.dtype
    cfg: dict[str, Any] = {
        "base_model": model_path,
        "chat_template": "tokenizer_default" if spec.chat_template == "model" else "chatml",
        "datasets": [_dataset_entry(recipe, files["train"])],
        "val_set_size": 0,
        "dataset_prepared_path": str(out / "axolotl" / "prepared"),
        "output_dir": str(out / "checkpoints"),
        "adapter": "qlora" if spec.qlora else "lora",
        "lora_r": lora.r,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "sequence_len": hp.max_length,
        "micro_batch_size": hp.batch_size,
        "gradient_accumulation_steps": hp.gradient_accumulation_steps,
        "num_epochs": hp.epochs,
        "learning_rate": hp.learning_rate,
        # Axolotl hands it to transformers, whose "constant" ignores warmup_ratio
        "lr_scheduler": scheduler_type(hp.lr_scheduler, hp.warmup_ratio),
        "warmup_ratio": hp.warmup_ratio,
        "optimizer": "adamw_torch",
        "gradient_checkpointing": hp.gradient_checkpointing,
        "seed": hp.seed,
        "logging_steps": hp.logging_steps,
        "save_strategy": "steps",
        "save_steps": hp.save_steps,
        "save_total_limit": 2,
        "dataloader_num_workers": 0,
        "save_safetensors": True,
        "bf16": dtype == "bfloat16",
        "fp16": dtype == "float16",
    }
    if recipe.base_model.revision:
        # Axolotl's name for it (alias model_revision): passed to every from_pretrained
        cfg["revision_of_model"] = recipe.base_model.revision
    if lora.target_modules == "all-linear":
        cfg["lora_target_linear"] = True
    else:
        cfg["lora_target_modules"] = list(lora.target_modules)
    if spec.qlora:
        cfg["load_in_4bit"] = True
    if hp.max_steps > 0:
        cfg["max_steps"] = hp.max_steps
    if "eval" in files:
        cfg["test_datasets"] = [_dataset_entry(recipe, files["eval"])]
        # Axolotl adds an eval at step 0, and "no" would leave that the only one; transformers
        # evaluates a "steps" run at its last step too, so without eval_steps we ask for a
        # period no run reaches: evaluated at the end only, as the TRL backend does.
        cfg["eval_strategy"] = "steps"
        cfg["eval_steps"] = hp.eval_steps or EVAL_AT_END_ONLY
    if isinstance(spec, SFTTrain):
        cfg["sample_packing"] = spec.packing
        cfg["pad_to_sequence_len"] = spec.packing
    elif isinstance(spec, DPOTrain):
        cfg |= {"rl": "dpo", "rl_beta": spec.beta}
    elif isinstance(spec, ORPOTrain):
        cfg |= {"rl": "orpo", "orpo_alpha": spec.beta, "remove_unused_columns": False}
    if resume is not None:
        cfg["resume_from_checkpoint"] = str(resume)
    if init_adapter is not None:
        cfg["lora_model_dir"] = str(init_adapter)  # warm start: continue this PEFT adapter
    if on_cpu:
        cfg |= CPU_OVERRIDES  # Triton LoRA kernels assert CUDA; bf16 "auto" picks fp16 on CPU
    check_keys(cfg)
    return cfg


def check_keys(cfg: dict[str, Any]) -> None:
    """Refuse keys Axolotl would silently drop (top level and dataset entries)."""
    unknown = sorted(set(cfg) - TOP_KEYS)
    for section in ("datasets", "test_datasets"):
        for entry in cfg.get(section, []):
            unknown += [f"{section}[].{k}" for k in sorted(set(entry) - DATASET_KEYS)]
    if unknown:
        raise AxolotlError(f"Axolotl config has keys it would silently ignore: {unknown}")
