"""`feinschliff serve-config A.yaml B.yaml`: one server config for several use cases sharing a
vLLM server (it took one recipe: the operator combined --max-loras and --lora-modules by hand,
and nothing refused recipes that cannot share a server)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import yaml

from feinschliff.recipe_loader import load_recipe
from feinschliff.registry import promote
from feinschliff.serving.publish import register_version, served_adapter
from feinschliff.serving.serve_config import render
from tests.cli_helpers import run_cli
from tests.unit.adapter_factory import make_base, make_train_output

DEMO = Path(__file__).resolve().parents[2] / "recipes" / "demo-de.yaml"


def _recipe(tmp: Path, use_case: str, *, rank: int = 16, base: Path, **vllm) -> Path:
    """A copy of the demo recipe for ``use_case`` with ``register.vllm`` (``vllm=None``: none)."""
    doc = yaml.safe_load(DEMO.read_text())
    for source in doc["feedback"]["sources"]:
        source["path"] = str((DEMO.parent / source["path"]).resolve())
    doc["use_case"] = use_case
    doc["base_model"]["name"] = str(base)
    doc["register"] = {"max_lora_rank": rank, "registry": str(tmp / "reg")}
    if vllm.get("vllm", True) is not None:
        doc["register"]["vllm"] = {
            "servers": [{"url": "http://vllm-0:8000"}],
            "model": "/models/base",
            "adapter_dir": str(tmp / "serving"),
            "server_adapter_dir": "/mnt/adapters",
            **vllm,
        }
    path = tmp / f"{use_case}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _publish(path: Path, tmp: Path, versions: int = 1) -> None:
    recipe = load_recipe(path, [])
    for n in range(versions):
        out = tmp / f"out-{recipe.use_case}-{n}"
        seed = float(len(recipe.use_case) * 10 + n)
        v = register_version(recipe, make_train_output(out, recipe.base_model.name, seed=seed), {})
        promote(tmp / "reg", recipe.use_case, v, why="test")


@pytest.fixture()
def two(tmp_path):
    base = make_base(tmp_path / "base")
    a = _recipe(tmp_path, "support-de", base=base, keep_versions=1, max_loras=4)
    b = _recipe(tmp_path, "billing-de", rank=32, base=base, keep_versions=2, max_loras=5)
    _publish(a, tmp_path, versions=2)
    _publish(b, tmp_path)
    return a, b, base


def _flags(text: str) -> tuple[dict[str, str], list[str]]:
    args = shlex.split(text[text.index("\npython ") :].replace("\\\n", " "))
    flag = {args[i]: args[i + 1] for i in range(3, len(args) - 1) if args[i].startswith("--")}
    return flag, args


def test_one_vllm_server_for_two_use_cases(two):
    """One start command: the larger rank, slots for every use case, and every adapter after
    ONE --lora-modules (vLLM's LoRAParserAction keeps only the last of repeated flags)."""
    a, b, _ = two
    code, out = run_cli("serve-config", str(a), str(b))
    assert code == 0, out
    flag, args = _flags(out)
    assert flag["--model"] == "/models/base" and "--enable-lora" in args
    assert flag["--max-lora-rank"] == "32"  # the larger register.max_lora_rank
    # (1 + 1) + (2 + 1) resident, + 1 staged + 1 free: what staging's slot warning asks for
    assert flag["--max-loras"] == "7" and flag["--max-cpu-loras"] == "14"
    assert args.count("--lora-modules") == 1
    modules = [json.loads(x) for x in args[args.index("--lora-modules") + 1 :]]
    assert [(m["name"], m["base_model_name"]) for m in modules] == [
        ("support-de", "/models/base"),
        ("billing-de", "/models/base"),
    ]
    assert modules[0]["path"].startswith("/mnt/adapters/support-de/v0002-")
    assert modules[1]["path"].startswith("/mnt/adapters/billing-de/v0001-")
    head = [line for line in out.splitlines() if line.startswith("# ")]
    assert f"support-de = v0002 ({a})" in head[0] and f"billing-de = v0001 ({b})" in head[0]
    raise_line = next(line for line in head if "set register.vllm.max_loras: 7" in line)
    assert str(a) in raise_line and str(b) in raise_line
    assert "export VLLM_ALLOW_RUNTIME_LORA_UPDATING=true" in out


def test_max_loras_is_stable_once_the_recipes_carry_it(two, tmp_path):
    """Recipes set to the printed --max-loras (as the output and staging's warning ask) print
    the same value again, not a sum of sums; a recipe asking for more keeps its value."""
    a, b, base = two
    code, out = run_cli("serve-config", str(a), str(b), "--set", "register.vllm.max_loras=7")
    assert code == 0, out
    assert _flags(out)[0]["--max-loras"] == "7" and "set register.vllm.max_loras" not in out
    code, out = run_cli("serve-config", str(a), str(b), "--set", "register.vllm.max_loras=12")
    assert code == 0, out
    assert _flags(out)[0]["--max-loras"] == "12"
    assert "the largest register.vllm.max_loras" in out


def test_single_recipe_output_is_unchanged(two):
    a, _, _ = two
    code, out = run_cli("serve-config", str(a))
    assert code == 0, out
    assert out == render(served_adapter(load_recipe(a, [])), "vllm")


def test_recipes_on_different_base_models_are_refused(two, tmp_path):
    """One vLLM server has one --model: recipes on another base model cannot share it."""
    a, _, _ = two
    other = make_base(tmp_path / "base2", hidden_scale=2)
    d = _recipe(tmp_path, "other-de", base=other, model="/models/base2")
    code, out = run_cli("serve-config", str(a), str(d))
    assert code == 2, out
    assert f"{a} and {d} disagree on register.vllm.model" in out
    assert "'/models/base' vs '/models/base2'" in out and "one base model" in out
    # the same served path (KServe's /mnt/models) for two different base models
    sets = ["--set", "register.vllm.model=/mnt/models"]
    code, out = run_cli("serve-config", str(a), str(d), *sets)
    assert code == 2, out
    assert f"{a} and {d} disagree on base_model.name" in out
    assert not (tmp_path / "serving" / "other-de").exists()  # refused before any copy


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"servers": [{"url": "http://vllm-9:8000"}]}, "register.vllm.servers"),
        ({"mode": "resolver", "resolver_dir": "/tmp/rs"}, "register.vllm.mode"),
    ],
)
def test_disagreeing_server_settings_are_refused(two, tmp_path, change, field):
    a, _, base = two
    c = _recipe(tmp_path, "legal-de", base=base, **change)
    _publish(c, tmp_path)
    code, out = run_cli("serve-config", str(a), str(c))
    assert code == 2, out
    assert f"{a} and {c} disagree on {field}" in out


