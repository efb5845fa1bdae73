"""Live promotion, rollback and reconcile against a stand-in for vLLM's adapter routes.

``FakeVllm`` answers at the HTTP boundary (httpx.MockTransport, the real VllmClient) the way
vLLM 0.32's ``OpenAIServingModels`` does: it stores the load request per name *including* its
``load_inplace`` flag (vLLM reuses that stored request for every later inference request, so a
kept ``load_inplace=True`` re-reads the adapter from disk on every engine step,
vllm-project/vllm#33791), refuses a second load of a name without ``load_inplace`` (400) and
answers 404 for unknown models. The happy paths run against a real vLLM in
tests/integration/test_vllm_registry.py.

Why a stand-in, though vLLM runs on this machine: a real vLLM keeps the stored load request to
itself (its /v1/models cards carry no ``load_inplace``), so whether a switch left
``load_inplace=True`` on the stable name can only be read off a stand-in; a real vLLM cannot be
made to refuse, on demand, the load of an adapter that preflight passed and that it loaded a
moment before (test_a_failed_switch_loads_the_old_version_back); and the unit suite (`make
unit`) runs without vLLM and the demo model. The real server: promote, rollback and retire live
in test_register_promote_rollback_live, drift repair in
test_keep_versions_and_reconcile_repairs_drift, a dead replica in
test_a_dead_replica_moves_nothing, concurrent promotions in
test_two_concurrent_promotions_exactly_one_wins, the resolver layout in
test_resolver_mode_writes_layout_the_server_loads (all tests/integration/test_vllm_registry.py),
and vLLM unreachable mid-promotion in
tests/reliability/test_vllm_reliability.py::test_vllm_unreachable_during_promotion.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from feinschliff import registry
from feinschliff.cli import app
from feinschliff.cli.app import Failure
from feinschliff.serving import deploy
from feinschliff.serving.vllm_client import VllmClient
from feinschliff.specs.register import VllmSpec
from tests.unit.adapter_factory import make_base, make_train_output, target_for

DEMO = Path(__file__).resolve().parents[2] / "recipes" / "demo-de.yaml"
URL = "http://vllm-0:8000"


class FakeVllm:
    """One replica: ``stored`` is name -> the stored load request (path, load_inplace)."""

    def __init__(self, model: str):
        self.model = model
        self.stored: dict[str, dict] = {}
        self.calls: list[tuple[str, dict]] = []
        self.fail_path: str | None = None  # loads from this path answer 500

    def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content or b"{}")
        route = request.url.path
        self.calls.append((route, body))
        if route == "/v1/models":
            cards = [{"id": self.model, "root": self.model, "parent": None}]
            cards += [
                {"id": n, "root": r["path"], "parent": self.model} for n, r in self.stored.items()
            ]
            return httpx.Response(200, json={"object": "list", "data": cards})
        name = body.get("lora_name") or body.get("model")
        if route == "/v1/load_lora_adapter":
            if name in self.stored and not body["load_inplace"]:
                return _error(400, f"The lora adapter '{name}' has already been loaded.")
            if body["lora_path"] == self.fail_path:
                return _error(500, "LoRA rank 64 is greater than max_lora_rank 16.")
            self.stored[name] = {"path": body["lora_path"], "load_inplace": body["load_inplace"]}
            return httpx.Response(200, text=f"Success: LoRA adapter '{name}' added successfully.")
        if route == "/v1/unload_lora_adapter":
            if self.stored.pop(name, None) is None:
                return _error(404, f"The lora adapter '{name}' cannot be found.")
            return httpx.Response(200, text=f"Success: LoRA adapter '{name}' removed.")
        if name != self.model and name not in self.stored:
            return _error(404, f"The model `{name}` does not exist.")
        return httpx.Response(200, json={"model": name, "choices": [{"text": " ok"}]})

    def mutations(self) -> list[tuple[str, str]]:
        return [(r[4:].split("_")[0], b["lora_name"]) for r, b in self.calls if "lora" in r]


def _error(status: int, message: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"message": message, "code": status}})


def route_to(monkeypatch, fake) -> None:
    """Every VllmClient that deploy makes talks to ``fake`` (no network, no retry waits)."""
    monkeypatch.setattr(
        deploy,
        "VllmClient",
        lambda server, **kw: VllmClient(
            server, transport=httpx.MockTransport(fake.handle), backoff_s=0, **kw
        ),
    )


@pytest.fixture()
def live(tmp_path, monkeypatch):
    """A local registry with three versions of use case ``s``, one fake replica, its spec."""
    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))
    base = make_base(tmp_path / "base")
    root = tmp_path / "reg"
    versions = [
        registry.register_adapter(
            root,
            "s",
            make_train_output(tmp_path / f"out-{seed}", str(base), seed=seed),
            {},
            target=target_for(base),
        )
        for seed in (1.0, 2.0, 3.0)
    ]
    fake = FakeVllm(str(base))
    route_to(monkeypatch, fake)
    spec = VllmSpec(servers=[{"url": URL}], model=str(base), adapter_dir=str(tmp_path / "srv"))
    return root, versions, fake, spec, target_for(base)


def test_switching_the_stable_name_leaves_no_load_inplace_on_it(live):
    """vLLM would re-read an adapter stored with load_inplace=True on every engine step: a
    switch is unload + load (a short 404 window), never an in-place load."""
    root, (v1, v2, _), fake, spec, target = live
    deploy.promote_live(root, "s", v1, spec, target, why="first")
    fake.calls.clear()
    report = deploy.promote_live(root, "s", v2, spec, target, why="second")
    assert fake.stored["s"] == {
        "path": deploy.stage_files(root, "s", v2, spec),
        "load_inplace": False,
    }
    assert not any(r["load_inplace"] for r in fake.stored.values()), fake.stored
    switch = [("load", f"s@{v2}"), ("unload", "s"), ("load", "s"), ("unload", f"s@{v1}")]
    assert fake.mutations() == switch
    assert [(a.op, a.name) for a in report.actions if a.op != "verify"] == [
        ("load", f"s@{v2}"),
        ("switch", "s"),
        ("unload", f"s@{v1}"),
    ]


def test_a_failed_switch_loads_the_old_version_back(live):
    root, (v1, v2, _), fake, spec, target = live
    deploy.promote_live(root, "s", v1, spec, target, why="first")
    old, new = deploy.stage_files(root, "s", v1, spec), deploy.stage_files(root, "s", v2, spec)
    fake.stored[f"s@{v2}"] = {"path": new, "load_inplace": False}  # staged and verified
    registry.promote(root, "s", v2, why="second")
    fake.fail_path = new
    with pytest.raises(deploy.DeployError, match="reconcile"):
        deploy.reconcile(root, "s", spec)
    assert fake.stored["s"] == {"path": old, "load_inplace": False}  # still served


@pytest.mark.parametrize("change", ["promote", "rollback"])
def test_aliases_moved_before_the_serve_lock_conflict_and_touch_no_server(
    live, monkeypatch, change
):
    """Expected aliases are read when the command starts and compared under the serve lock:
    whoever moved them meanwhile wins, and the loser sends not a single request."""
    root, (v1, v2, v3), fake, spec, target = live
    deploy.promote_live(root, "s", v1, spec, target, why="first")
    deploy.promote_live(root, "s", v2, spec, target, why="second")
    before = registry.read_aliases(root, "s")
    real_lock = registry.lock

    @contextmanager
    def raced(root_, use_case, name=".lock"):
        if name == ".serve.lock":  # another writer moved the aliases just before we got it
            if change == "promote":
                registry.promote(root_, use_case, v3, why="the other promotion")
            else:
                registry.set_alias(root_, use_case, "previous", v3, why="someone else")
        with real_lock(root_, use_case, name) as lease:
            yield lease

    monkeypatch.setattr(registry, "lock", raced)
    fake.calls.clear()
    with pytest.raises(registry.AliasConflict, match="changed by someone else"):
        if change == "promote":
            deploy.promote_live(root, "s", v1, spec, target, why="mine")
        else:
            deploy.rollback_live(root, "s", spec, target, why="mine")
    assert fake.calls == []
    moved = (
        {"production": v3, "previous": v2} if change == "promote" else {**before, "previous": v3}
    )
    assert registry.read_aliases(root, "s") == moved


def test_rollback_with_a_stale_expect_touches_no_server(live):
    root, (v1, v2, _), fake, spec, target = live
    deploy.promote_live(root, "s", v1, spec, target, why="first")
    deploy.promote_live(root, "s", v2, spec, target, why="second")
    fake.calls.clear()
    with pytest.raises(registry.AliasConflict):
        deploy.rollback_live(root, "s", spec, target, why="stale", expected=v1)
    assert fake.calls == []
    report = deploy.rollback_live(root, "s", spec, target, why="ok", expected=v2)
    assert report.production == v1
    assert fake.stored["s"]["path"] == deploy.stage_files(root, "s", v1, spec)


def test_resolver_layout_follows_a_changed_base_model(live, tmp_path):
    """The resolver loads <dir>/<name> only if base_model_name_or_path equals --model: a new
    register.vllm.model must rewrite it, not report 'already match'."""
    root, (v1, *_), _, spec, _ = live
    registry.promote(root, "s", v1, why="first")
    spec = spec.model_copy(update={"mode": "resolver", "resolver_dir": str(tmp_path / "rs")})
    deploy.reconcile(root, "s", spec)
    moved = spec.model_copy(update={"model": "/models/new"})
    report = deploy.reconcile(root, "s", moved)
    assert {a.name for a in report.actions if a.op == "write"} == {"s", f"s@{v1}"}
    for name in ("s", f"s@{v1}"):
        cfg = json.loads((tmp_path / "rs" / name / "adapter_config.json").read_text())
        assert cfg["base_model_name_or_path"] == "/models/new"
    assert deploy.reconcile(root, "s", moved).lines() == ["servers already match the registry"]


def _sets(tmp_path: Path, spec: VllmSpec, registry_dir: Path) -> list[str]:
    vllm = {"servers": [{"url": URL}], "model": spec.model, "adapter_dir": spec.adapter_dir}
    return [
        arg
        for s in (
            "use_case=s",
            f"base_model.name={spec.model}",
            f"register.registry={registry_dir}",
            f"register.vllm={json.dumps(vllm)}",
        )
        for arg in ("--set", s)
    ]


def _cli(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, list(args))
    if isinstance(res.exception, Failure):
        return res.exception.code, str(res.exception)
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.output


def test_cli_recipe_with_root_goes_live_on_that_registry(live, tmp_path):
    """--root names the registry, --recipe the servers: promote, rollback and retire change
    the servers too (they used to move only the alias and exit 0)."""
    root, (v1, v2, _), fake, spec, _ = live
    sets = [*_sets(tmp_path, spec, tmp_path / "elsewhere"), "--root", str(root)]
    recipe = ["--recipe", str(DEMO)]
    assert _cli("registry", "promote", "s", v1, *recipe, *sets)[0] == 0
    assert _cli("registry", "promote", "s", v2, *recipe, *sets)[0] == 0
    assert fake.stored["s"]["path"] == deploy.stage_files(root, "s", v2, spec)
    code, out = _cli("registry", "rollback", "s", *recipe, *sets)
    assert (code, out.splitlines()[-1]) == (0, f"s: production = {v1}")
    assert fake.stored["s"]["path"] == deploy.stage_files(root, "s", v1, spec)
    assert _cli("registry", "retire", "s", v2, "--why", "bad", *recipe, *sets)[0] == 0
    assert set(fake.stored) == {"s", f"s@{v1}"}
    assert not (tmp_path / "elsewhere").exists()


def test_cli_unreachable_registry_and_unprovisioned_base_are_clear_errors(live, tmp_path):
    root, (v1, *_), _, spec, _ = live
    code, out = _cli("registry", "list", "--root", "nosuchscheme://bucket/reg")
    assert code == 1 and "cannot open nosuchscheme://" in out
    registry.promote(root, "s", v1, why="first")
    sets = _sets(tmp_path, spec, root)
    sets[sets.index(f"base_model.name={spec.model}")] = "base_model.name=/nonexistent/base"
    code, out = _cli("serve-demo", str(DEMO), "--url", URL, *sets)
    assert code == 2 and out.startswith("cannot check adapters against base model"), out
    assert "adapter /nonexistent" not in out
