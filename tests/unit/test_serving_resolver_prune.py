"""Resolver mode removes a superseded pinned folder only once no server has it loaded.

A server keeps a resolved adapter registered by its path and re-reads that path after the
adapter was evicted from its CPU cache; a deleted folder then fails inside the engine step and
takes the replica down (vLLM 0.32 ``LRUCacheWorkerLoRAManager.add_adapter``). A real vLLM
cannot run in unit tests, and eviction cannot be forced on one anyway: ``FakeVllm`` (see
test_serving_deploy.py) stands in, with the pinned name "resolved" by storing it.
"""

from __future__ import annotations

import httpx
import pytest

from feinschliff import registry
from feinschliff.serving import deploy
from feinschliff.specs.register import VllmSpec
from tests.unit.adapter_factory import make_base, make_train_output, target_for
from tests.unit.test_deploy_resolver_verify import ResolvingVllm
from tests.unit.test_serving_deploy import route_to

URL = "http://vllm-0:8000"


@pytest.fixture()
def resolver(tmp_path, monkeypatch):
    """Two versions of use case ``s`` (v1 production), one fake replica that resolved ``s@v1``
    from the resolver folder, and a resolver-mode spec."""
    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))
    base = make_base(tmp_path / "base")
    root = tmp_path / "reg"
    v1, v2 = (
        registry.register_adapter(
            root,
            "s",
            make_train_output(tmp_path / f"o{seed}", str(base), seed=seed),
            {},
            target=target_for(base),
        )
        for seed in (1.0, 2.0)
    )
    rdir = tmp_path / "rs"
    fake = ResolvingVllm(str(base), rdir)  # a completion for a pinned name resolves it
    route_to(monkeypatch, fake)
    spec = VllmSpec(
        servers=[{"url": URL}], model=str(base), mode="resolver", resolver_dir=str(rdir)
    )
    registry.promote(root, "s", v1, why="first")
    deploy.reconcile(root, "s", spec)
    fake.stored[f"s@{v1}"] = {"path": str(rdir / f"s@{v1}"), "load_inplace": False}
    return root, (v1, v2), fake, spec, rdir


def test_a_superseded_pinned_folder_is_unloaded_before_it_is_removed(resolver):
    root, (v1, v2), fake, spec, rdir = resolver
    present_at_unload = []
    handle = fake.handle

    def watch(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/unload_lora_adapter":
            present_at_unload.append((rdir / f"s@{v1}").exists())
        return handle(request)

    fake.handle = watch
    registry.promote(root, "s", v2, why="second")
    report = deploy.reconcile(root, "s", spec)

    assert ("remove", f"s@{v1}") in [(a.op, a.name) for a in report.actions]
    assert not (rdir / f"s@{v1}").exists()
    assert f"s@{v1}" not in fake.stored  # not left registered on a path that is gone
    # unloaded while the folder was there (nothing could re-read a missing path), then once
    # more after it was moved aside (a request in between may have resolved it again)
    assert present_at_unload == [True, False]
    assert sorted(p.name for p in rdir.iterdir()) == ["s", f"s@{v2}"]


def test_a_pinned_folder_stays_while_a_server_cannot_unload_it(resolver):
    root, (v1, v2), fake, spec, rdir = resolver
    handle = fake.handle

    def down(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/unload_lora_adapter":
            raise httpx.ConnectError("connection refused", request=request)
        return handle(request)

    fake.handle = down
    registry.promote(root, "s", v2, why="second")
    report = deploy.reconcile(root, "s", spec)

    kept = [a for a in report.actions if a.op == "keep"]
    assert [a.name for a in kept] == [f"s@{v1}"] and URL in kept[0].detail
    assert (rdir / f"s@{v1}" / "adapter_config.json").exists()
    assert sorted(p.name for p in rdir.iterdir()) == ["s", f"s@{v1}", f"s@{v2}"]

    fake.handle = handle  # the server is back: the next reconcile finishes the job
    report = deploy.reconcile(root, "s", spec)
    assert [(a.op, a.name) for a in report.actions] == [("remove", f"s@{v1}")]
    assert f"s@{v1}" not in fake.stored