def test_a_recipe_without_register_vllm_names_its_local_server(two, tmp_path):
    a, _, base = two
    c = _recipe(tmp_path, "legal-de", base=base, vllm=None)
    code, out = run_cli("serve-config", str(a), str(c))
    assert code == 2, out
    assert f"{a} and {c} disagree on register.vllm.model" in out
    assert f"{c} has no register.vllm" in out


def test_what_one_recipe_only_can_do_is_refused(two):
    a, b, _ = two
    code, out = run_cli("serve-config", str(a), str(a))
    assert code == 2 and "the same use_case 'support-de'" in out, out
    code, out = run_cli("serve-config", str(a), str(b), "--version", "v0001")
    assert code == 2 and "--version takes one RECIPE" in out, out
    code, out = run_cli("serve-config", str(a), str(b), "--target", "ollama")
    assert code == 2 and "one Modelfile" in out, out


def test_a_use_case_without_production_names_its_recipe(two, tmp_path):
    a, _, base = two
    c = _recipe(tmp_path, "legal-de", base=base)
    code, out = run_cli("serve-config", str(a), str(c))
    assert code == 1, out
    assert f"{c}: legal-de has no production version yet" in out


def test_tgi_and_k8s_for_two_use_cases(two):
    a, b, _ = two
    code, out = run_cli("serve-config", str(a), str(b), "--target", "tgi")
    assert code == 0, out
    value = shlex.split(next(x for x in out.splitlines() if x.startswith("LORA_ADAPTERS=")))[0]
    pairs = [p.split("=", 1) for p in value.split("=", 1)[1].split(",")]
    assert [n for n, _ in pairs] == ["support-de", "billing-de"]
    code, out = run_cli("serve-config", str(a), str(b), "--target", "vllm-k8s", "--k8s-model", "m")
    assert code == 0, out
    docs = list(yaml.safe_load_all(out))
    assert [d["metadata"]["name"] for d in docs] == ["support-de", "billing-de"]
    assert {d["spec"]["baseModel"] for d in docs} == {"m"}
