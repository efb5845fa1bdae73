"""The GPUs of ``configs/hardware.yaml``, this machine's memory, and the cost of a training:
GPU-hours and EUR to rent, and the rent-vs-buy break-even.

Assumptions of the cost estimate:

- Cost: FLOPs per trained token = 2N forward + 2N backward to the inputs (+ 2N weight gradients
  in full fine-tuning, + 2N recomputation with checkpointing, + 2N reference forward for DPO and
  KTO, + 4N for KTO's KL term: policy and reference forwards on the mismatched KL pairs, TRL's
  default ``loss_type="kto"``); GPU throughput = dense bf16 peak x MFU (default 31 %: measured
  on an H100 SXM for the 8B recipe's full-length 4 x 2048 batches, TRL 1.16, SDPA; the
  same card ran ORPO at 34 % and KTO at 38-40 % of the FLOPs counted here, so 31 % errs on the
  slow side for them). Short unpacked rows run far lower (4.5 % for the ~170-token support
  rows at micro-batch 4; 19.5 % packed): ``estimate --data`` says so when a dataset's rows are
  short.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import Field

from feinschliff.estimate.shape import EstimateError, model_shape
from feinschliff.specs.common import Strict

DEFAULT_MFU = 0.31  # H100 SXM, 8B SFT, 4 x 2048 tokens: 0.310 (bench/results/, session 9)


# --------------------------------------------------------------------------- hardware


class GPU(Strict):
    name: str = Field(description="Short name used by `--gpu` and `train.gpu`.")
    memory_gb: float = Field(gt=0, description="Memory of the card (all devices on it), GiB.")
    devices: int = Field(1, ge=1, description="GPUs on the card (A16: 4 x 16 GB).")
    price_eur: float = Field(gt=0, description="Purchase price per card, EUR.")
    rent_eur_per_hour: float = Field(gt=0, description="On-demand rent per card-hour, EUR.")
    bf16_tflops: float = Field(gt=0, description="Dense bf16 peak per card, TFLOPS.")

    @property
    def device_gib(self) -> float:
        return self.memory_gb / self.devices


def hardware_file() -> Path:
    from feinschliff.paths import project_root

    env = os.environ.get("FEINSCHLIFF_HARDWARE")
    return Path(env) if env else project_root() / "configs" / "hardware.yaml"


def load_gpus(path: Path | None = None) -> list[GPU]:
    data = yaml.safe_load((path or hardware_file()).read_text(encoding="utf-8"))
    return [GPU.model_validate(g) for g in data["gpus"]]


def find_gpu(name: str, gpus: list[GPU] | None = None) -> GPU:
    gpus = gpus if gpus is not None else load_gpus()
    for g in gpus:
        if g.name == name:
            return g
    raise EstimateError(
        f"unknown GPU {name!r}; configs/hardware.yaml lists {[g.name for g in gpus]}"
    )


def total_ram_bytes() -> float | None:
    """This machine's physical memory (``estimate --cpu`` compares with it); None if unknown."""
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):  # no sysconf (Windows) or no such name
        return None


# --------------------------------------------------------------------------- cost


def flops_per_token(
    n_params: int, *, full: bool, checkpointing: bool, reference: bool, kl: bool = False
) -> float:
    """2N per pass: forward, backward to the inputs, and the optional ones (``kl``: KTO's policy
    and reference forwards on the KL pairs, without gradient, so not recomputed)."""
    passes = 2 + (1 if full else 0) + (1 if checkpointing else 0) + (1 if reference else 0)
    passes += 2 if kl else 0
    return 2 * n_params * passes


def recipe_flops_per_token(recipe) -> float:
    """Model FLOPs per trained token of ``recipe``'s LoRA training (``flops_per_token``)."""
    spec = recipe.train
    return flops_per_token(
        model_shape(recipe.base_model.name).n_params,
        full=False,
        checkpointing=spec.hyperparameters.gradient_checkpointing,
        reference=spec.method in ("dpo", "kto"),
        # TRL 1.16's default loss_type "kto" (feinschliff sets no other) computes the KL term
        kl=spec.method == "kto",
    )


def training_cost(recipe, gpu: GPU, tokens: int, mfu: float = DEFAULT_MFU) -> dict[str, float]:
    """GPU-hours and EUR to train ``tokens`` tokens (all epochs) on one ``gpu``."""
    fpt = recipe_flops_per_token(recipe)
    hours = tokens * fpt / (gpu.bf16_tflops * 1e12 * mfu) / 3600
    return {
        "flops_per_token": fpt,
        "gpu_hours": hours,
        "rent_eur": hours * gpu.rent_eur_per_hour,
        "break_even_hours": gpu.price_eur / gpu.rent_eur_per_hour,
        "mfu": mfu,
    }
