"""The estimate against transformers' own models of the families recipes point at: Qwen2 (q/k/v
biases), Qwen3 (q/k norms, head_dim), Mistral and Ministral, Gemma 1/2/3 (head_dim, four norms,
GELU, Gemma 2's eager attention), Phi-3 (fused qkv_proj and gate_up_proj), Llama 3.2 (tied).

Tiny random models built from transformers' config classes, as the config.json a save_pretrained
writes: parameters, PEFT's LoRA parameters, the KV cache and the tensors autograd saves per layer
(measured as in test_estimate_calibration.py)."""

from __future__ import annotations

import json

import peft
import pytest
import torch
import transformers as tf

from feinschliff import estimate as est

H, FF, HEADS, KV_HEADS, VOCAB, SEQ = 128, 352, 4, 2, 256, 64
COMMON = {
    "hidden_size": H,
    "intermediate_size": FF,
    "num_attention_heads": HEADS,
    "num_key_value_heads": KV_HEADS,
    "vocab_size": VOCAB,
}
# (config class, extra fields, an explicit target list the family has)
FAMILIES = {
    "llama32_tied": (tf.LlamaConfig, {"tie_word_embeddings": True}, ["q_proj", "v_proj"]),
    "qwen2": (tf.Qwen2Config, {"tie_word_embeddings": False}, ["q_proj", "v_proj"]),
    "qwen3": (tf.Qwen3Config, {"head_dim": 48}, ["q_proj", "k_proj", "down_proj"]),
    "mistral": (tf.MistralConfig, {"head_dim": 48, "sliding_window": 4096}, ["v_proj"]),
    "ministral": (tf.MinistralConfig, {"head_dim": 32}, ["o_proj", "up_proj"]),
    "gemma": (tf.GemmaConfig, {"head_dim": 48}, ["q_proj", "gate_proj"]),
    "gemma2": (tf.Gemma2Config, {"head_dim": 48, "sliding_window": 4096}, ["o_proj", "down_proj"]),
    "gemma3": (tf.Gemma3TextConfig, {"head_dim": 48, "sliding_window": 4096}, ["k_proj"]),
    "phi3": (tf.Phi3Config, {"pad_token_id": 0, "eos_token_id": 1}, ["qkv_proj", "down_proj"]),
}


def _model(family: str, layers: int, dtype=torch.float32):
    cls, extra, _ = FAMILIES[family]
    torch.manual_seed(0)
    config = cls(**COMMON, **extra, num_hidden_layers=layers)
    model = tf.AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model, json.loads(config.to_json_string())  # what config.json holds


def _lora(model, targets, dropout: float = 0.0):
    config = peft.LoraConfig(  # as train/trl_backend.py's lora_config builds it
        r=4, lora_alpha=8, lora_dropout=dropout, target_modules=targets, task_type="CAUSAL_LM"
    )
    return peft.get_peft_model(model, config)


def _saved_bytes(family: str, layers: int, dtype, targets, dropout: float, seq: int) -> int:
    model = _lora(_model(family, layers, dtype)[0], targets, dropout)
    model.train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    ids = torch.randint(0, VOCAB, (1, seq))
    with (
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype != torch.float32),
    ):
        model.base_model.model.model(input_ids=ids)
    return sum(seen.values())


def _layer_bytes(family, dtype, targets, dropout, seq=SEQ) -> float:
    """Saved bytes per token of one more decoder layer."""
    more = _saved_bytes(family, 3, dtype, targets, dropout, seq)
    return (more - _saved_bytes(family, 2, dtype, targets, dropout, seq)) / seq


@pytest.mark.parametrize("family", FAMILIES)
def test_parameters_lora_and_kv_cache_match_the_model(family):
    model, config = _model(family, 2)
    shape = est.ModelShape.from_config(config)
    assert shape.n_params == sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        cache = model(input_ids=torch.randint(0, VOCAB, (1, SEQ)), use_cache=True).past_key_values
    kv_values = sum(t.numel() for layer in cache.layers for t in (layer.keys, layer.values))
    assert est.kv_cache_bytes(shape.layers, shape.kv_width, 1, 2) == kv_values * 2 / SEQ
    for targets in ("all-linear", FAMILIES[family][2]):
        lora = _lora(_model(family, 2)[0], targets)
        trainable = sum(p.numel() for p in lora.parameters() if p.requires_grad)
        assert est.lora_params(shape, 4, targets) == trainable, targets


