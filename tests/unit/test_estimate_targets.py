"""LoRA target names and config.json fields the estimate read wrong (review of the families
extension): `run`'s fit check refused target modules the model has (Phi-2's dense, Llama's
embed_tokens) while training accepted them; a multimodal wrapper's vision tower layers of the
named targets went uncounted; fields a config.json leaves to its transformers config class
(Gemma 3's heads and head_dim, SmolLM3's tied embeddings) were refused or read wrong."""

from __future__ import annotations

import json
from pathlib import Path

import peft
import pytest
import torch
import transformers as tf

from feinschliff import estimate as est
from feinschliff.recipe_loader import load_recipe

ROOT = Path(__file__).resolve().parents[2]
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4}
TINY |= {"vocab_size": 256, "num_hidden_layers": 2}


def _trainable(config, targets) -> int:
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(config)
    lora = peft.get_peft_model(
        model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, task_type="CAUSAL_LM")
    )
    return sum(p.numel() for p in lora.parameters() if p.requires_grad)


def _folder(tmp_path: Path, config: dict) -> Path:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps(config))
    return tmp_path / "model"


def _meta_params(config: dict) -> int:
    """What transformers builds from the config.json (on the meta device: no memory)."""
    with torch.device("meta"):
        model = tf.AutoModelForCausalLM.from_config(tf.AutoConfig.for_model(**config))
    return sum(p.numel() for p in model.parameters())


def test_targets_of_a_layout_the_estimate_does_not_know_are_counted_where_known(tmp_path):
    """Phi-2 (model_type phi: q/k/v_proj, dense, fc1, fc2): [q_proj, v_proj, dense] was refused
    by `run`'s fit check with a Llama layer list; training accepts it (the model has them)."""
    phi2 = tf.PhiConfig(**TINY)
    shape = est.ModelShape.from_config(json.loads(phi2.to_json_string()))
    targets = ["q_proj", "v_proj", "dense"]
    assert est.lora_params(shape, 4, targets) == _trainable(phi2, ["q_proj", "v_proj"])
    notes = est.target_notes(shape, targets)
    assert any("'dense' not counted" in n for n in notes), notes
    folder = _folder(tmp_path, json.loads(phi2.to_json_string()))
    recipe = load_recipe(
        ROOT / "recipes" / "demo-de.yaml",
        [
            f"base_model.name={folder}",
            "train.gpu=rtx-4090",
            "train.lora.target_modules=[q_proj,v_proj,dense]",
        ],
    )
    fit = est.check_training_fits(recipe)
    assert fit is not None and any("'dense' not counted" in a for a in fit.assumptions)
    # a layout it knows still refuses a name the model lacks, and lm_head everywhere
    with pytest.raises(est.EstimateError, match="qkv_proj"):
        est.lora_params(est.ModelShape.from_config({**TINY, "model_type": "phi3"}), 4, ["q_proj"])
    with pytest.raises(est.EstimateError, match="output layer"):
        est.lora_params(shape, 4, ["dense", "lm_head"])


@pytest.mark.parametrize("tied", [False, True])
def test_embed_tokens_is_an_embedding_peft_adapts(tied):
    llama = tf.LlamaConfig(**TINY, num_key_value_heads=2, tie_word_embeddings=tied)
    shape = est.ModelShape.from_config(json.loads(llama.to_json_string()))
    targets = ["q_proj", "v_proj", "embed_tokens"]
    assert est.lora_params(shape, 4, targets) == _trainable(llama, targets)
    assert any("embed_tokens" in n for n in est.target_notes(shape, targets))


