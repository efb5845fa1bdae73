"""Several use cases on one server can hold more adapters than its --max-loras.

The recipe check (``max_loras >= keep_versions + 2``) sees one use case only. On vLLM CPU, once
every slot is used, an adapter can be applied to base-model requests batched with adapter
requests (vLLM PRs #48421/#49656, shared FACTS 5), so staging and reconcile warn with the count
on the server and what to set (one slot spare) once a load would use every slot. Only a warning: on GPU vLLM more adapters than slots just swap.
Runs against test_serving_deploy's ``FakeVllm`` (the count is read from /v1/models).
"""

from __future__ import annotations

import logging

import pytest

from feinschliff import registry
from feinschliff.serving import deploy
from feinschliff.specs.register import VllmSpec
from tests.unit.adapter_factory import make_base, make_train_output, target_for
from tests.unit.test_serving_deploy import FakeVllm, route_to

URL = "http://vllm-0:8000"


@pytest.fixture()
def shared(tmp_path, monkeypatch):
    """Use case ``s`` (one version) with max_loras 3, on a replica that serves ``other`` too."""
    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))
    base = make_base(tmp_path / "base")
    root = tmp_path / "reg"
    out = make_train_output(tmp_path / "out", str(base))
    version = registry.register_adapter(root, "s", out, {}, target=target_for(base))
    fake = FakeVllm(str(base))
    route_to(monkeypatch, fake)
    spec = VllmSpec(
        servers=[{"url": URL}],
        model=str(base),
        adapter_dir=str(tmp_path / "srv"),
        keep_versions=1,
        max_loras=3,
    )
    return root, version, fake, spec, target_for(base)


def _other_use_case(fake: FakeVllm, n: int) -> None:
    for name in ["other", "other@v0001", "other@v0002"][:n]:
        fake.stored[name] = {"path": f"/srv/other/{name}", "load_inplace": False}


def test_more_adapters_than_max_loras_on_a_shared_server_warn(shared, caplog):
    root, version, fake, spec, target = shared
    _other_use_case(fake, 1)  # 1 + s@v0001 staged = 2 of 3 slots; + the stable name s = 3
    with caplog.at_level(logging.WARNING, logger="feinschliff.serving"):
        deploy.promote_live(root, "s", version, spec, target, why="first")

    assert registry.read_aliases(root, "s")["production"] == version  # a warning, no refusal
    assert set(fake.stored) == {"other", "s", f"s@{version}"}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert URL in warnings[0] and "3 adapters" in warnings[0]
    assert "max_loras=3" in warnings[0] and "--max-loras" in warnings[0]
    assert "keep_versions + 1" in warnings[0] and "at least 4" in warnings[0]


def test_staging_that_fills_every_slot_warns(shared, caplog):
    root, version, fake, spec, target = shared
    _other_use_case(fake, 2)  # 2 + s@v0001 staged = 3 = max_loras (and reconcile adds s: 4)
    with caplog.at_level(logging.WARNING, logger="feinschliff.serving"):
        deploy.promote_live(root, "s", version, spec, target, why="first")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert ["3 adapters" in w for w in warnings] == [True, False]
    assert "4 adapters" in warnings[1] and "at least 5" in warnings[1]


def test_adapters_with_a_slot_spare_do_not_warn(shared, caplog):
    root, version, fake, spec, target = shared  # s@v0001 + s = 2: one of max_loras 3 spare
    with caplog.at_level(logging.WARNING, logger="feinschliff.serving"):
        deploy.promote_live(root, "s", version, spec, target, why="first")
        deploy.reconcile(root, "s", spec)
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == []
