"""TRL backend: SFT, DPO, ORPO and KTO with a (Q)LoRA adapter, resumable from checkpoints.

Turns the typed ``train`` spec into TRL config objects in explicit code (no kwargs passthrough),
trains on the JSONL rows the stage prepared, and saves the adapter in PEFT format. Checkpoints
land in ``<out>/checkpoints``; a checkpoint counts only once its ``.complete`` marker exists
(written after HF's save returns), so a run killed mid-save resumes from the previous one
(``trl_checkpoints``). Runs the same in one process and in each process of ``accelerate
launch`` (the main process saves). Rows max_length leaves nothing to train on are counted,
and a NaN adapter fails the run (``trl_rows``). It does not pick data files, check memory, or
write metrics.json: the stage does.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, TrainerCallback

from feinschliff.recipe import DPOTrain, KTOTrain, ORPOTrain, Recipe, SFTTrain
from feinschliff.specs.train import SHARDED_CONFIGS
from feinschliff.train.schedule import scheduler_type
from feinschliff.train.templates import CHAT_TEMPLATE_FILE, CHATML, apply_chat_template_choice
from feinschliff.train.trl_checkpoints import (
    CKPT_MARKER,  # noqa: F401 (still trl_backend.CKPT_MARKER)
    MarkCheckpoints,
    final_eval_loss,
    finish_from_checkpoint,
    last_complete_checkpoint,
    naming_disk_full,
    reached_max_steps,
    saving_checkpoints_named,
)
from feinschliff.train.trl_rows import check_adapter_finite, check_rows
from feinschliff.train.trl_sharding import kbit_device_map, save_adapter, trainable_parameters

log = logging.getLogger(__name__)


class QLoRAUnavailable(RuntimeError):
    """qlora: true where 4-bit bitsandbytes cannot run (no CUDA GPU, or no bitsandbytes)."""


class TrainerSetupError(RuntimeError):
    """TRL refused the training configuration while building its config or trainer."""


class _Progress(TrainerCallback):
    tokens_at_start = 0  # a resumed run restores the tokens seen before it; tokens/s excludes them

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: D102
        self.tokens_at_start = int(getattr(state, "num_input_tokens_seen", 0) or 0)

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: D102
        if not state.is_world_process_zero or not logs:
            return
        if "loss" in logs:
            log.info("step %d/%d loss %.4f", state.global_step, state.max_steps, logs["loss"])
        if "eval_loss" in logs:
            log.info("step %d eval loss %.4f", state.global_step, logs["eval_loss"])


def check_qlora_available(venv: Path | None = None) -> None:
    """Fail fast, before any model is loaded, when QLoRA cannot run here. ``venv``: where the
    training runs when that is another venv (Axolotl's); bitsandbytes must be there."""
    if not torch.cuda.is_available():
        raise QLoRAUnavailable(
            "train.qlora needs a CUDA GPU: bitsandbytes 4-bit (NF4) weights only run on GPU. "
            "Set qlora: false to train in the recipe's base_model.dtype on this machine."
        )
    if venv is not None:
        if not any(venv.glob("lib/python*/site-packages/bitsandbytes")):
            raise QLoRAUnavailable(
                f"train.qlora needs the bitsandbytes package in the Axolotl venv {venv} "
                "(add it to AXOLOTL_PINS, see scripts/install_axolotl.sh)"
            )
    elif importlib.util.find_spec("bitsandbytes") is None:
        raise QLoRAUnavailable(
            "train.qlora needs the bitsandbytes package (pip install bitsandbytes)"
        )


def _is_padding_free(spec) -> bool:
    """TRL flattens each batch into one unpadded row for packing (bfd) and padding_free."""
    return isinstance(spec, SFTTrain) and (spec.packing or spec.padding_free)


def set_pad_token(tokenizer, *, padding_free: bool) -> None:
    """A pad token for the collators; distinct from EOS for padding-free batches.

    Padded batches count their real tokens by attention mask. Padding-free batches have none,
    so HF counts ``input_ids != pad_token_id``: with pad = EOS (SmolLM2 ships ``<|im_end|>`` as
    both) that drops every real end-of-turn token (~3 per conversation), and tokens/s of a
    packed run would not count the same thing as an unpacked one. The unknown token pads
    nothing there (no padding inside a flattened row), so the loss is unchanged.
    """
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    unk = tokenizer.unk_token
    if (
        padding_free
        and tokenizer.pad_token == tokenizer.eos_token
        and unk
        and unk != tokenizer.eos_token
    ):
        tokenizer.pad_token = unk


def _common_args(recipe: Recipe, ckpt_dir: Path, has_eval: bool) -> dict[str, Any]:
    hp = recipe.train.hyperparameters
    on_cpu = not torch.cuda.is_available()
    return {
        "output_dir": str(ckpt_dir),
        "learning_rate": hp.learning_rate,
        "max_steps": hp.max_steps,
        "num_train_epochs": hp.epochs,
        "per_device_train_batch_size": hp.batch_size,
        "per_device_eval_batch_size": hp.batch_size,
        "gradient_accumulation_steps": hp.gradient_accumulation_steps,
        "warmup_steps": hp.warmup_ratio,  # transformers 5: a float < 1 is a ratio
        "lr_scheduler_type": scheduler_type(hp.lr_scheduler, hp.warmup_ratio),
        "activation_checkpointing": hp.gradient_checkpointing,
        # Non-reentrant checkpointing needs no input grads: works for fresh and warm-started LoRA.
        "activation_checkpointing_kwargs": {"use_reentrant": False},
        "seed": hp.seed,
        "logging_steps": hp.logging_steps,
        # a NaN loss logged as nan, not 0.0 (transformers' default filter hid a diverged run)
        "logging_nan_inf_filter": False,
        "save_strategy": "steps",
        "save_steps": hp.save_steps,
        "save_total_limit": 2,
        "eval_strategy": "steps" if has_eval and hp.eval_steps else "no",
        "eval_steps": hp.eval_steps,
        "report_to": "none",
        "use_cpu": on_cpu,
        "bf16": recipe.base_model.dtype == "bfloat16" and not on_cpu,
        "fp16": recipe.base_model.dtype == "float16" and not on_cpu,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "include_num_input_tokens_seen": "non_padding",
        "ddp_find_unused_parameters": False,
    }


def lora_config(recipe: Recipe):
    """The PEFT config; the spec validators already refused what vLLM cannot serve."""
    from peft import LoraConfig

    lora = recipe.train.lora
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        bias=lora.bias,
        use_dora=lora.use_dora,
        modules_to_save=lora.modules_to_save,
        task_type="CAUSAL_LM",
    )