@pytest.mark.parametrize("family", ["qwen3", "gemma2", "gemma3", "phi3"])
def test_saved_activations_match_layer_activation_bytes(family):
    shape = est.ModelShape.from_config(_model(family, 2)[1])
    for dtype, bpv in ((torch.bfloat16, 2), (torch.float32, 4)):
        for dropout in (0.0, 0.1):
            for targets in ("all-linear", FAMILIES[family][2]):
                measured = _layer_bytes(family, dtype, targets, dropout)
                seq = {"seq_len": SEQ} if family == "gemma2" else {}  # eager attention only
                want = est.layer_activation_bytes(
                    shape, bpv, targets, dropout > 0, on_gpu=False, **seq
                )
                # the same tolerance as Llama's (r-wide LoRA intermediates, per-token scales)
                assert want == pytest.approx(measured, rel=0.07), (dtype, dropout, targets)


def test_gemma2_eager_attention_keeps_scores_per_sequence_position():
    """Gemma 2 has no SDPA: its eager attention keeps heads x seq scores per token, 8 bytes each
    (tanh output, fp32 softmax, its 16-bit cast), which the Llama count left out."""
    shape = est.ModelShape.from_config(_model("gemma2", 2)[1])
    assert shape.eager_softcap and any("eager attention" in n for n in shape.describe_deviations())
    grown = _layer_bytes("gemma2", torch.bfloat16, "all-linear", 0.0, seq=256) - _layer_bytes(
        "gemma2", torch.bfloat16, "all-linear", 0.0, seq=128
    )
    assert grown / (HEADS * 128) == pytest.approx(8, rel=0.1)
    per_seq = [
        est.layer_activation_bytes(shape, 2, "all-linear", False, seq_len=s) for s in (128, 256)
    ]
    assert per_seq[1] - per_seq[0] == HEADS * 128 * 8
    sdpa = est.ModelShape.from_config(_model("gemma3", 2)[1])
    assert est.layer_activation_bytes(sdpa, 2, "all-linear", False, seq_len=4096) == (
        est.layer_activation_bytes(sdpa, 2, "all-linear", False, seq_len=64)
    )


@pytest.mark.parametrize(
    ("family", "targets", "hint"),
    [("phi3", ["q_proj", "v_proj"], "qkv_proj"), ("qwen2", ["qkv_proj"], "q_proj")],
)
def test_target_names_the_model_lacks_are_refused_not_counted_as_nothing(family, targets, hint):
    shape = est.ModelShape.from_config(_model(family, 2)[1])
    with pytest.raises(est.EstimateError, match=hint):
        est.lora_params(shape, 16, targets)
    with pytest.raises(est.EstimateError, match="output layer"):
        est.lora_params(shape, 16, ["lm_head"])
    # PEFT's match: the last part of a dotted name
    assert est.lora_params(shape, 4, [f"self_attn.{hint}"]) > 0


def test_mixture_of_experts_and_incomplete_configs_are_refused():
    moe = json.loads(tf.MixtralConfig().to_json_string())
    with pytest.raises(est.EstimateError, match="mixture-of-experts"):
        est.ModelShape.from_config(moe)
    with pytest.raises(est.EstimateError, match="no intermediate_size"):
        est.ModelShape.from_config(
            {**COMMON, "num_hidden_layers": 2, "model_type": "falcon", "intermediate_size": None}
        )
    odd = est.ModelShape.from_config({**COMMON, "num_hidden_layers": 2, "model_type": "olmo2"})
    assert "'olmo2' is not one the estimate knows" in odd.describe_deviations()[0]


def test_multimodal_wrapper_is_read_from_text_config():
    """Gemma 3 from 4B up (and Mistral 3) is a multimodal wrapper: config.json nests the decoder
    in text_config (the estimate raised KeyError before); the vision tower is approximated."""
    _, text = _model("gemma3", 2)
    vision = {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2}
    vision["num_attention_heads"] = 4
    config = tf.Gemma3Config(
        text_config={**COMMON, "head_dim": 48, "num_hidden_layers": 2},
        vision_config={**vision, "image_size": 28, "patch_size": 14, "vision_use_head": False},
        mm_tokens_per_image=4,
    )
    model = tf.AutoModelForCausalLM.from_config(config)
    shape = est.ModelShape.from_config(json.loads(config.to_json_string()))
    assert shape.model_type == "gemma3_text" and shape.tied_embeddings
    decoder = est.ModelShape.from_config(text).n_params
    assert shape.n_params - decoder == shape.tower_params
    assert shape.n_params == pytest.approx(sum(p.numel() for p in model.parameters()), rel=0.1)
    lora = _lora(model, "all-linear")
    trainable = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    assert est.lora_params(shape, 4, "all-linear") == trainable  # the tower's linears too
