"""Preflight refuses every adapter vLLM would refuse (FACTS 10.3.4) and the ones vLLM would
wrongly accept (another base model with smaller shapes), before any server or registry write."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from feinschliff.serving.adapter_files import base_model_shapes
from feinschliff.serving.preflight import (
    WEIGHTS,
    PreflightError,
    check_base_name,
    check_name,
    preflight,
    read_safetensors_header,
)
from tests.unit.adapter_factory import adapter_config, make_adapter, make_base, target_for


@pytest.fixture()
def base(tmp_path):
    return make_base(tmp_path / "base")


def _rejects(adapter, target, needle):
    with pytest.raises(PreflightError) as err:
        preflight(adapter, target)
    assert any(needle in p for p in err.value.problems), err.value.problems
    return err.value.problems


def test_good_adapter_passes_with_report(tmp_path, base):
    adapter = make_adapter(tmp_path / "a", str(base))
    report = preflight(adapter, target_for(base))
    assert report.rank == 8
    assert report.target_modules == ["q_proj", "v_proj"]
    assert report.tensors == 2 * 2 * 2  # layers x modules x (A, B)


@pytest.mark.parametrize(
    ("over", "needle"),
    [
        ({"r": 64}, "LoRA rank 64 is greater than max_lora_rank 16"),
        ({"rank_pattern": {"q_proj": 32}}, "LoRA rank 32 is greater"),
        ({"r": 0}, "positive integers"),
        ({"use_dora": True}, "DoRA"),
        ({"bias": "all"}, "bias is not supported"),
        ({"modules_to_save": ["embed_tokens", "lm_head"]}, "modules_to_save"),
        ({"lora_bias": True}, "lora_bias"),
        ({"init_lora_weights": "pissa_niter_4"}, "PiSSA"),
        ({"init_lora_weights": "olora"}, "PiSSA/OLoRA"),
        ({"alora_invocation_tokens": [1, 2]}, "aLoRA"),
        ({"layer_replication": [[0, 2]]}, "layer_replication"),
        ({"use_qalora": True}, "QALoRA"),
        ({"peft_type": "IA3"}, "not LORA"),
        ({"lora_alpha": None}, "missing required configuration fields: ['lora_alpha']"),
    ],
)
def test_config_rules_vllm_enforces(tmp_path, base, over, needle):
    cfg = adapter_config(str(base), **over)
    adapter = make_adapter(tmp_path / "a", str(base), config=cfg)
    _rejects(adapter, target_for(base), needle)


def test_allowed_modules_to_save_and_init_variants_pass(tmp_path, base):
    for i, over in enumerate(
        [{"modules_to_save": ["classifier", "score"]}, {"init_lora_weights": "gaussian"}]
    ):
        cfg = adapter_config(str(base), **over)
        preflight(make_adapter(tmp_path / f"a{i}", str(base), config=cfg), target_for(base))


def test_rank_above_server_max_even_if_config_lies(tmp_path, base):
    """The config says r=8, the tensors have rank 32: the tensors win."""
    cfg = adapter_config(str(base), r=8)
    adapter = make_adapter(tmp_path / "a", str(base), rank=32, config=cfg)
    _rejects(adapter, target_for(base), "LoRA rank 32 is greater than max_lora_rank 16")


def test_another_base_model_is_refused_by_name_and_by_shapes(tmp_path, base):
    other = make_base(tmp_path / "other", hidden_scale=2)
    adapter = make_adapter(tmp_path / "a", str(other), hidden_scale=2)
    problems = _rejects(adapter, target_for(base), "is not the served base model")
    assert any("do not fit the base weight" in p for p in problems)


def test_smaller_shapes_with_a_forged_base_name_are_refused(tmp_path, base):
    """vLLM accepted such an adapter (FACTS 5): the name matches, only the shapes tell."""
    big = make_base(tmp_path / "big", hidden_scale=2)
    adapter = make_adapter(tmp_path / "a", str(big))  # fits the small model, named as big
    _rejects(adapter, target_for(big), "do not fit the base weight")


def test_module_missing_from_base_and_untargeted_tensors(tmp_path, base):
    extra = {
        "base_model.model.model.layers.0.mlp.fc9.lora_A.weight": np.zeros((8, 8), np.float32),
        "base_model.model.model.layers.0.mlp.fc9.lora_B.weight": np.zeros((8, 8), np.float32),
        "base_model.model.lm_head.weight": np.zeros((32, 8), np.float32),
    }
    adapter = make_adapter(tmp_path / "a", str(base), extra_tensors=extra)
    problems = _rejects(adapter, target_for(base), "has no weight model.layers.0.mlp.fc9.weight")
    assert any("not in target_modules" in p for p in problems)
    assert any("unexpected tensor base_model.model.lm_head.weight" in p for p in problems)


def test_dora_magnitude_tensor_is_refused_even_without_the_flag(tmp_path, base):
    extra = {
        "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector": np.ones(
            8, np.float32
        )
    }
    adapter = make_adapter(tmp_path / "a", str(base), extra_tensors=extra)
    _rejects(adapter, target_for(base), "DoRA magnitude vector")


def test_target_modules_match_like_peft(tmp_path, base):
    """PEFT matches a target by the module's full name or a "." + target suffix, and skips
    targets the model lacks (vLLM goes by the tensors): both kinds of adapter load in vLLM."""
    adapter = make_adapter(tmp_path / "a", str(base))
    for targets in (["q_proj", "v_proj", "c_attn"], ["self_attn.q_proj", "self_attn.v_proj"]):
        cfg = adapter_config(str(base), target_modules=targets)
        (adapter / "adapter_config.json").write_text(json.dumps(cfg))
        assert preflight(adapter, target_for(base)).target_modules == sorted(targets)
    # a suffix must end at a dot, and a tensor outside every target is still refused
    cfg = adapter_config(str(base), target_modules=["_proj", "c_attn"])
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    problems = _rejects(adapter, target_for(base), "is not in target_modules")
    assert len(problems) == 2 * 2  # layers x (q_proj, v_proj)


def test_a_target_the_model_has_but_the_adapter_lacks_is_refused(tmp_path, base):
    """A truncated or mixed-up adapter: the config targets k_proj, which the base model has,
    and no k_proj weights came along (a target the model lacks, c_attn, is fine)."""
    adapter = make_adapter(tmp_path / "a", str(base))
    cfg = adapter_config(str(base), target_modules=["q_proj", "v_proj", "k_proj", "c_attn"])
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    problems = _rejects(adapter, target_for(base), "have no LoRA weights")
    assert problems == ["target_modules ['k_proj'] have no LoRA weights in the adapter"]


def test_missing_config_and_weights(tmp_path, base):
    adapter = make_adapter(tmp_path / "a", str(base))
    (adapter / "adapter_config.json").unlink()
    _rejects(adapter, target_for(base), "no adapter_config.json")
    (adapter / "adapter_model.safetensors").unlink()
    _rejects(adapter, target_for(base), "no adapter_model.safetensors")


def test_pickle_weights_are_refused(tmp_path, base):
    adapter = make_adapter(tmp_path / "a", str(base))
    (adapter / "adapter_model.bin").write_bytes(b"\x80\x04K\x01.")  # a pickle
    _rejects(adapter, target_for(base), "pickle-based weights are refused")


def test_symlink_out_of_the_root_is_refused_inside_is_fine(tmp_path, base):
    adapter = make_adapter(tmp_path / "a", str(base))
    (adapter / "README.md").symlink_to(adapter / "adapter_config.json")
    preflight(adapter, target_for(base))
    secret = tmp_path / "secret.txt"
    secret.write_text("token")
    (adapter / "notes.txt").symlink_to(secret)
    _rejects(adapter, target_for(base), "notes.txt is a symlink that leaves the adapter directory")
    (adapter / "notes.txt").unlink()
    (adapter / "up").symlink_to("..", target_is_directory=True)
    _rejects(adapter, target_for(base), "up is a symlink that leaves")


def test_fifo_is_refused(tmp_path, base):
    adapter = make_adapter(tmp_path / "a", str(base))
    os.mkfifo(adapter / "pipe")
    _rejects(adapter, target_for(base), "pipe is not a regular file")


def test_truncated_safetensors_is_refused(tmp_path, base):
    adapter = make_adapter(tmp_path / "a", str(base))
    data = (adapter / "adapter_model.safetensors").read_bytes()
    (adapter / "adapter_model.safetensors").write_bytes(data[:-16])
    _rejects(adapter, target_for(base), "lies outside the file")
    (adapter / "adapter_model.safetensors").write_bytes(b"\xff" * 8 + b"{}")
    _rejects(adapter, target_for(base), "not a safetensors file")


def test_sharded_base_model_shapes_are_read(tmp_path, base):
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    shapes = read_safetensors_header(base / "model.safetensors")
    keys = sorted(shapes)
    for i, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2 :])):
        save_file(
            {k: np.zeros(shapes[k], np.float32) for k in part}, str(sharded / f"m-{i}.safetensors")
        )
    (sharded / "config.json").write_text((base / "config.json").read_text())
    # every shard is read: the union of both equals the unsharded base's shapes
    assert len(keys) >= 2
    assert base_model_shapes(sharded) == base_model_shapes(base)
    assert preflight(make_adapter(tmp_path / "a", str(sharded)), target_for(sharded)).rank == 8


def test_base_name_matching():
    assert check_base_name("meta-llama/Llama-3.1-8B", ("/models/llama-3.1-8b",)) == []
    assert check_base_name("/a/smollm2-135m-instruct", ("smollm2-135m-instruct",)) == []
    assert check_base_name("Qwen/Qwen3-8B", ("meta-llama/Llama-3.1-8B",))
    assert check_base_name("", ("x",)) == ["adapter_config.json has no base_model_name_or_path"]


@pytest.mark.parametrize("bad", ["../escape", "a/b", "Upper", "", "x" * 64, "-lead", "a\x00b"])
def test_unsafe_names_are_refused(bad):
    with pytest.raises(PreflightError):
        check_name(bad)
    assert check_name("support-de-2") == "support-de-2"


# --- found by the bad-adapter fuzz (tests/reliability/test_vllm_reliability.py): each of these
# was accepted or crashed the preflight with something other than PreflightError


def _header_file(path, header: bytes, data: bytes = b"") -> None:
    header += b" " * (-len(header) % 8)
    path.write_bytes(len(header).to_bytes(8, "little") + header + data)


@pytest.mark.parametrize(
    ("header", "needle"),
    [
        (b"[]", "not a JSON object"),
        (b'{"x": NaN}', "has no dtype/shape/data_offsets"),
        (b'{"t": {}}', "shape None is not a list of sizes"),
        (b'{"t": {"dtype": "F32", "shape": [2], "data_offsets": ["0", "8"]}}', "two integers"),
        (b'{"t": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}}', "list of sizes"),
        (b'{"t": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}}', "unknown dtype"),
        (b'{"t": {"dtype": "F64", "shape": [2], "data_offsets": [0, 8]}}', "do not hold a F64"),
        (b'{"t": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}', "leaves a gap"),
        (b'{"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "t": {}}', "duplicate"),
        (b'{"__metadata__": [], "t": {}}', "__metadata__ is not an object"),
        (b"[" * 100_000 + b"]" * 100_000, "corrupt safetensors header"),
        (b'{"\xff": 1}', "corrupt safetensors header"),
    ],
)
def test_safetensors_headers_the_loader_would_refuse(tmp_path, header, needle):
    _header_file(tmp_path / "x.safetensors", header, b"\0" * 8)
    with pytest.raises(ValueError, match=needle):
        read_safetensors_header(tmp_path / "x.safetensors")


def test_overlapping_offsets_and_trailing_bytes(tmp_path):
    two = b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, '
    _header_file(
        tmp_path / "o.safetensors",
        two + b'"b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}',
        b"\0" * 12,
    )
    with pytest.raises(ValueError, match="overlaps the previous tensor"):
        read_safetensors_header(tmp_path / "o.safetensors")
    _header_file(tmp_path / "t.safetensors", two[:-2] + b"}", b"\0" * 16)
    with pytest.raises(ValueError, match="8 bytes after the last tensor"):
        read_safetensors_header(tmp_path / "t.safetensors")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_nonfinite_weights_are_refused(tmp_path, base, value, dtype):
    adapter = make_adapter(tmp_path / "a", str(base))
    from safetensors.numpy import load_file

    tensors = {k: v.astype(dtype) for k, v in load_file(adapter / WEIGHTS).items()}
    key = sorted(tensors)[3]
    tensors[key].flat[5] = value
    save_file(tensors, str(adapter / WEIGHTS))
    _rejects(adapter, target_for(base), "NaN or inf in 1 tensors")


def test_integer_weights_are_refused(tmp_path, base):
    adapter = make_adapter(tmp_path / "a", str(base))
    from safetensors.numpy import load_file

    tensors = {k: v.view(np.int32) for k, v in load_file(adapter / WEIGHTS).items()}
    save_file(tensors, str(adapter / WEIGHTS))
    _rejects(adapter, target_for(base), "dtype I32 is not a float type")


@pytest.mark.parametrize(
    ("over", "needle"),
    [
        ({"rank_pattern": [["q_proj", 8]]}, "rank_pattern must be an object"),
        ({"alpha_pattern": [1]}, "alpha_pattern must be an object"),
        ({"lora_alpha": "16"}, "lora_alpha values must be numbers"),
        ({"modules_to_save": 5}, "modules_to_save=5"),
        ({"target_modules": 5}, "target_modules must be a list of names or a regex"),
        ({"target_modules": {"q_proj": 1}}, "target_modules must be a list"),
        ({"target_modules": "(["}, "is not a valid regex"),
        ({"target_modules": []}, "target_modules is empty"),
        ({"r": True}, "positive integers"),
        ({"base_model_name_or_path": 5}, "must be a string"),
        ({"base_model_name_or_path": "smollm2\x00"}, "is not the served base model"),
        ({"r": 4}, "tensor rank 8 != configured rank 4"),
        ({"rank_pattern": {"q_proj": 16}}, "q_proj: tensor rank 8 != configured rank 16"),
    ],
)
def test_config_types_and_rank_consistency(tmp_path, base, over, needle):
    adapter = make_adapter(tmp_path / "a", str(base))  # rank 8, q_proj + v_proj
    (adapter / "adapter_config.json").write_text(json.dumps(adapter_config(str(base), **over)))
    _rejects(adapter, target_for(base), needle)


def test_rank_pattern_regex_key_matches_like_peft(tmp_path, base):
    """rank_pattern keys are suffixes or regexes of the module name (peft get_pattern_key)."""
    adapter = make_adapter(tmp_path / "a", str(base), rank=4)
    cfg = adapter_config(str(base), r=8, rank_pattern={r"layers\.\d+\.self_attn\.(q|v)_proj": 4})
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    assert preflight(adapter, target_for(base)).rank == 8


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "is not valid JSON"),
        (b'{"r": 8, "\xff": 1}', "is not valid JSON"),
        (b'{"pad": "' + b"x" * (1 << 20) + b'"}', "larger than"),
    ],
)
def test_config_files_that_break_the_parser(tmp_path, base, text, needle):
    adapter = make_adapter(tmp_path / "a", str(base))
    (adapter / "adapter_config.json").write_bytes(text)
    _rejects(adapter, target_for(base), needle)


def test_broken_symlinks_oversized_files_and_floods(tmp_path, base):
    adapter = make_adapter(tmp_path / "a", str(base))
    (adapter / "loop").symlink_to("loop")
    (adapter / "gone").symlink_to("nowhere")
    with (adapter / "notes.txt").open("wb") as f:
        f.truncate(65 << 20)  # sparse: costs nothing here, the registry would copy 65 MB
    problems = _rejects(adapter, target_for(base), "loop is a broken symlink")
    assert any("gone is a broken symlink" in p for p in problems)
    assert any("notes.txt has 68157440 bytes" in p for p in problems)
    flood = make_adapter(tmp_path / "b", str(base))
    for i in range(300):
        (flood / f"f{i}").touch()
    _rejects(flood, target_for(base), "more than 256 files")


# ---------------------------------------------------------------- register.vllm.model vs base

DEMO = Path(__file__).resolve().parents[2] / "recipes" / "demo-de.yaml"


def _vllm_recipe(tmp_path, base_name, model):
    from feinschliff.recipe_loader import load_recipe

    vllm = {"servers": [{"url": "http://vllm-0:8000"}], "model": model}
    return load_recipe(
        DEMO,
        [
            "use_case=support-x",
            f"base_model.name={base_name}",
            f"register.registry={tmp_path / 'reg'}",
            f"register.vllm={json.dumps(vllm)}",
        ],
    )


def test_register_vllm_model_must_name_the_recipe_base_model(tmp_path, base):
    """A llama-shaped base served as Qwen 72B used to register and promote (the servers' --model
    was simply added to the accepted names); now refused before anything is registered."""
    from feinschliff.registry import versions
    from feinschliff.serving.preflight import base_target
    from feinschliff.serving.publish import register_version
    from tests.unit.adapter_factory import make_train_output

    recipe = _vllm_recipe(tmp_path, base, "Qwen/Qwen2.5-72B-Instruct")
    with pytest.raises(PreflightError) as err:
        base_target(recipe)
    text = str(err.value)
    assert "register.vllm.model 'Qwen/Qwen2.5-72B-Instruct'" in text
    assert f"recipe's base model '{base}'" in text
    with pytest.raises(PreflightError, match="register.vllm.model"):
        register_version(recipe, make_train_output(tmp_path / "out", str(base)), {})
    assert not (tmp_path / "reg").exists() or versions(tmp_path / "reg", "support-x") == []


def test_a_server_mount_path_cannot_be_named_and_is_accepted_with_a_warning(tmp_path, base, caplog):
    """KServe/OpenShift start vLLM with --model /mnt/models: a path only the servers have says
    nothing about the model, so it is not refused (no workaround existed); an HF id or a local
    folder of another name still is."""
    from feinschliff.serving.preflight import base_target, check_recipe_served_model

    recipe = _vllm_recipe(tmp_path, base, "/mnt/models")
    assert "/mnt/models" in base_target(recipe).names
    check_recipe_served_model(recipe)
    assert "cannot be checked against base_model" in caplog.text
    other = tmp_path / "other-model"
    other.mkdir()
    with pytest.raises(PreflightError, match="register.vllm.model"):
        check_recipe_served_model(_vllm_recipe(tmp_path, base, str(other)))


def test_the_hf_cache_copy_of_an_hf_id_base_is_accepted_by_every_check(tmp_path, monkeypatch):
    """base_target accepted the HF-cache snapshot folder as the served model, serve-config and
    reconcile (base_names) refused the same recipe."""
    from huggingface_hub import constants

    from feinschliff.serving.preflight import base_names, base_target, check_recipe_served_model

    # read at call time (the environment variable only at import, which may have happened)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = tmp_path / "hub" / "models--org--base-7b"
    snap = repo / "snapshots" / ("a" * 40)
    make_base(snap)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    recipe = _vllm_recipe(tmp_path, "org/base-7b", str(snap))
    assert str(snap) in base_names(recipe)
    assert base_target(recipe).weights_dir == snap
    check_recipe_served_model(recipe)


@pytest.mark.parametrize("model", ["{base}", "/models/base", "org/base"])
def test_register_vllm_model_naming_the_base_passes(tmp_path, base, model):
    """The same folder, or the base under the server's own path (a pod's mount) or an HF id."""
    from feinschliff.serving.preflight import base_target

    target = base_target(_vllm_recipe(tmp_path, base, model.format(base=base)))
    assert model.format(base=base) in target.names


def test_demo_alias_served_from_its_local_folder_passes(tmp_path, monkeypatch):
    """`make demo` / the integration tests: base_model.name is the alias, vLLM runs with
    --model <the alias's dequantized folder>."""
    from feinschliff.models import MARKER, PACKAGED_MODELS, model_dir
    from feinschliff.serving.preflight import base_target

    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))
    folder = make_base(model_dir("smollm2-135m-instruct"))
    spec = PACKAGED_MODELS["smollm2-135m-instruct"]
    marker = {"package": f"{spec.package}=={spec.version}", "wheel_sha256": spec.wheel_sha256}
    (folder / MARKER).write_text(json.dumps(marker))  # as fetch_model writes it
    target = base_target(_vllm_recipe(tmp_path, "smollm2-135m-instruct", str(folder)))
    assert target.weights_dir == folder
    with pytest.raises(PreflightError, match="register.vllm.model"):
        base_target(_vllm_recipe(tmp_path, "smollm2-135m-instruct", "Qwen/Qwen3-8B"))


