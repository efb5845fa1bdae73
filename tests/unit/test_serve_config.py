"""`feinschliff serve-config`: vLLM flags, production-stack LoraAdapter, TGI, Ollama for the
production version, plus the recipe's `register.vllm` validation."""

from __future__ import annotations

import dataclasses
import json
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError
from typer.testing import CliRunner

from feinschliff.cli import app
from feinschliff.recipe_loader import RecipeError, load_recipe
from feinschliff.registry import RegistryError, manifest, promote
from feinschliff.serving.publish import register_version, served_adapter
from feinschliff.serving.serve_config import render
from feinschliff.serving.vllm_client import VllmClient
from feinschliff.specs.register import VllmServer, VllmSpec
from tests.cli_helpers import run_cli
from tests.unit.adapter_factory import make_base, make_train_output

DEMO = Path(__file__).resolve().parents[2] / "recipes" / "demo-de.yaml"


@pytest.fixture()
def setup(tmp_path):
    base = make_base(tmp_path / "base")
    sets = [
        "use_case=support-x",
        f"base_model.name={base}",
        f"register.registry={tmp_path / 'reg'}",
        "register.vllm="
        + json.dumps(
            {
                "servers": [{"url": "http://vllm-0:8000/", "api_key_env": "VLLM_KEY"}],
                "model": "/models/base",
                "adapter_dir": str(tmp_path / "serving"),
                "server_adapter_dir": "/mnt/adapters",
            }
        ),
    ]
    recipe = load_recipe(DEMO, sets)
    version = register_version(recipe, make_train_output(tmp_path / "out", str(base)), {})
    promote(tmp_path / "reg", "support-x", version, why="test")
    return recipe, sets, tmp_path


def test_served_adapter_uses_a_per_version_serving_path(setup):
    recipe, _, tmp = setup
    a = served_adapter(recipe)
    assert (a.name, a.version, a.base_model) == ("support-x", "v0001", "/models/base")
    leaf = f"v0001-{manifest(tmp / 'reg', 'support-x', 'v0001')['adapter_sha256'][:12]}"
    assert a.path == f"/mnt/adapters/support-x/{leaf}"  # as the servers see it
    assert (tmp / "serving" / "support-x" / leaf / "adapter_config.json").exists()
    assert recipe.register.vllm.servers[0].url == "http://vllm-0:8000"


def test_a_retired_version_gets_no_serving_config(setup, tmp_path):
    from feinschliff.registry import RegistryError, retire

    recipe, _, tmp = setup
    base = Path(recipe.base_model.name)
    v2 = register_version(recipe, make_train_output(tmp_path / "out2", str(base), seed=2.0), {})
    retire(tmp / "reg", "support-x", v2, why="bad answers")
    with pytest.raises(RegistryError, match="support-x/v0002 is retired"):
        served_adapter(recipe, v2)
    assert served_adapter(recipe).version == "v0001"


def test_vllm_flags(setup):
    a = served_adapter(setup[0])
    text = render(a, "vllm")
    assert "export VLLM_ALLOW_RUNTIME_LORA_UPDATING=true" in text
    args = shlex.split(text[text.index("\npython ") :].replace("\\\n", " "))
    assert args[:3] == ["python", "-m", "vllm.entrypoints.openai.api_server"]
    flag = {args[i]: args[i + 1] for i in range(3, len(args) - 1) if args[i].startswith("--")}
    assert flag["--model"] == "/models/base" and flag["--max-lora-rank"] == "16"
    assert flag["--max-loras"] == "4" and "--enable-lora" in args
    module = json.loads(flag["--lora-modules"])
    assert module == {
        "name": "support-x",
        "path": a.path,
        "base_model_name": "/models/base",
    }