def test_explicit_targets_adapt_the_vision_tower_layers_of_those_names():
    """Gemma 3 wrapper: PEFT adapts SigLIP's q/k/v_proj (and fc1, fc2) too, not just the
    decoder's; the estimate counted the decoder alone (4352 against PEFT's 6400)."""
    vision = {**TINY, "num_hidden_layers": 2, "image_size": 28, "patch_size": 14}
    config = tf.Gemma3Config(
        text_config={**TINY, "num_key_value_heads": 2, "head_dim": 48},
        vision_config={**vision, "vision_use_head": False},
        mm_tokens_per_image=4,
    )
    shape = est.ModelShape.from_config(json.loads(config.to_json_string()))
    for targets in (["q_proj", "v_proj"], ["o_proj"], ["fc1", "down_proj"], "all-linear"):
        assert est.lora_params(shape, 4, targets) == _trainable(config, targets), targets
    assert any(
        "vision tower's q_proj, v_proj" in n for n in est.target_notes(shape, ["q_proj", "v_proj"])
    )
    with pytest.raises(est.EstimateError, match="vision tower's: q_proj"):
        est.lora_params(shape, 4, ["dense"])  # neither the decoder nor SigLIP has one


def test_fields_left_to_the_config_class_are_read_as_transformers_fills_them(tmp_path):
    """A gemma3_text config.json without head_dim, KV heads or vocab size: the estimate read
    head_dim as hidden / heads (320 where transformers has 256) or refused the model."""
    text = {"model_type": "gemma3_text", "hidden_size": 128, "intermediate_size": 256}
    text |= {"num_hidden_layers": 2, "num_attention_heads": 2, "vocab_size": 512}
    shape = est.model_shape(str(_folder(tmp_path, text)))
    assert (shape.head_dim, shape.kv_heads) == (256, 4)  # Gemma3TextConfig's defaults
    assert shape.n_params == _meta_params(text)


def test_a_wrapper_whose_text_config_leaves_heads_and_vocab_to_the_class(tmp_path):
    cfg = {"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"]}
    cfg["text_config"] = {"model_type": "gemma3_text", "hidden_size": 128}
    cfg["text_config"] |= {"intermediate_size": 256, "num_hidden_layers": 2}
    cfg["vision_config"] = {"model_type": "siglip_vision_model", "hidden_size": 64}
    cfg["vision_config"] |= {"intermediate_size": 128, "num_hidden_layers": 2}
    shape = est.model_shape(str(_folder(tmp_path, cfg)))
    assert (shape.heads, shape.kv_heads, shape.head_dim) == (8, 4, 256)
    assert shape.vocab == tf.Gemma3TextConfig().vocab_size and shape.tied_embeddings
    # said, not silent: a size taken from a class default may not be the model's
    (note,) = [n for n in shape.describe_deviations() if "config.json has no" in n]
    assert "num_attention_heads, vocab_size, num_key_value_heads, head_dim: taken as" in note


def test_tied_embeddings_default_of_the_config_class(tmp_path):
    """SmolLM3's config class ties by default: a config.json without the field is tied."""
    cfg = {"model_type": "smollm3", **TINY, "num_key_value_heads": 2, "pad_token_id": 0}
    shape = est.model_shape(str(_folder(tmp_path, cfg)))
    assert shape.tied_embeddings and shape.n_params == _meta_params(cfg)


def test_a_model_type_transformers_does_not_know_is_read_as_written(tmp_path):
    cfg = {"model_type": "my_custom_decoder", **TINY, "num_key_value_heads": 2}
    shape = est.model_shape(str(_folder(tmp_path, cfg)))
    assert (shape.model_type, shape.kv_heads, shape.tied_embeddings) == (
        cfg["model_type"],
        2,
        False,
    )
    assert est.resolve_config(cfg) == cfg


def test_pixtral_tower_layers_of_the_named_targets_are_counted():
    """Mistral 3's Pixtral tower has a Llama-like layer (q/k/v/o_proj, gated MLP)."""
    vision = {**TINY, "num_hidden_layers": 2, "image_size": 28, "patch_size": 14, "head_dim": 16}
    config = tf.Mistral3Config(
        text_config={**TINY, "model_type": "mistral", "num_key_value_heads": 2, "head_dim": 32},
        vision_config=vision,
        spatial_merge_size=2,
    )
    shape = est.ModelShape.from_config(json.loads(config.to_json_string()))
    for targets in (["q_proj", "v_proj"], ["gate_proj"]):
        torch.manual_seed(0)
        model = tf.Mistral3ForConditionalGeneration(config)
        lora = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=targets))
        trainable = sum(p.numel() for p in lora.parameters() if p.requires_grad)
        assert est.lora_params(shape, 4, targets) == trainable, targets
