"""Registry and serving fixes after a review: a reconcile against a wrong registry, a stale
gate baseline on `register --promote`, promotion/serve-config against changed serving
settings, serve-demo's local paths, and a directory symlink in an adapter.

vLLM is the ``FakeVllm`` stand-in of test_serving_deploy.py (why: see that module).
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from feinschliff import registry
from feinschliff.artifacts import AdapterRef, mark_complete
from feinschliff.cli import app
from feinschliff.recipe_loader import load_recipe
from feinschliff.serving import deploy, publish, vllm_client, vllm_server
from feinschliff.serving.preflight import PreflightError, preflight
from feinschliff.serving.vllm_client import VllmClient
from tests.unit.adapter_factory import make_adapter, make_base, make_train_output, target_for
from tests.unit.test_serving_deploy import FakeVllm

DEMO = Path(__file__).resolve().parents[2] / "recipes" / "demo-de.yaml"
UC = "uc-x"
URL = "http://vllm-0:8000"
GATE = "gate.rules=[{rule: min, metric: de_wissen_mc/acc_norm, threshold: 0.4}]"


class ChatFake(FakeVllm):
    """FakeVllm that also answers chat completions (serve-demo asks one), and refuses to load a
    path that does not exist on this machine (as a local vLLM would)."""

    def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content or b"{}")
        if request.url.path == "/v1/load_lora_adapter" and not Path(body["lora_path"]).is_dir():
            self.calls.append((request.url.path, body))
            return httpx.Response(404, json={"error": {"message": "No adapter found"}})
        if request.url.path == "/v1/chat/completions":
            return httpx.Response(200, json={"choices": [{"message": {"content": "ok"}}]})
        return super().handle(request)


@pytest.fixture()
def env(tmp_path, monkeypatch):
    """A base model, an (empty) registry path, one fake replica and CLI --set flags for a recipe
    whose register.vllm lists it (``vllm=False``: registry only)."""
    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))
    base = make_base(tmp_path / "base")
    fake = ChatFake(str(base))

    def client(server, **kw):
        return VllmClient(server, transport=httpx.MockTransport(fake.handle), backoff_s=0, **kw)

    monkeypatch.setattr(deploy, "VllmClient", client)
    monkeypatch.setattr(vllm_client, "VllmClient", client)

    def sets(*extra: str, vllm: bool = True) -> list[str]:
        spec = {"servers": [{"url": URL}], "model": str(base), "adapter_dir": str(tmp_path / "srv")}
        flags = [
            f"use_case={UC}",
            f"base_model.name={base}",
            f"register.registry={tmp_path / 'reg'}",
        ]
        flags += [f"register.vllm={json.dumps(spec)}"] if vllm else []
        return [x for s in [*flags, *extra] for x in ("--set", s)]

    return base, tmp_path, fake, sets


def _cli(*args: str):
    res = CliRunner().invoke(app, list(args))
    code = getattr(res.exception, "code", None) if res.exception else res.exit_code
    return code, res.output + str(res.exception or "")


def _register(env, seed: float, *flags: str, rank: int = 8) -> str:
    base, tmp, _, sets = env
    out = make_train_output(tmp / f"out-{seed}", str(base), seed=seed, rank=rank)
    code, said = _cli("register", str(DEMO), "--adapter", out.path, *flags, *sets())
    assert code == 0, said
    return said.strip().splitlines()[-1].split("/")[-1]


# ------------------------------------------------------------------------ F1: reconcile


def test_reconcile_with_a_mistyped_root_exits_2_and_unloads_nothing(env):
    """`registry reconcile RECIPE --root <typo>` read a missing registry as 'no production'
    and unloaded the use case from every replica (exit 0), creating the typo'd folder."""
    _, tmp, fake, sets = env
    _register(env, 1.0, "--promote")
    served = dict(fake.stored)
    assert set(served) == {UC, f"{UC}@v0001"}
    typo = tmp / "regg"
    code, said = _cli("registry", "reconcile", str(DEMO), "--root", str(typo), *sets())
    assert code == 2, said
    assert "no registry at" in said
    assert fake.stored == served and not typo.exists()
    with pytest.raises(registry.RegistryError, match="no use case"):  # the library too
        deploy.reconcile(typo, UC, load_recipe(DEMO, sets()[1::2]).register.vllm)
    assert fake.stored == served and not typo.exists()


def test_reconcile_refuses_to_unserve_the_stable_name_without_production(env):
    """A registry that has the use case but no production (recreated, or another one) must not
    take the stable name away from clients unless asked: refused before any server change."""
    base, tmp, fake, sets = env
    _register(env, 1.0, "--promote")
    served = dict(fake.stored)
    other = tmp / "other-reg"
    registry.register_adapter(
        other, UC, make_train_output(tmp / "o", str(base), seed=9.0), {}, target=target_for(base)
    )
    spec = load_recipe(DEMO, sets()[1::2]).register.vllm
    with pytest.raises(deploy.DeployError, match="refusing to unload"):
        deploy.reconcile(other, UC, spec)
    assert fake.stored == served
    code, said = _cli("registry", "reconcile", str(DEMO), "--root", str(other), *sets())
    assert code == 1 and "--allow-unserve" in said, said
    assert fake.stored == served
    code, said = _cli(
        "registry", "reconcile", str(DEMO), "--root", str(other), "--allow-unserve", *sets()
    )
    assert code == 0, said
    assert fake.stored == {}


def test_a_failed_first_promotion_keeps_a_stable_name_it_did_not_load(env, monkeypatch):
    """The cleanup after a failed promotion into a registry without production unloads what it
    staged, not the stable name someone else's registry serves."""
    base, tmp, fake, sets = env
    _register(env, 1.0, "--promote")
    other = tmp / "other-reg"
    v = registry.register_adapter(
        other, UC, make_train_output(tmp / "o", str(base), seed=9.0), {}, target=target_for(base)
    )

    def fails(*a, **kw):
        raise registry.RegistryError("store down")

    monkeypatch.setattr(deploy.registry, "promote", fails)
    spec = load_recipe(DEMO, sets()[1::2]).register.vllm
    with pytest.raises(registry.RegistryError, match="store down"):
        deploy.promote_live(other, UC, v, spec, target_for(base), why="t")
    assert UC in fake.stored and f"{UC}@{v}" not in fake.stored


# ------------------------------------------------------------- F2: register --report stale


def _report(tmp: Path, name: str, candidate: AdapterRef, production: str | None) -> Path:
    models = {"base": {"adapter_sha256": None}, "candidate": {"adapter_sha256": candidate.sha256}}
    if production is not None:
        models["production"] = {"adapter_sha256": production}
    metric = {"value": 0.5, "stderr": 0.01, "samples": 100}
    path = tmp / f"{name}.json"
    path.write_text(json.dumps({"models": models, "metrics": {"candidate": {_M: metric}}}))
    return path


_M = "de_wissen_mc/acc_norm"


def test_register_promote_refuses_a_report_made_against_another_production(env):
    base, tmp, _, sets = env
    reg = tmp / "reg"
    v1 = _register(env, 1.0, "--promote")
    cand = make_train_output(tmp / "cand", str(base), seed=5.0)
    stale = _report(tmp, "stale", cand, registry.version_adapter(reg, UC, v1).sha256)
    v2 = _register(env, 2.0, "--promote")
    args = ["register", str(DEMO), "--adapter", cand.path, "--promote", *sets(GATE)]
    code, said = _cli(*args[:4], "--report", str(stale), *args[4:])
    assert code == 2, said
    assert f"production {v1}" in said and f"production is now {v2}" in said, said
    assert "re-run `evaluate`" in said
    assert registry.read_aliases(reg, UC)["production"] == v2
    assert registry.versions(reg, UC) == [v1, v2]  # refused before anything was written
    # a report without production while there is one now
    code, said = _cli(*args[:4], "--report", str(_report(tmp, "none", cand, None)), *args[4:])
    assert code == 2 and "no production" in said, said
    # the report about the current production passes
    fresh = _report(tmp, "fresh", cand, registry.version_adapter(reg, UC, v2).sha256)
    code, said = _cli(*args[:4], "--report", str(fresh), *args[4:])
    assert code == 0, said
    assert registry.read_aliases(reg, UC)["production"] == "v0003"


def test_register_promote_refuses_a_report_with_a_production_that_is_gone(env):
    base, tmp, _, sets = env
    cand = make_train_output(tmp / "cand", str(base), seed=5.0)
    report = _report(tmp, "r", cand, "ab" * 32)
    code, said = _cli(
        "register", str(DEMO), "--adapter", cand.path, "--report", str(report), "--promote",
        *sets(GATE),
    )  # fmt: skip
    assert code == 2 and "there is no production now" in said, said
    assert not (tmp / "reg" / UC).exists()


def test_register_promote_is_a_compare_and_swap_on_the_reports_baseline(env, monkeypatch):
    """A production that moves between the check and the promotion is a conflict (exit 1)."""
    base, tmp, _, sets = env
    reg = tmp / "reg"
    v1 = _register(env, 1.0, "--promote")
    v2 = _register(env, 2.0)
    cand = make_train_output(tmp / "cand", str(base), seed=5.0)
    report = _report(tmp, "r", cand, registry.version_adapter(reg, UC, v1).sha256)
    real = publish.register_version

    def and_meanwhile(*a, **kw):  # another operator promotes while this one registers
        version = real(*a, **kw)
        registry.promote(reg, UC, v2, why="someone else")
        return version

    monkeypatch.setattr(publish, "register_version", and_meanwhile)
    code, said = _cli(
        "register", str(DEMO), "--adapter", cand.path, "--report", str(report), "--promote",
        *sets(GATE, vllm=False),
    )  # fmt: skip
    assert code == 1 and "conflict" in said, said
    assert registry.read_aliases(reg, UC)["production"] == v2


