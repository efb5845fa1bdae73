"""feinschliff: production feedback -> LoRA adapters -> evaluation gate -> vLLM multi-LoRA."""

__version__ = "0.1.0"