def _trainer_setup(recipe: Recipe, args: dict[str, Any]):
    """(config, trainer class) for the recipe's method."""
    spec = recipe.train
    hp = spec.hyperparameters
    if isinstance(spec, SFTTrain):
        from trl import SFTConfig, SFTTrainer

        config = SFTConfig(
            **args,
            # TRL 1.16 refuses max_length with padding_free and no packing (it would not
            # enforce it); truncate_prepared_rows applies it after TRL tokenized the rows.
            max_length=None if _truncates_itself(spec) else hp.max_length,
            packing=spec.packing,
            padding_free=spec.padding_free,
            assistant_only_loss=spec.assistant_only_loss,
        )
        return config, SFTTrainer
    if isinstance(spec, DPOTrain):
        from trl import DPOConfig, DPOTrainer

        return DPOConfig(**args, beta=spec.beta, max_length=hp.max_length), DPOTrainer
    if isinstance(spec, ORPOTrain):
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        return ORPOConfig(**args, beta=spec.beta, max_length=hp.max_length), _counting(ORPOTrainer)
    if isinstance(spec, KTOTrain):
        from trl import KTOConfig, KTOTrainer

        config = KTOConfig(
            **args,
            beta=spec.beta,
            desirable_weight=spec.desirable_weight,
            undesirable_weight=spec.undesirable_weight,
            max_length=hp.max_length,
        )
        return config, KTOTrainer
    raise TypeError(f"unsupported method {spec.method}")  # pragma: no cover


