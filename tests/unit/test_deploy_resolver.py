"""Resolver mode: the folders written for vLLM's lora_filesystem_resolver must be loadable by it."""

from __future__ import annotations

import json

from feinschliff import registry
from feinschliff.artifacts import COMPLETE, mark_complete
from feinschliff.serving import deploy
from feinschliff.specs.register import VllmSpec
from tests.unit.adapter_factory import adapter_config, make_base, make_train_output, target_for


def test_resolver_layout_writes_peft_type_when_the_adapter_lacks_it(tmp_path, monkeypatch):
    """vLLM 0.32's FilesystemResolver reads adapter_config["peft_type"] without a default (a
    KeyError for the request); preflight accepts a config without it (vLLM's loader defaults to
    LORA), so the resolver copy gets peft_type LORA. A folder an older feinschliff wrote
    without it is rewritten, though its content hash is unchanged."""
    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))
    base = make_base(tmp_path / "base")
    cfg = adapter_config(str(base))
    del cfg["peft_type"]
    out = make_train_output(tmp_path / "out", str(base), config=cfg)
    root = tmp_path / "reg"
    version = registry.register_adapter(root, "s", out, {}, target=target_for(base))
    registry.promote(root, "s", version, why="first")
    rdir = tmp_path / "rs"
    spec = VllmSpec(
        servers=[{"url": "http://vllm-0:8000"}],
        model=str(base),
        mode="resolver",
        resolver_dir=str(rdir),
    )
    deploy.reconcile(root, "s", spec)
    for name in ("s", f"s@{version}"):
        written = json.loads((rdir / name / "adapter_config.json").read_text())
        assert written["peft_type"] == "LORA"
        assert written["base_model_name_or_path"] == str(base)
    # as an older version left it: no peft_type, marker complete
    old = rdir / "s"
    written = json.loads((old / "adapter_config.json").read_text())
    del written["peft_type"]
    (old / "adapter_config.json").write_text(json.dumps(written))
    marker = json.loads((old / COMPLETE).read_text())
    mark_complete(old, **{k: v for k, v in marker.items() if k != "sha256"})
    report = deploy.reconcile(root, "s", spec)
    assert [(a.op, a.name) for a in report.actions] == [("write", "s")]
    assert json.loads((old / "adapter_config.json").read_text())["peft_type"] == "LORA"
    assert deploy.reconcile(root, "s", spec).lines() == ["servers already match the registry"]