def test_vllm_flags_guard_the_adapter_routes_with_the_servers_key(setup):
    """vLLM checks VLLM_API_KEY on every /v1 route, /v1/load_lora_adapter included: the printed
    command sets it from the variable the recipe calls the servers with. Without a key it says
    that anyone reaching the port can swap adapters (the command had no key at all)."""
    recipe = setup[0]
    text = render(served_adapter(recipe), "vllm")
    assert 'export VLLM_API_KEY="${VLLM_KEY}"' in text.splitlines()
    assert (
        subprocess.run(
            ["bash", "-c", text.split("\npython ")[0] + '\nprintf %s "$VLLM_API_KEY"'],
            env={"VLLM_KEY": "sk-test"},
            capture_output=True,
            text=True,
        ).stdout
        == "sk-test"
    )
    open_server = recipe.register.vllm.model_copy(
        update={"servers": [VllmServer(url="http://vllm-0:8000")]}
    )
    keyless = recipe.model_copy(
        update={"register": recipe.register.model_copy(update={"vllm": open_server})}
    )
    text = render(served_adapter(keyless), "vllm")
    assert "VLLM_API_KEY=" not in text
    assert "anyone who reaches this port can load and unload adapters" in text


def test_vllm_flags_say_what_a_restart_serves(setup, tmp_path):
    """Runtime mode pins the stable name to this version: the output says a restarted replica
    needs `registry reconcile`. Resolver mode leaves the stable name to the resolver, so a
    restart after a promotion serves the new version (no --lora-modules pinned to the old)."""
    recipe = setup[0]
    runtime = render(served_adapter(recipe), "vllm")
    assert "restarted" in runtime and "feinschliff registry reconcile RECIPE" in runtime
    vllm = recipe.register.vllm.model_copy(
        update={"mode": "resolver", "resolver_dir": str(tmp_path / "rs")}
    )
    resolver = recipe.model_copy(
        update={"register": recipe.register.model_copy(update={"vllm": vllm})}
    )
    text = render(served_adapter(resolver), "vllm")
    assert "--lora-modules" not in text
    assert f"export VLLM_LORA_RESOLVER_CACHE_DIR={tmp_path / 'rs'}" in text
    assert f"from {tmp_path / 'rs'}/support-x/" in text


def test_vllm_k8s_lora_adapter_resource(setup):
    a = dataclasses.replace(served_adapter(setup[0]), base_model="llama-8b")
    doc = yaml.safe_load(render(a, "vllm-k8s"))
    assert doc["apiVersion"] == "production-stack.vllm.ai/v1alpha1"
    assert doc["kind"] == "LoraAdapter"
    assert doc["metadata"]["name"] == "support-x"
    assert doc["metadata"]["labels"]["feinschliff/version"] == "v0001"
    assert doc["spec"]["baseModel"] == "llama-8b"
    assert doc["spec"]["adapterSource"] == {
        "type": "local",
        "adapterName": "support-x",
        "adapterPath": a.path,
    }


def _serve_config(sets, *args):
    flags = [x for s in sets for x in ("--set", s)]
    return CliRunner().invoke(app, ["serve-config", str(DEMO), *args, *flags])


def test_vllm_k8s_base_model_is_the_pods_model_label(setup):
    """The operator places an adapter on the pods labelled `model: <spec.baseModel>` (the Helm
    chart's modelSpec name); a path or hub id (with '/') can never match a label value, so
    the adapter waited forever. Now --k8s-model names it; a --model string that cannot be a
    label is refused (exit 2) naming --k8s-model."""
    _, sets, _ = setup
    res = _serve_config(sets, "--target", "vllm-k8s", "--k8s-model", "llama3-8b")
    assert res.exit_code == 0, res.output
    doc = yaml.safe_load(res.output)
    assert doc["spec"]["baseModel"] == "llama3-8b"
    assert doc["metadata"]["name"] == "support-x"
    res = _serve_config(sets, "--target", "vllm-k8s")  # register.vllm.model is /models/base
    assert getattr(res.exception, "code", None) == 2, res.output
    message = str(res.exception)
    assert "'/models/base'" in message and "--k8s-model" in message and "\n" not in message
    for bad in (["--k8s-model", "org/model"], ["--k8s-model", "-x"], ["--k8s-model", "a" * 64]):
        res = _serve_config(sets, "--target", "vllm-k8s", *bad)
        assert getattr(res.exception, "code", None) == 2, (bad, res.output)
    res = _serve_config(sets, "--target", "vllm", "--k8s-model", "llama3-8b")
    assert getattr(res.exception, "code", None) == 2, res.output
    assert "only for --target vllm-k8s" in str(res.exception)
    # a --model string that is a valid label value is used as it is
    a = dataclasses.replace(served_adapter(setup[0]), base_model="Llama-3.1-8B_Instruct")
    assert yaml.safe_load(render(a, "vllm-k8s"))["spec"]["baseModel"] == "Llama-3.1-8B_Instruct"


