"""A disk error while writing serving files after production moved names the way out.

The alias has moved by then (the new version was verified on every replica); a full or broken
serving volume must say which version is production now and that `registry reconcile`
converges, not end in a bare OSError. The volume is broken for real: the resolver folder is
replaced by a file once the alias moved (root ignores permissions, so no chmod).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from feinschliff import registry
from feinschliff.serving import deploy
from tests.unit.adapter_factory import target_for
from tests.unit.test_serving_resolver_prune import resolver  # noqa: F401 - the fixture


def test_a_disk_error_after_the_alias_moved_names_production_and_reconcile(resolver, tmp_path):  # noqa: F811
    root, (v1, v2), _fake, spec, rdir = resolver

    def break_the_volume() -> None:
        rdir.rename(tmp_path / "rs-moved")
        rdir.write_text("not a folder")

    with pytest.raises(deploy.DeployError) as caught:
        deploy.promote_live(
            root,
            "s",
            v2,
            spec,
            target_for(Path(spec.model)),
            why="second",
            on_promoted=break_the_volume,
        )
    message = str(caught.value)
    assert f"production of s is {v2} now" in message
    assert "registry reconcile" in message and "File exists" in message
    assert registry.read_aliases(root, "s")["production"] == v2