# --------------------------------------------- F3: preflight against the recipe as it is now


def test_registry_only_promote_rollback_and_serve_config_check_the_current_rank(env, monkeypatch):
    """A rank-32 version registered under max_lora_rank 64 does not fit servers with 16: promote,
    rollback and serve-config say so (exit 2) also without register.vllm."""
    _, tmp, _, sets = env
    reg = tmp / "reg"
    wide = ["--set", "register.max_lora_rank=64"]
    code, said = _cli(
        "register", str(DEMO), "--adapter", str(_out(env, 1.0, 32)), *sets(vllm=False), *wide
    )
    assert code == 0, said
    promote = ["registry", "promote", UC, "v0001", "--recipe", str(DEMO), *sets(vllm=False)]
    code, said = _cli(*promote)
    assert code == 2 and "LoRA rank 32 is greater than max_lora_rank 16" in said, said
    assert "production" not in registry.read_aliases(reg, UC)
    # in production with rank 64 allowed, then v0002 (rank 8) on top: previous = v0001
    assert _cli(*promote, *wide)[0] == 0
    code, said = _cli(
        "register", str(DEMO), "--adapter", str(_out(env, 2.0, 8)), "--promote", *sets(vllm=False)
    )
    assert code == 0, said
    aliases = registry.read_aliases(reg, UC)
    code, said = _cli("registry", "rollback", UC, "--recipe", str(DEMO), *sets(vllm=False))
    assert code == 2 and "LoRA rank 32" in said, said
    assert registry.read_aliases(reg, UC) == aliases
    assert _cli("registry", "rollback", UC, "--recipe", str(DEMO), *sets(vllm=False), *wide)[0] == 0
    for vllm in (False, True):
        code, said = _cli("serve-config", str(DEMO), *sets(vllm=vllm))
        assert code == 2 and "LoRA rank 32" in said, (vllm, said)
        assert _cli("serve-config", str(DEMO), *sets(vllm=vllm), *wide)[0] == 0
    # servers elsewhere, no base weights here: still refused, by the adapter's config

    def no_weights(recipe):
        raise PreflightError(recipe.base_model.name, ["not available locally"])

    monkeypatch.setattr(publish, "base_target", no_weights)
    code, said = _cli("serve-config", str(DEMO), *sets())
    assert code == 2 and "LoRA rank 32 is greater than max_lora_rank 16" in said, said
    assert _cli("serve-config", str(DEMO), *sets(), *wide)[0] == 0
    # an operator's registry-only rollback or promotion from a machine without the weights
    # (an emergency rollback from a laptop) is checked by the adapter's config alone
    assert registry.read_aliases(reg, UC)["production"] == "v0001"
    rollback = ["registry", "rollback", UC, "--recipe", str(DEMO), *sets(vllm=False)]
    code, said = _cli(*rollback)
    assert code == 0 and registry.read_aliases(reg, UC)["production"] == "v0002", said
    code, said = _cli(*promote)
    assert code == 2 and "LoRA rank 32 is greater than max_lora_rank 16" in said, said
    assert _cli(*promote, *wide)[0] == 0


def _out(env, seed: float, rank: int) -> Path:
    base, tmp, _, _ = env
    return Path(make_train_output(tmp / f"o-{seed}", str(base), seed=seed, rank=rank).path)


# ------------------------------------------------------------------ F4: serve-demo local paths


def test_serve_demo_without_url_loads_local_paths_with_the_recipes_max_loras(env, monkeypatch):
    """The local server reads adapter_dir itself: server_adapter_dir (the pods' mount path) is
    not what it is told to load; it is started with register.vllm.max_loras."""
    base, tmp, fake, sets = env
    recipe = load_recipe(DEMO, sets()[1::2])
    vllm = recipe.register.vllm.model_copy(
        update={"server_adapter_dir": "/adapters", "keep_versions": 3, "max_loras": 6}
    )
    recipe = recipe.model_copy(
        update={"register": recipe.register.model_copy(update={"vllm": vllm})}
    )
    v = publish.register_version(recipe, make_train_output(tmp / "o", str(base)), {})
    registry.promote(publish.registry_root(recipe), UC, v, why="registry only")
    started: dict = {}

    class Proc:
        url, ready_s = "http://127.0.0.1:9999", 1.0

        def rss_mb(self) -> float:
            return 0.0

        def stop(self) -> None:
            started["stopped"] = True

    def start(model, **kw):
        started.update(kw)
        return Proc()

    monkeypatch.setattr(vllm_server, "install_vllm", lambda: tmp / "venv")
    monkeypatch.setattr(vllm_server, "start_vllm", start)
    answer = publish.serve_demo(recipe, workdir=tmp / "demo")
    assert answer.adapter == "ok" and started["max_loras"] == 6 and started["stopped"]
    loads = [b["lora_path"] for r, b in fake.calls if r == "/v1/load_lora_adapter"]
    assert loads and all(p.startswith(str(tmp / "srv")) for p in loads), loads


