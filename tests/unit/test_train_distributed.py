"""Training under ``accelerate launch``: each QLoRA rank loads its 4-bit weights onto its own
GPU, and ZeRO-3's partitioned parameters are counted whole.

No GPU needed: the model load is stubbed and only its arguments are checked; the partitioning
is what ``deepspeed.zero.Init`` leaves on a rank, laid out by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

from feinschliff.recipe_loader import load_recipe
from feinschliff.train import trl_backend as tb
from feinschliff.train import trl_sharding

ROOT = Path(__file__).resolve().parents[2]


def _load_kwargs(monkeypatch, *sets: str) -> dict:
    recipe = load_recipe(ROOT / "recipes" / "demo-de.yaml", ["train.qlora=true", *sets])
    seen: dict = {}

    def from_pretrained(path, **kwargs):
        seen.update(kwargs)
        return object()

    monkeypatch.setattr(tb, "check_qlora_available", lambda: None)
    monkeypatch.setattr(tb.AutoModelForCausalLM, "from_pretrained", from_pretrained)
    tb.load_model(recipe, "model")
    return seen


@pytest.mark.parametrize("rank", ["0", "1", "3"])
def test_each_ddp_rank_loads_its_4bit_weights_onto_its_own_gpu(monkeypatch, rank):
    """bitsandbytes put every rank's weights on the current device, GPU 0 (the model loads
    before the Trainer sets the rank's device): rank 1 then failed in accelerate's prepare
    ("loaded in 8-bit or 4-bit precision on a different device than the one you're training
    on"), after GPU 0 had held two copies of the model."""
    monkeypatch.setenv("LOCAL_RANK", rank)
    kwargs = _load_kwargs(monkeypatch, "train.launcher=accelerate", "train.num_processes=4")
    assert kwargs["quantization_config"].load_in_4bit
    assert kwargs["device_map"] == {"": int(rank)}


def test_one_process_loads_onto_gpu_0(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert _load_kwargs(monkeypatch)["device_map"] == {"": 0}


def test_without_qlora_no_device_map_is_forced(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert "device_map" not in _load_kwargs(monkeypatch, "train.qlora=false")


def test_trainable_parameters_count_zero3_partitioned_lora_whole(tmp_path):
    """ZeRO-3 leaves each rank an empty tensor per partitioned parameter (the size in
    ``ds_numel``): metrics.json said 0 trainable parameters."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tests.unit.tiny_llama import make_tiny_llama

    path = make_tiny_llama(tmp_path / "m", ["[UNK]", "a", "b"])
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(path), LoraConfig(r=2, target_modules="all-linear")
    )
    whole = model.get_nb_trainable_parameters()[0]
    assert trl_sharding.trainable_parameters(model) == whole > 0
    for p in model.parameters():  # what deepspeed.zero.Init leaves on a rank
        p.ds_numel = p.numel()
        p.data = torch.empty(0)
    assert trl_sharding.trainable_parameters(model) == whole


def _peft_tiny(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tests.unit.tiny_llama import make_tiny_llama

    path = make_tiny_llama(tmp_path / "m", ["[UNK]", "a", "b"])
    lora = LoraConfig(r=2, target_modules="all-linear", init_lora_weights=False)
    return get_peft_model(AutoModelForCausalLM.from_pretrained(path), lora)


@pytest.mark.parametrize("sharding", ["deepspeed", "fsdp"])
def test_a_sharded_training_saves_its_adapter_gathered_whole(tmp_path, sharding):
    """Under ZeRO-3 (and FSDP) each process holds a shard of every LoRA weight; the main
    process alone called save_pretrained and wrote its empty (or partial) tensors. The weights
    are gathered by every process first, as Trainer.save_model does for checkpoints."""
    from types import SimpleNamespace

    import torch
    from safetensors.torch import load_file

    model = _peft_tiny(tmp_path)
    whole = {k: v.clone() for k, v in model.state_dict().items()}
    for p in model.parameters():  # what ZeRO-3 leaves on a process
        p.data = torch.empty(0)
    gathered = []

    def get_state_dict(wrapped):
        gathered.append(wrapped)
        return whole

    engine = object()
    trainer = SimpleNamespace(
        model=model,
        deepspeed=engine if sharding == "deepspeed" else None,
        is_deepspeed_enabled=sharding == "deepspeed",
        is_fsdp_enabled=sharding == "fsdp",
        accelerator=SimpleNamespace(get_state_dict=get_state_dict),
        is_world_process_zero=lambda: True,
    )
    trl_sharding.save_adapter(trainer, tmp_path / "adapter")
    assert gathered == [engine if sharding == "deepspeed" else model]
    saved = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert saved
    for key, tensor in saved.items():
        name = key.replace(".weight", ".default.weight")
        assert torch.equal(tensor, whole[name])


@pytest.mark.parametrize("deepspeed", [False, True])
def test_an_unsharded_adapter_is_saved_as_it_is(tmp_path, deepspeed):
    """One process or DDP: nothing to gather (and no collective to wait for); nor under
    DeepSpeed before any engine exists (a run that finished from its final checkpoint)."""
    from types import SimpleNamespace

    import torch
    from safetensors.torch import load_file

    model = _peft_tiny(tmp_path)

    def get_state_dict(wrapped):
        raise AssertionError("nothing to gather")

    trainer = SimpleNamespace(
        model=model,
        deepspeed=None,
        is_deepspeed_enabled=deepspeed,
        is_fsdp_enabled=False,
        accelerator=SimpleNamespace(get_state_dict=get_state_dict),
        is_world_process_zero=lambda: True,
    )
    trl_sharding.save_adapter(trainer, tmp_path / "adapter")
    saved = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    state = model.state_dict()
    assert all(
        torch.equal(v, state[k.replace(".weight", ".default.weight")]) for k, v in saved.items()
    )