def test_vllm_k8s_one_resource_per_use_case_and_how_to_switch(setup, tmp_path):
    """A resource per version (support-x-v0001, -v0002) with one adapterName: applying the next
    one left the pods on the old version (vLLM answers 400 "already loaded", the operator
    takes that as success), deleting the old unloaded the name. Now one name per use case,
    and the YAML says how to switch."""
    recipe, _, tmp = setup
    v2 = register_version(
        recipe, make_train_output(tmp_path / "out2", recipe.base_model.name, seed=2.0), {}
    )
    promote(tmp / "reg", "support-x", v2, why="next")
    docs = []
    for version in ("v0001", v2):
        a = dataclasses.replace(served_adapter(recipe, version), base_model="llama-8b")
        text = render(a, "vllm-k8s")
        docs.append(yaml.safe_load(text))
        head = text[: text.index("apiVersion:")]
        assert all(line.startswith("# ") for line in head.splitlines())
        flat = " ".join(line[2:] for line in head.splitlines())
        assert "does not reload a changed adapterPath" in flat
        assert "`kubectl delete loraadapter support-x`" in flat and "404" in flat
        assert "`kubectl apply`" in flat and "register.vllm" in flat
        assert "feinschliff registry promote" in flat
    assert [d["metadata"]["name"] for d in docs] == ["support-x", "support-x"]
    assert [d["metadata"]["labels"]["feinschliff/version"] for d in docs] == ["v0001", v2]
    paths = {d["spec"]["adapterSource"]["adapterPath"] for d in docs}
    assert len(paths) == 2


def test_ollama_modelfile_says_how_to_get_past_ollama_0_13(setup):
    """Ollama >= 0.13 refuses a PEFT adapter folder (ollama/ollama#13314): the Modelfile keeps
    the folder form and names the GGUF conversion; its paths are those of the `ollama create`
    machine."""
    a = served_adapter(setup[0])
    text = render(a, "ollama")
    lines = text.splitlines()
    assert "FROM /models/base" in lines and f"ADAPTER {a.path}" in lines
    hint = next(line for line in lines if "convert_lora_to_gguf.py" in line)
    assert hint.startswith("# ") and "ollama/ollama#13314" in hint
    assert f"--base /models/base {a.path} --outfile adapter.gguf" in hint
    assert "`ADAPTER ./adapter.gguf`" in hint
    assert "# the paths below are read by `ollama create` on the machine where it runs" in lines


def test_ollama_treats_a_hf_cache_snapshot_as_its_hub_id(setup, tmp_path):
    """Without register.vllm the base is the resolved HF cache snapshot, whose files are
    symlinks into ../../blobs: Ollama refuses them ("insecure path"). The Modelfile names a
    --local-dir download of the hub id instead."""
    snapshot = tmp_path / "hub" / "models--HuggingFaceTB--SmolLM2-135M" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    a = dataclasses.replace(served_adapter(setup[0]), base_model=str(snapshot))
    text = render(a, "ollama")
    assert "FROM ./SmolLM2-135M" in text.splitlines()
    assert "`hf download HuggingFaceTB/SmolLM2-135M --local-dir ./SmolLM2-135M`" in text
    assert str(snapshot) not in text
    no_org = dataclasses.replace(a, base_model="/c/hub/models--gpt2/snapshots/e7da7f2/")
    assert "FROM ./gpt2" in render(no_org, "ollama").splitlines()


