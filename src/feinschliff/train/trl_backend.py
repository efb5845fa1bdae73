"""TRL backend: SFT, DPO and ORPO with a LoRA adapter, resumable from checkpoints.

Turns the typed ``train`` spec into TRL config objects in explicit code (no kwargs passthrough),
trains, and saves the adapter in PEFT format. Checkpoints land in ``<out>/checkpoints``; a
checkpoint counts only once its ``.complete`` marker exists (written after HF's save returns),
so a run killed mid-save resumes from the previous one.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, TrainerCallback

from feinschliff.recipe import DPOTrain, ORPOTrain, Recipe, SFTTrain

log = logging.getLogger(__name__)
CKPT_MARKER = ".complete"


class _MarkCheckpoints(TrainerCallback):
    """Write a completeness marker into each checkpoint after the Trainer saved it."""

    def on_save(self, args, state, control, **kwargs):  # noqa: D102
        ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if ckpt.is_dir():
            (ckpt / CKPT_MARKER).write_text(str(state.global_step))


class _Progress(TrainerCallback):
    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: D102
        if logs and "loss" in logs:
            log.info("step %d/%d loss %.4f", state.global_step, state.max_steps, logs["loss"])


def last_complete_checkpoint(ckpt_dir: Path) -> Path | None:
    done = [p for p in ckpt_dir.glob("checkpoint-*") if (p / CKPT_MARKER).exists()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


def _common_args(recipe: Recipe, ckpt_dir: Path) -> dict[str, Any]:
    hp = recipe.train.hyperparameters
    on_cpu = not torch.cuda.is_available()
    return {
        "output_dir": str(ckpt_dir),
        "learning_rate": hp.learning_rate,
        "max_steps": hp.max_steps,
        "num_train_epochs": hp.epochs,
        "per_device_train_batch_size": hp.batch_size,
        "gradient_accumulation_steps": hp.gradient_accumulation_steps,
        "warmup_steps": hp.warmup_ratio,  # transformers 5: a float < 1 is a ratio
        "lr_scheduler_type": hp.lr_scheduler,
        "gradient_checkpointing": hp.gradient_checkpointing,
        "seed": hp.seed,
        "logging_steps": hp.logging_steps,
        "save_strategy": "steps",
        "save_steps": hp.save_steps,
        "save_total_limit": 2,
        "report_to": "none",
        "use_cpu": on_cpu,
        "bf16": recipe.base_model.dtype == "bfloat16" and not on_cpu,
        "fp16": recipe.base_model.dtype == "float16" and not on_cpu,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }


def _lora_config(recipe: Recipe):
    from peft import LoraConfig

    lora = recipe.train.lora
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        bias="none",  # vLLM refuses adapters with bias (FACTS 10.3.4)
        task_type="CAUSAL_LM",
    )


def _load_json(path: Path, columns: list[str]):
    from datasets import load_dataset

    ds = load_dataset("json", data_files=str(path), split="train")
    return ds.select_columns(columns)


def train_trl(recipe: Recipe, model_path: str, data_dir: Path, out: Path) -> dict[str, Any]:
    """Train and save ``out/adapter``; returns raw metrics for ``metrics.json``."""
    spec = recipe.train
    dtype = getattr(torch, recipe.base_model.dtype)
    tokenizer = AutoTokenizer.from_pretrained(model_path, revision=recipe.base_model.revision)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        model_path, dtype=dtype, revision=recipe.base_model.revision
    )
    ckpt_dir = out / "checkpoints"
    args = _common_args(recipe, ckpt_dir)
    hp = spec.hyperparameters
    if isinstance(spec, SFTTrain):
        from trl import SFTConfig, SFTTrainer

        config = SFTConfig(**args, max_length=hp.max_length, include_num_input_tokens_seen="all")
        dataset = _load_json(data_dir / "sft.jsonl", ["messages"])
        trainer_cls = SFTTrainer
    elif isinstance(spec, DPOTrain):
        from trl import DPOConfig, DPOTrainer

        config = DPOConfig(**args, beta=spec.beta, max_length=hp.max_length)
        dataset = _load_json(data_dir / "preference.jsonl", ["prompt", "chosen", "rejected"])
        trainer_cls = DPOTrainer
    elif isinstance(spec, ORPOTrain):
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        config = ORPOConfig(**args, beta=spec.beta, max_length=hp.max_length)
        dataset = _load_json(data_dir / "preference.jsonl", ["prompt", "chosen", "rejected"])
        trainer_cls = ORPOTrainer
    else:  # pragma: no cover - the recipe union is exhaustive
        raise TypeError(f"unsupported method {spec.method}")
    if len(dataset) == 0:
        raise ValueError(f"no training rows for method {spec.method} in {data_dir}")

    trainer = trainer_cls(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=_lora_config(recipe),
        callbacks=[_MarkCheckpoints(), _Progress()],
    )
    trainer.remove_callback(PrinterCallback)  # raw log dicts on stdout; _Progress logs instead
    resume = last_complete_checkpoint(ckpt_dir)
    if resume is not None:
        log.info("resuming from %s", resume)
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    wall = time.perf_counter() - start
    trainer.model.save_pretrained(str(out / "adapter"), safe_serialization=True)
    tokens = int(getattr(trainer.state, "num_input_tokens_seen", 0) or 0)
    return {
        "method": spec.method,
        "backend": "trl",
        "global_step": trainer.state.global_step,
        "resumed_from": resume.name if resume else None,
        "loss_curve": [
            {"step": e["step"], "loss": e["loss"]} for e in trainer.state.log_history if "loss" in e
        ],
        "train_rows": len(dataset),
        "trained_tokens": tokens,
        "wall_seconds": round(wall, 2),
        "tokens_per_second": round(tokens / wall, 2) if wall > 0 and tokens else None,
        "trainable_parameters": sum(
            p.numel() for p in trainer.model.parameters() if p.requires_grad
        ),
    }