def test_two_different_local_folders_with_the_same_last_name_do_not_match(tmp_path):
    """The last path component alone matched /m/llama-8b/hf with /m/llama-8b-instruct/hf."""
    a, b = tmp_path / "llama-8b" / "hf", tmp_path / "llama-8b-instruct" / "hf"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    assert check_base_name(str(a), (str(b),))
    assert check_base_name(str(a), (str(a) + "/",)) == []
    (tmp_path / "link").symlink_to(a)
    assert check_base_name(str(tmp_path / "link"), (str(a),)) == []
    # a path that does not exist here (training node, server pod) still matches by its name
    assert check_base_name("/train/llama-8b-instruct/hf", (str(b),)) == []


# ---------------------------------------------------------------- LoRA on embed_tokens / lm_head


def _embedding_adapter(tmp_path, base, modules):
    from tests.unit.adapter_factory import HIDDEN, VOCAB

    extra = {}
    if "embed_tokens" in modules:
        extra["base_model.model.model.embed_tokens.lora_embedding_A"] = np.ones((8, VOCAB), "f4")
        extra["base_model.model.model.embed_tokens.lora_embedding_B"] = np.ones((HIDDEN, 8), "f4")
    if "lm_head" in modules:
        extra["base_model.model.lm_head.lora_A.weight"] = np.ones((8, HIDDEN), "f4")
        extra["base_model.model.lm_head.lora_B.weight"] = np.ones((VOCAB, 8), "f4")
    cfg = adapter_config(str(base))
    adapter = make_adapter(tmp_path / "a", str(base), config=cfg, extra_tensors=extra)
    full = adapter_config(str(base), target_modules=["q_proj", "v_proj", *modules])
    (adapter / "adapter_config.json").write_text(json.dumps(full))
    return adapter