def test_vllm_resolver_dir_is_shell_quoted(setup, tmp_path):
    """The python arguments were quoted, the export of the resolver dir not: a path with a
    space broke the sourced line."""
    a = dataclasses.replace(
        served_adapter(setup[0]), mode="resolver", resolver_dir=str(tmp_path / "res dir")
    )
    text = render(a, "vllm")
    export = next(x for x in text.splitlines() if "VLLM_LORA_RESOLVER_CACHE_DIR" in x)
    assert shlex.split(export) == [
        "export",
        f"VLLM_LORA_RESOLVER_CACHE_DIR={tmp_path / 'res dir'}",
    ]
    assert "export VLLM_ALLOW_RUNTIME_LORA_UPDATING=true" in text


def test_tgi_refuses_paths_lora_adapters_cannot_hold(setup):
    """LORA_ADAPTERS has no escaping: ',' splits the value into two adapters, '=' is an
    "Invalid LoRA adapter format", '@' a revision. Such a path is refused (exit 2, one line);
    a path with a space or quote is shell-quoted so the line can be sourced."""
    _, sets, _ = setup
    comma = [s.replace("/mnt/adapters", "/mnt/ad,apters") for s in sets]
    res = _serve_config(comma, "--target", "tgi")
    assert getattr(res.exception, "code", None) == 2, res.output
    assert "','" in str(res.exception) and "/mnt/ad,apters/support-x/v0001-" in str(res.exception)
    a = served_adapter(setup[0])
    quoted = dataclasses.replace(a, path="/mnt/my adapter's/support-x/v0001")
    line = next(x for x in render(quoted, "tgi").splitlines() if x.startswith("LORA_ADAPTERS="))
    assert shlex.split(line) == ["LORA_ADAPTERS=support-x=/mnt/my adapter's/support-x/v0001"]
    from feinschliff.serving.serve_config import ServeConfigError

    for char in ",=@":
        bad = dataclasses.replace(a, path=f"/mnt/ad{char}apters/support-x/v0001")
        with pytest.raises(ServeConfigError, match=f"'{char}'.*/mnt/ad{char}apters"):
            render(bad, "tgi")


def test_tgi_and_ollama(setup):
    a = served_adapter(setup[0])
    assert f"LORA_ADAPTERS=support-x={a.path}\n" in render(a, "tgi")
    lines = render(a, "ollama").splitlines()
    assert "FROM /models/base" in lines and f"ADAPTER {a.path}" in lines


def test_ollama_from_is_a_folder_not_a_hub_id(setup):
    """Ollama's FROM cannot pull a Hugging Face id: the Modelfile names a download folder."""
    a = dataclasses.replace(served_adapter(setup[0]), base_model="HuggingFaceTB/SmolLM2-135M")
    text = render(a, "ollama")
    lines = text.splitlines()
    assert "FROM ./SmolLM2-135M" in lines and f"ADAPTER {a.path}" in lines
    assert "download HuggingFaceTB/SmolLM2-135M (safetensors) into ./SmolLM2-135M" in text
    relative = dataclasses.replace(a, base_model="./weights/base")
    assert "FROM ./weights/base" in render(relative, "ollama").splitlines()


def test_cli_serve_config(setup):
    _, sets, _ = setup
    flags = [x for s in sets for x in ("--set", s)]
    runner = CliRunner()
    res = runner.invoke(app, ["serve-config", str(DEMO), "--target", "ollama", *flags])
    assert res.exit_code == 0, res.output
    path = served_adapter(setup[0]).path
    assert path.startswith("/mnt/adapters/support-x/v0001-")
    assert res.output.splitlines()[-1] == f"ADAPTER {path}"
    res = runner.invoke(app, ["serve-config", str(DEMO), "--target", "k8s", *flags])
    assert res.exit_code != 0 and "must be one of" in str(res.exception)


def test_an_unknown_version_is_a_wrong_argument(setup):
    """`serve-config --version v0009` exited 1 ("is not a registered version") where `registry
    show` of the same version exits 2 naming the versions there are."""
    _, sets, _ = setup
    flags = [x for s in sets for x in ("--set", s)]
    code, said = run_cli("serve-config", str(DEMO), "--version", "v0009", *flags)
    assert code == 2, said
    assert "no version 'v0009' of 'support-x' in the registry (it has v0001)" in said, said


def test_no_production_version_is_an_error(tmp_path):
    base = make_base(tmp_path / "base")
    recipe = load_recipe(DEMO, [f"base_model.name={base}", f"register.registry={tmp_path}"])
    with pytest.raises(RegistryError, match="no production version"):
        served_adapter(recipe)


def test_vllm_spec_validation():
    ok = {"servers": [{"url": "http://a:8000"}], "model": "m"}
    assert VllmSpec.model_validate(ok).mode == "runtime"
    for bad in (
        {"servers": []},
        {"servers": [{"url": "ftp://a"}]},
        {"servers": [{"url": "http://a", "api_key_env": "sk-123 secret"}]},
        {"mode": "resolver"},  # no resolver_dir
        {"keep_versions": 3, "max_loras": 4},  # no room for the stable name + staging
        {"api_key": "sk-123"},  # keys never go into a recipe
    ):
        with pytest.raises(ValidationError):
            VllmSpec.model_validate(ok | bad)


def test_registry_url_in_recipe(tmp_path):
    recipe = load_recipe(DEMO, [f"register.registry=file://{tmp_path}/reg"])
    assert recipe.register.registry == f"file://{tmp_path}/reg"
    with pytest.raises(RecipeError):
        load_recipe(DEMO, ["register.vllm={servers: [], model: m}"])


def _with_model(recipe, model):
    vllm = recipe.register.vllm.model_copy(update={"model": model})
    return recipe.model_copy(update={"register": recipe.register.model_copy(update={"vllm": vllm})})


def test_serving_config_for_another_base_model_is_refused(setup):
    """register.vllm.model naming another model than base_model printed a config that serves
    the adapter on it; now a clear error naming the YAML path and both models."""
    from feinschliff.serving.preflight import PreflightError

    recipe, sets, tmp_path = setup
    with pytest.raises(PreflightError) as err:
        served_adapter(_with_model(recipe, "Qwen/Qwen2.5-72B-Instruct"))
    assert "register.vllm.model 'Qwen/Qwen2.5-72B-Instruct'" in str(err.value)
    assert f"base model '{tmp_path / 'base'}'" in str(err.value)
    bad = [s.replace('"/models/base"', '"Qwen/Qwen2.5-72B-Instruct"') for s in sets]
    res = CliRunner().invoke(
        app, ["serve-config", str(DEMO), *[x for s in bad for x in ("--set", s)]]
    )
    assert getattr(res.exception, "code", None) == 2, res.output  # a recipe error: exit 2
    assert "register.vllm.model" in str(res.exception)


@pytest.mark.parametrize("cmd", ["reconcile", "retire"])
def test_registry_commands_refuse_servers_of_another_base_model(setup, cmd):
    """`registry reconcile` / `retire --recipe` load adapters into the recipe's servers too:
    the same check as register/promote, before any server or registry change."""
    _, sets, tmp_path = setup
    bad = [s.replace('"/models/base"', '"Qwen/Qwen2.5-72B-Instruct"') for s in sets]
    flags = [x for s in bad for x in ("--set", s)]
    args = (
        ["registry", "reconcile", str(DEMO), *flags]
        if cmd == "reconcile"
        else ["registry", "retire", "support-x", "v0001", "--why", "t", "--recipe", str(DEMO)]
        + flags
    )
    res = CliRunner().invoke(app, args)
    assert getattr(res.exception, "code", None) == 2, res.output  # bad input: exit 2
    assert "register.vllm.model" in str(res.exception)
    assert "retired" not in json.dumps(manifest(tmp_path / "reg", "support-x", "v0001"))
    from feinschliff.registry import retired

    assert retired(tmp_path / "reg", "support-x") == {}


