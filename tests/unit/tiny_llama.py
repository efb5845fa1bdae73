"""A word-level tokenizer and a one-layer Llama on disk (kilobytes; a training step or a
forward pass takes well under a second), for unit tests of code that loads real models."""

from __future__ import annotations

from pathlib import Path


def make_tiny_llama(
    path: Path,
    words: list[str],
    *,
    eos: str | None = "<|im_end|>",
    chat_template: str | None = None,
) -> Path:
    """Save the tokenizer (``words`` are its vocabulary, split at whitespace) and a randomly
    initialised one-layer Llama (seeded) into ``path``."""
    import torch
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tk = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, "[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token=eos)
    if chat_template is not None:
        tok.chat_template = chat_template
    tok.save_pretrained(path)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(words),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def make_tiny_sft_ingest(path: Path) -> Path:
    """A finished ingest output of four identical short SFT rows: enough for a 1-2 step training
    of ``make_tiny_llama`` in the train-stage tests."""
    import json

    from feinschliff.artifacts import mark_complete

    path.mkdir(parents=True)
    msgs = [
        {"role": "user", "content": "Frage Frage"},
        {"role": "assistant", "content": "Antwort Antwort"},
    ]
    (path / "sft.jsonl").write_text((json.dumps({"messages": msgs}) + "\n") * 4)
    mark_complete(path, stage="ingest")
    return path


def train_until_the_backend(tmp_path: Path, words: list[str], recipe_path: Path, sets: list[str]):
    """``run_train`` on ``make_tiny_llama`` and ``make_tiny_sft_ingest`` up to the backend (the
    caller patches ``stage._run_backend`` to record what it sees and raise ``TrainError("stop
    here")``): what the stage does before training, without training."""
    import pytest

    from feinschliff.artifacts import DatasetRef, completed_hash
    from feinschliff.recipe_loader import load_recipe
    from feinschliff.train import stage

    model = make_tiny_llama(tmp_path / "model", words)
    recipe = load_recipe(recipe_path, [f"base_model.name={model}", *sets])
    data = make_tiny_sft_ingest(tmp_path / "data")
    with pytest.raises(stage.TrainError, match="stop here"):
        stage.run_train(
            recipe, DatasetRef(path=str(data), sha256=completed_hash(data)), tmp_path / "o"
        )