# --------------------------------------------------------------- F5: directory symlink loop


def test_a_symlink_to_the_adapter_folder_itself_is_refused_before_anything_is_written(env):
    """`loop -> .` passed preflight (its target is the folder itself), then the registry copy
    recursed into it until shutil.Error; now a PreflightError (exit 2), nothing written."""
    base, tmp, _, sets = env
    for name, target in (("loop", "."), ("sub/up", "..")):
        out = tmp / f"out-{name.replace('/', '-')}"
        adapter = make_adapter(out / "adapter", str(base))
        (adapter / name).parent.mkdir(exist_ok=True)
        (adapter / name).symlink_to(target, target_is_directory=True)
        (out / "metrics.json").write_text("{}")
        ref = AdapterRef(path=str(out), sha256=mark_complete(out))
        with pytest.raises(PreflightError, match=f"{name} is a symlink to a directory"):
            preflight(adapter, target_for(base))
        with pytest.raises(PreflightError):
            registry.register_adapter(tmp / "reg", UC, ref, {}, target=target_for(base))
        assert not (tmp / "reg").exists()
        code, said = _cli("register", str(DEMO), "--adapter", str(out), *sets(vllm=False))
        assert code == 2 and "symlink to a directory" in said, said
        assert not (tmp / "reg").exists()


def test_register_report_promote_hashes_the_adapter_once(env, monkeypatch):
    """The baseline check and the registry's dedup key share one hash of the adapter folder
    (the report compared with v1, but the candidate itself went into production since)."""
    import feinschliff.artifacts
    import feinschliff.registry_write

    base, tmp, _, sets = env
    reg = tmp / "reg"
    v1 = _register(env, 1.0, "--promote")
    cand = make_train_output(tmp / "cand", str(base), seed=5.0)
    report = _report(tmp, "r", cand, registry.version_adapter(reg, UC, v1).sha256)
    promoted = ["register", str(DEMO), "--adapter", cand.path, "--promote", *sets(vllm=False)]
    assert _cli(*promoted)[0] == 0
    v2 = registry.read_aliases(reg, UC)["production"]
    real, hashed = feinschliff.artifacts.hash_tree, []

    def counting(path, *a, **kw):
        hashed.append(Path(path))
        return real(path, *a, **kw)

    monkeypatch.setattr(feinschliff.artifacts, "hash_tree", counting)
    monkeypatch.setattr(feinschliff.registry_write, "hash_tree", counting)
    code, said = _cli(
        "register", str(DEMO), "--adapter", cand.path, "--report", str(report), "--promote",
        *sets(GATE, vllm=False),
    )  # fmt: skip
    assert code == 0, said
    assert hashed.count(Path(cand.path) / "adapter") == 1, hashed
    assert v2 != v1 and registry.read_aliases(reg, UC)["production"] == v2


def test_register_refuses_a_report_of_another_use_case(env):
    """Its gate decision was made on another use case's scores: nothing is registered."""
    base, tmp, _, sets = env
    cand = make_train_output(tmp / "cand", str(base), seed=5.0)
    report = _report(tmp, "r", cand, None)
    report.write_text(json.dumps({**json.loads(report.read_text()), "use_case": "billing-de"}))
    code, said = _cli(
        "register", str(DEMO), "--adapter", cand.path, "--report", str(report), "--promote",
        *sets(GATE, vllm=False),
    )  # fmt: skip
    assert code == 2 and f"evaluated use case 'billing-de', the recipe is '{UC}'" in said, said
    assert not (tmp / "reg" / UC).exists()


def test_register_promote_without_a_report_says_no_gate_applied(env):
    base, tmp, _, sets = env
    out = make_train_output(tmp / "out", str(base), seed=3.0)
    code, said = _cli("register", str(DEMO), "--adapter", out.path, "--promote", *sets(vllm=False))
    assert code == 0 and "--promote without --report applies no gate" in said, said
    code, said = _cli("register", str(DEMO), "--adapter", out.path, *sets(vllm=False))
    assert code == 0 and "applies no gate" not in said, said