def _counting(trainer_cls):
    """``trainer_cls`` counting the tokens of chosen/rejected batches, which have no
    ``input_ids`` (ORPO's: ``prompt_``/``chosen_``/``rejected_input_ids``): transformers counts
    nothing there, and trained_tokens would read 0.

    Counted as DPO's batches are: the non-padding tokens of prompt + chosen and of prompt +
    rejected (the prompt twice), summed over processes into ``num_input_tokens_seen``, which a
    checkpoint saves and a resume restores."""

    class CountingTrainer(trainer_cls):
        def _track_num_input_tokens(self, inputs):
            if "input_ids" in inputs or "chosen_attention_mask" not in inputs:
                return super()._track_num_input_tokens(inputs)
            n = inputs["chosen_attention_mask"].sum() + inputs["rejected_attention_mask"].sum()
            n = torch.as_tensor(n, device=self.args.device, dtype=torch.int64)
            self.state.num_input_tokens_seen += self.accelerator.gather(n).sum().item()

    CountingTrainer.__name__ = CountingTrainer.__qualname__ = trainer_cls.__name__
    return CountingTrainer


def _truncates_itself(spec) -> bool:
    return isinstance(spec, SFTTrain) and spec.padding_free and not spec.packing


def truncate_prepared_rows(trainer, max_length: int) -> None:
    """Cut TRL's tokenized rows to ``max_length`` as TRL itself does when given max_length
    (keep the start; drop rows left without a trained token)."""

    def cut(dataset):
        if dataset is None:
            return None
        dataset = dataset.map(
            lambda r: {"input_ids": r["input_ids"][:max_length], "labels": r["labels"][:max_length]}
        )
        return dataset.filter(lambda r: any(label != -100 for label in r["labels"]))

    trainer.train_dataset = cut(trainer.train_dataset)
    trainer.eval_dataset = cut(trainer.eval_dataset)


def build_trainer(recipe: Recipe, model, tokenizer, raw, ckpt_dir: Path, peft_config, callbacks):
    """The TRL trainer for the recipe, its rows tokenized; nothing trained yet.

    Raises:
        TrainerSetupError: TRL refused the configuration (its ValueError, with the message).
    """
    spec = recipe.train
    try:
        config, trainer_cls = _trainer_setup(recipe, _common_args(recipe, ckpt_dir, "eval" in raw))
        trainer = saving_checkpoints_named(trainer_cls)(
            model=model,
            args=config,
            train_dataset=raw["train"],
            eval_dataset=raw.get("eval"),
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=callbacks,
        )
    except ValueError as exc:
        raise TrainerSetupError(f"TRL refused train ({spec.method}, backend trl): {exc}") from exc
    if _truncates_itself(spec):
        truncate_prepared_rows(trainer, spec.hyperparameters.max_length)
    return trainer


def load_model(recipe: Recipe, model_path: str):
    dtype = getattr(torch, recipe.base_model.dtype)
    kwargs: dict[str, Any] = {"dtype": dtype, "revision": recipe.base_model.revision}
    if recipe.train.qlora:
        check_qlora_available()
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        if recipe.train.accelerate_config not in SHARDED_CONFIGS:
            kwargs["device_map"] = kbit_device_map()
    return AutoModelForCausalLM.from_pretrained(model_path, **kwargs)


def save_chat_template(template: str | None, adapter_dir: Path) -> None:
    """Keep the template the adapter was trained with next to it, as ``chat_template.jinja``
    (where transformers' ``save_pretrained`` puts it): evaluation and serving must render
    prompts the same way, and with ``chat_template: chatml`` that is not the base model's."""
    if isinstance(template, str) and template:
        (adapter_dir / CHAT_TEMPLATE_FILE).write_text(template, encoding="utf-8")


