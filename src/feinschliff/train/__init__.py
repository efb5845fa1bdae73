"""Training: a recipe's ``train`` section + an ingest DatasetRef -> a PEFT LoRA adapter."""

from feinschliff.train.stage import run_train

__all__ = ["run_train"]