def _fake_server(monkeypatch, model):
    """Every VllmClient talks to one stand-in replica whose --model is ``model``.

    A stand-in, though vLLM runs on this machine: the test needs a replica serving a model
    other than the recipe's (a 72B one no vLLM here can load), then one serving the synthetic
    make_base folder (zero weights and a config.json, no tokenizer), which vLLM cannot be
    started on; and the unit suite runs without vLLM. serve_demo against a real vLLM:
    tests/integration/test_vllm_registry.py::test_serve_demo_answers_a_german_prompt (the
    matching model only; the refusal of another model is checked only here).
    """
    import httpx

    from feinschliff.serving import deploy, vllm_client

    def handle(request):
        if request.url.path == "/v1/models":
            cards = [{"id": model, "root": model, "parent": None}]
            return httpx.Response(200, json={"object": "list", "data": cards})
        if "lora_adapter" in request.url.path:
            return httpx.Response(200, text="Success")
        asked = json.loads(request.content)["model"]
        answer = {"model": asked, "choices": [{"text": " ok", "message": {"content": "ok"}}]}
        return httpx.Response(200, json=answer)

    def client(server, **kw):
        return VllmClient(server, transport=httpx.MockTransport(handle), backoff_s=0, **kw)

    monkeypatch.setattr(vllm_client, "VllmClient", client)
    monkeypatch.setattr(deploy, "VllmClient", client)


def test_serve_demo_refuses_a_server_running_another_model(setup, monkeypatch):
    from feinschliff.serving.preflight import PreflightError
    from feinschliff.serving.publish import serve_demo

    recipe, sets, tmp_path = setup
    _fake_server(monkeypatch, "Qwen/Qwen2.5-72B-Instruct")
    with pytest.raises(PreflightError, match="http://vllm-9:8000 runs --model"):
        serve_demo(recipe, url="http://vllm-9:8000")
    flags = [x for s in sets for x in ("--set", s)]
    res = CliRunner().invoke(app, ["serve-demo", str(DEMO), "--url", "http://vllm-9:8000", *flags])
    assert getattr(res.exception, "code", None) == 2, res.output  # as register: exit 2
    assert "http://vllm-9:8000 runs --model" in str(res.exception)
    _fake_server(monkeypatch, str(tmp_path / "base"))
    assert serve_demo(recipe, url="http://vllm-9:8000").adapter == "ok"


@pytest.mark.parametrize("command", ["serve-config", "serve-demo"])
@pytest.mark.parametrize(
    "error",
    [
        PermissionError(13, "Permission denied", "/reg/support-x/aliases.json"),
        type("EndpointConnectionError", (Exception,), {"__module__": "botocore.exceptions"})(
            "Could not connect to the endpoint URL"
        ),
    ],
)
def test_store_failures_are_one_line_cli_errors(setup, monkeypatch, command, error):
    """As the `registry` commands: an OSError or a cloud SDK's error of the registry store is
    exit 1 with one line, no traceback."""
    import feinschliff.registry
    from feinschliff.cli.app import Failure

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(feinschliff.registry, "read_aliases", broken)
    _, sets, _ = setup
    flags = [x for s in sets for x in ("--set", s)]
    extra = ["--url", "http://vllm-9:8000"] if command == "serve-demo" else []
    res = CliRunner().invoke(app, [command, str(DEMO), *extra, *flags])
    assert isinstance(res.exception, Failure), res.exception
    assert res.exception.code == 1
    assert str(res.exception) == f"registry store failed: {error}"