def _architecture(base, *archs):
    config = {"tie_word_embeddings": True} | ({"architectures": list(archs)} if archs else {})
    (base / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    "arch", ["Qwen2ForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM", "MistralForCausalLM"]
)
@pytest.mark.parametrize("modules", [["embed_tokens"], ["lm_head"]])
def test_embedding_lora_is_refused_where_vllm_cannot_load_it(tmp_path, base, arch, modules):
    """vLLM 0.32's classes without embedding_modules answer 500 when such an adapter loads."""
    _architecture(base, arch)
    problems = _rejects(_embedding_adapter(tmp_path, base, modules), target_for(base), arch)
    assert any(f"LoRA on {modules}" in p for p in problems), problems


@pytest.mark.parametrize("arch", ["LlamaForCausalLM", "Qwen3ForCausalLM", "Phi3ForCausalLM"])
def test_embedding_lora_passes_where_vllm_loads_it(tmp_path, base, arch):
    _architecture(base, arch)
    adapter = _embedding_adapter(tmp_path, base, ["embed_tokens", "lm_head"])
    assert "embed_tokens" in preflight(adapter, target_for(base)).target_modules


def test_embedding_lora_unknown_architecture_is_refused(tmp_path, base):
    """Unknown (or no) architecture: refused, the default of vLLM's SupportsLoRA is {}; an
    adapter without these modules still passes on it."""
    for archs in (("SomeNewForCausalLM",), ()):
        _architecture(base, *archs)
        _rejects(_embedding_adapter(tmp_path, base, ["embed_tokens"]), target_for(base), "LoRA on")
        preflight(make_adapter(tmp_path / "plain", str(base)), target_for(base))