def train_trl(
    recipe: Recipe,
    model_path: str,
    files: dict[str, Path],
    out: Path,
    *,
    init_adapter: Path | None = None,
) -> dict[str, Any]:
    """Train and save ``out/adapter``; returns raw metrics for ``metrics.json``.

    Args:
        files: ``train`` (and optionally ``eval``) JSONL rows in the method's shape.
        init_adapter: a PEFT adapter folder to continue training (warm start) instead of a
            fresh LoRA.
    """
    from datasets import load_dataset

    spec = recipe.train
    tokenizer = AutoTokenizer.from_pretrained(model_path, revision=recipe.base_model.revision)
    set_pad_token(tokenizer, padding_free=_is_padding_free(spec))
    # What the trained text looked like; a marked training variant renders the same text.
    rendered = CHATML if spec.chat_template == "chatml" else tokenizer.chat_template
    template = apply_chat_template_choice(
        tokenizer,
        spec.chat_template,
        assistant_only_loss=isinstance(spec, SFTTrain) and spec.assistant_only_loss,
    )
    model = load_model(recipe, model_path)
    peft_config = lora_config(recipe)
    if init_adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(init_adapter), is_trainable=True)
        peft_config = None  # the production adapter's LoRA is trained further
    data_files = {k: str(v) for k, v in files.items()}
    raw = load_dataset("json", data_files=data_files)
    ckpt_dir = out / "checkpoints"
    progress, marks = _Progress(), MarkCheckpoints()
    trainer = build_trainer(recipe, model, tokenizer, raw, ckpt_dir, peft_config, [marks, progress])
    trainer.remove_callback(PrinterCallback)  # raw log dicts on stdout; _Progress logs instead
    rows = check_rows(recipe, trainer, raw, tokenizer)  # before training: raises if none left
    resume = last_complete_checkpoint(ckpt_dir)
    marks.start_clock(resume)  # wall/cpu seconds go on from the resumed checkpoint's
    start = time.perf_counter()
    if resume is not None and reached_max_steps(resume):
        log.info("%s is the final checkpoint: finishing without training on", resume)
        finish_from_checkpoint(trainer, resume)
        progress.tokens_at_start = int(trainer.state.num_input_tokens_seen or 0)
    else:
        if resume is not None:
            log.info("resuming from %s", resume)
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    run_wall = time.perf_counter() - start  # this run's own: tokens/s counts its tokens only
    wall, cpu = marks.elapsed()
    eval_loss = final_eval_loss(trainer) if rows.eval_rows else None
    with naming_disk_full(out / "adapter"):
        save_adapter(trainer, out / "adapter")
        if trainer.is_world_process_zero():
            save_chat_template(rendered, out / "adapter")
    if trainer.is_world_process_zero():
        check_adapter_finite(out / "adapter")
    tokens = int(getattr(trainer.state, "num_input_tokens_seen", 0) or 0)
    run_tokens = tokens - progress.tokens_at_start
    history = trainer.state.log_history
    return {
        "method": spec.method,
        "backend": "trl",
        "global_step": trainer.state.global_step,
        "resumed_from": resume.name if resume else None,
        "loss_curve": [{"step": e["step"], "loss": e["loss"]} for e in history if "loss" in e],
        "eval_curve": [
            {"step": e["step"], "loss": e["eval_loss"]} for e in history if "eval_loss" in e
        ],
        "eval_loss": eval_loss,
        **rows.metrics(),  # the rows trained and evaluated; those max_length dropped apart
        "trained_tokens": tokens,
        # with a resume: the time up to the resumed checkpoint included (``CKPT_TIME``)
        "wall_seconds": round(wall, 2),
        "tokens_per_second": (
            round(run_tokens / run_wall, 2) if run_wall > 0 and run_tokens else None
        ),
        # CPU seconds of this process while training: on a shared machine a steadier measure of
        # the work done than wall time (other processes' load does not add to it)
        "train_cpu_seconds": round(cpu, 2),
        "trainable_parameters": trainable_parameters(trainer.model),
        "chat_template": template or "model",
        "world_size": trainer.args.world_size,
        "is_main_process": trainer.is_world_process_zero(),
        "peak_gpu_memory_mb": (
            round(torch.cuda.max_memory_allocated() / 2**20, 1)
            if torch.cuda.is_available()
            else None
        ),
    }
