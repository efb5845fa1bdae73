"""Recipe section `train`: method, backend, LoRA, hyperparameters, launcher, warm start.

Everything a recipe can ask for here must produce an adapter the serving vLLM accepts:
a rank not above ``register.max_lora_rank`` (checked by ``Recipe``), no DoRA, ``bias: none``,
no ``modules_to_save``. Those three are fields only so that a recipe asking for them gets an
error that says why. Likewise every accepted field takes effect: combinations a backend or
launcher would silently ignore are refused here.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from feinschliff.specs.common import Count, Number, Strict

# --------------------------------------------------------------------------- train

# accelerate configs that shard weights, gradients and optimizer states over the processes
SHARDED_CONFIGS = ("fsdp", "deepspeed-zero3")


class LoraSpec(Strict):
    r: Count = Field(
        16,
        gt=0,
        description="LoRA rank: any positive integer up to register.max_lora_rank (vLLM pads "
        "lower ranks to its --max-lora-rank and refuses only higher ones).",
    )
    alpha: Count = Field(32, gt=0, description="LoRA alpha (scaling = alpha / r).")
    dropout: Number = Field(
        0.05,
        ge=0.0,
        lt=1.0,
        description="Dropout on the LoRA path (SFT). DPO, ORPO and KTO train without dropout "
        "(TRL disables it, on both backends); the value is still recorded in the adapter's "
        "config and must match the production adapter's for init_from: production.",
    )
    target_modules: Literal["all-linear"] | list[str] = Field(
        "all-linear",
        description="Modules to adapt: 'all-linear' or a list of the model's module names such "
        "as [q_proj, v_proj] (training refuses a name the model does not have).",
    )
    use_dora: bool = Field(False, description="Must stay false: vLLM cannot serve DoRA adapters.")
    bias: Literal["none", "all", "lora_only"] = Field(
        "none", description="Must stay 'none': vLLM refuses adapters that train biases."
    )
    modules_to_save: list[str] | None = Field(
        None,
        description="Must stay empty: vLLM refuses adapters with fully trained extra modules "
        "(e.g. embed_tokens, lm_head).",
    )

    @field_validator("target_modules")
    @classmethod
    def _some_modules(cls, modules: str | list[str]) -> str | list[str]:
        # PEFT refuses an empty list only when training starts, minutes later
        if not modules:
            raise ValueError("an empty list adapts nothing: name modules, or use all-linear")
        return modules

    @field_validator("use_dora")
    @classmethod
    def _no_dora(cls, use_dora: bool) -> bool:
        if use_dora:
            raise ValueError("DoRA adapters cannot be served: vLLM does not support DoRA")
        return use_dora

    @field_validator("bias")
    @classmethod
    def _no_bias(cls, bias: str) -> str:
        if bias != "none":
            raise ValueError(
                f"bias {bias!r} cannot be served: vLLM refuses adapters with trained biases "
                "('Adapter bias is not supported'); use 'none'"
            )
        return bias

    @field_validator("modules_to_save")
    @classmethod
    def _no_modules_to_save(cls, modules: list[str] | None) -> list[str] | None:
        if modules:
            raise ValueError(
                f"modules_to_save {modules} cannot be served: vLLM loads only LoRA matrices, "
                "not fully trained copies of modules; leave it empty"
            )
        return None


class Hyperparameters(Strict):
    learning_rate: Number = Field(2e-4, gt=0, description="Peak learning rate.")
    max_steps: Count = Field(
        -1,
        ge=-1,
        description="Stop after this many optimizer steps (>= 1); -1 trains `epochs` epochs.",
    )
    epochs: Number = Field(
        1.0, gt=0, description="Epochs over the training data (if max_steps is -1)."
    )
    batch_size: Count = Field(4, ge=1, description="Micro-batch size per device.")
    gradient_accumulation_steps: Count = Field(
        1, ge=1, description="Micro-batches per optimizer step."
    )
    max_length: Count = Field(512, ge=16, description="Maximum tokens per training example.")
    warmup_ratio: Number = Field(0.0, ge=0.0, lt=1.0, description="Share of steps for LR warm-up.")
    lr_scheduler: Literal["linear", "cosine", "constant"] = Field(
        "linear",
        description="Learning-rate schedule after the warm-up (warmup_ratio > 0 warms up first, "
        "also for 'constant').",
    )
    gradient_checkpointing: bool = Field(
        False, description="Trade ~30 % more compute for less activation memory."
    )
    seed: Count = Field(42, description="Training seed.")
    logging_steps: Count = Field(1, ge=1, description="Record the loss every N steps.")
    save_steps: Count = Field(50, ge=1, description="Write a resumable checkpoint every N steps.")
    eval_fraction: Number = Field(
        0.0,
        ge=0.0,
        lt=0.5,
        description="Share of the training rows held out to report an eval loss (0 = no eval split).",
    )
    eval_steps: Count | None = Field(
        None,
        ge=1,
        description="Compute the eval loss every N steps (needs eval_fraction > 0); default: at "
        "the end only.",
    )

    @field_validator("max_steps")
    @classmethod
    def _steps_or_epochs(cls, max_steps: int) -> int:
        if max_steps == 0:
            raise ValueError("max_steps 0 trains nothing: use >= 1, or -1 to train `epochs`")
        return max_steps

    @field_validator("eval_steps")
    @classmethod
    def _eval_steps_need_a_split(cls, eval_steps: int | None, info: ValidationInfo) -> int | None:
        if eval_steps is not None and not info.data.get("eval_fraction"):
            raise ValueError(
                "evaluates nothing without an eval split: set "
                "train.hyperparameters.eval_fraction > 0, or remove eval_steps"
            )
        return eval_steps


class _TrainBase(Strict):
    backend: Literal["trl", "axolotl"] = Field(
        "trl", description="Training engine: TRL in-process, or Axolotl in its own venv."
    )
    lora: LoraSpec = Field(default_factory=LoraSpec, description="LoRA adapter settings.")
    hyperparameters: Hyperparameters = Field(
        default_factory=Hyperparameters, description="Optimisation settings."
    )
    qlora: bool = Field(
        False,
        description="Load the base model in 4-bit NF4 (bitsandbytes) under the LoRA: much less "
        "weight memory. Needs a CUDA GPU.",
    )
    chat_template: Literal["model", "chatml"] = Field(
        "model",
        description="Chat template: the model's own ('model') or standard ChatML ('chatml', for "
        "base models without one).",
    )
    init_from: Literal["base", "production"] = Field(
        "base",
        description="'base': a fresh LoRA. 'production': continue training the adapter the "
        "registry currently aliases `production` (falls back to a fresh LoRA if there is none).",
    )
    replay_fraction: Number = Field(
        0.0,
        ge=0.0,
        le=0.9,
        description="With init_from: production, the share of training rows replayed from the "
        "data the production adapter was trained on (against forgetting).",
    )
    launcher: Literal["python", "accelerate"] = Field(
        "python",
        description="'python': train in this process. 'accelerate': `accelerate launch` with "
        "`accelerate_config` over `num_processes` processes (multi-GPU).",
    )
    accelerate_config: Literal["ddp", "fsdp", "deepspeed-zero3"] = Field(
        "ddp",
        description="Launcher config from configs/accelerate/ (launcher: accelerate). fsdp and "
        "deepspeed-zero3 shard weights, gradients and optimizer states over num_processes >= 2.",
    )
    num_processes: Count = Field(
        1,
        ge=1,
        description="Training processes (one per GPU) with launcher: accelerate; 1 trains in "
        "this process (no accelerate launch). launcher: python needs 1.",
    )
    gpu: str | None = Field(
        None,
        description="Target GPU from configs/hardware.yaml (e.g. rtx-4090): `run` refuses a "
        "training whose memory estimate does not fit it.",
    )

    @field_validator("gpu")
    @classmethod
    def _known_gpu(cls, gpu: str | None) -> str | None:
        # the check `train`/`run` make (estimate.check_training_fits), here already; estimate
        # imports nothing heavy (yaml, pydantic), lazily: it imports this module
        if gpu is not None:
            from feinschliff.estimate import find_gpu

            find_gpu(gpu)
        return gpu

    @model_validator(mode="after")
    def _replay_needs_warm_start(self) -> _TrainBase:
        if self.replay_fraction > 0 and self.init_from != "production":
            raise ValueError("replay_fraction needs init_from: production (replay of what?)")
        if self.backend == "axolotl" and self.launcher != "python":
            raise ValueError("launcher: accelerate is for backend trl; Axolotl launches itself")
        return self

    @model_validator(mode="after")
    def _launch_is_used_as_written(self) -> _TrainBase:
        # One process never goes through `accelerate launch` (stage.py trains in-process), so
        # these settings would be dropped without a word; refusing says so before a GPU is hired.
        if self.backend == "axolotl" and self.num_processes > 1:
            raise ValueError(
                "num_processes > 1 is for backend trl: Axolotl trains in one process here "
                "(axolotl train --launcher python)"
            )
        if self.launcher == "python" and self.num_processes > 1:
            raise ValueError(
                f"num_processes: {self.num_processes} needs launcher: accelerate "
                "(launcher: python trains in one process)"
            )
        if self.accelerate_config in SHARDED_CONFIGS and self.backend == "axolotl":
            raise ValueError(
                f"accelerate_config: {self.accelerate_config} is for backend trl: Axolotl "
                "trains in one process here (use backend: trl to shard the model)"
            )
        if self.accelerate_config in SHARDED_CONFIGS and self.num_processes == 1:
            raise ValueError(
                f"accelerate_config: {self.accelerate_config} shards the model over processes, "
                "but num_processes is 1: it would train unsharded in this process. Set "
                "launcher: accelerate with num_processes >= 2, or accelerate_config: ddp"
            )
        return self


class SFTTrain(_TrainBase):
    method: Literal["sft"] = Field(description="Supervised fine-tuning on `sft.jsonl`.")
    packing: bool = Field(
        False,
        description="Pack several conversations into each max_length row (best-fit, "
        "padding-free): fewer padding tokens, more memory per step.",
    )
    padding_free: bool = Field(
        False,
        description="Concatenate each batch into one row without padding (TRL backend only); "
        "examples stay apart through position ids that restart per example, and each is "
        "truncated to max_length first. Saves time mainly with FlashAttention on a GPU.",
    )
    assistant_only_loss: bool = Field(
        False,
        description="Compute the loss only on assistant turns (needs a chat template with "
        "{% generation %} markers; feinschliff ships one for ChatML models).",
    )

    @model_validator(mode="after")
    def _padding_free_runs_on_trl(self) -> SFTTrain:
        if self.padding_free and self.backend != "trl":
            raise ValueError(
                "padding_free is a TRL backend option (Axolotl would ignore it); use packing: "
                "true with backend axolotl, or backend: trl"
            )
        return self


class DPOTrain(_TrainBase):
    method: Literal["dpo"] = Field(
        description="Direct preference optimisation on `preference.jsonl`."
    )
    beta: Number = Field(0.1, gt=0, description="DPO temperature: how far the policy may drift.")


class ORPOTrain(_TrainBase):
    method: Literal["orpo"] = Field(
        description="Odds-ratio preference optimisation (no reference model)."
    )
    beta: Number = Field(0.1, gt=0, description="Weight of the odds-ratio term (ORPO lambda).")


class KTOTrain(_TrainBase):
    method: Literal["kto"] = Field(
        description="Kahneman-Tversky optimisation on unpaired good/bad answers (`kto.jsonl`, "
        "or derived from `preference.jsonl`)."
    )
    beta: Number = Field(0.1, gt=0, description="KTO temperature: how far the policy may drift.")
    desirable_weight: Number = Field(
        1.0, gt=0, description="Loss weight of good answers (raise it when they are rarer)."
    )
    undesirable_weight: Number = Field(1.0, gt=0, description="Loss weight of bad answers.")

    @model_validator(mode="after")
    def _kto_runs_on_trl(self) -> KTOTrain:
        if self.backend != "trl":
            raise ValueError("method kto is trained by backend trl only (not axolotl)")
        if self.hyperparameters.batch_size < 2:
            raise ValueError("KTO needs batch_size >= 2 (it estimates its KL term within a batch)")
        return self


TrainSpec = Annotated[SFTTrain | DPOTrain | ORPOTrain | KTOTrain, Field(discriminator="method")]
