"""The history artifact of a flow run stays bounded: a use case retrained weekly for years has
hundreds of versions, and the plot's width (and the artifact, stored again each run) grew with
all of them. A registry it cannot read is a warning, never a failed run."""

from __future__ import annotations

import logging

from feinschliff import registry_history, registry_history_view
from feinschliff.recipe_loader import load_recipe
from feinschliff.registry_history import VersionRecord
from flows import artifacts
from tests.unit.test_train_review_fixes import DEMO


def test_the_plot_shows_the_newest_versions_and_the_table_the_newest_rows(monkeypatch):
    records = [VersionRecord(version=f"v{n:04d}", state="superseded") for n in range(1, 351)]
    drawn, published = [], []
    monkeypatch.setattr(registry_history, "use_case_history", lambda root, uc: records)
    monkeypatch.setattr(
        registry_history_view,
        "draw_history",
        lambda recs, metrics, out, use_case: (drawn.extend(recs), out.write_bytes(b"png")),
    )
    monkeypatch.setattr(artifacts, "create_markdown_artifact", lambda md, **k: published.append(md))
    artifacts.publish_history(load_recipe(DEMO))
    assert len(drawn) == artifacts.HISTORY_PLOTTED and drawn[-1].version == "v0350"
    (markdown,) = published
    assert "v0350" in markdown and "v0330" not in markdown  # the newest 20 rows


def test_a_registry_it_cannot_read_is_a_warning(monkeypatch, caplog):
    def unreadable(root, use_case):
        raise PermissionError(13, "Permission denied", "/srv/registry")

    monkeypatch.setattr(registry_history, "use_case_history", unreadable)
    with caplog.at_level(logging.WARNING):
        artifacts.publish_history(load_recipe(DEMO))
    assert "registry history artifact skipped: PermissionError" in caplog.text
