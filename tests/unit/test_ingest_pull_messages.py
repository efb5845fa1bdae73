"""What a failed Langfuse pull says: the keys only where the server refused them, where each
key came from (a stale environment variable shadows a Prefect Secret block), and which project
the keys read when it holds nothing (the run failed with "<hashed mirror folder>: no Langfuse
observations ... found"). No message holds a key's value.
"""

from __future__ import annotations

import json

import pytest

from feinschliff.ingest import run_ingest
from feinschliff.ingest.stage import IngestError, MissingSecret
from tests.unit.test_ingest_live import PUBLIC, SECRET, pull_spec, serving, use_keys
from tests.unit.test_ingest_pull_errors import closed_port

EMPTY = ("pk-lf-empty", "sk-lf-empty")


@pytest.fixture()
def lf(home, monkeypatch):
    with serving() as srv:
        use_keys(monkeypatch, srv, PUBLIC, SECRET)
        srv.projects[EMPTY] = ("cm-empty-project", {"observations": [], "scores": []})
        monkeypatch.setattr("feinschliff.ingest.langfuse_http.time.sleep", lambda s: None)
        yield srv


def _fail(spec, out) -> str:
    with pytest.raises(IngestError) as caught:
        run_ingest(spec, out)
    return str(caught.value)


def test_keys_of_an_empty_project_are_named_with_the_project(lf, home, monkeypatch, tmp_path):
    use_keys(monkeypatch, lf, *EMPTY)
    for attempt in range(2):  # the same every run, and no empty batch piles up
        said = _fail(pull_spec(name="support-answer"), tmp_path / f"out{attempt}")
        assert "no Langfuse observations, scores" not in said and "mirror" not in said
        assert lf.url in said and "project cm-empty-project" in said, said
        assert "GENERATION observations with name 'support-answer' and no scores" in said
        assert "public key: environment variable LANGFUSE_PUBLIC_KEY" in said
        assert "secret key: environment variable LANGFUSE_SECRET_KEY" in said
        assert EMPTY[0] not in said and EMPTY[1] not in said
    assert list((home / "ingest" / "mirror").rglob("*.json")) == []


def test_a_server_error_does_not_blame_the_keys(lf, tmp_path):
    lf.faults = [("observations", 500, {})] * 4
    said = _fail(pull_spec(), tmp_path / "a")
    assert "answered 500" in said and "key" not in said.lower(), said
    said = _fail(pull_spec(base_url=closed_port()), tmp_path / "b")
    assert "cannot reach" in said and "key" not in said.lower(), said


def test_a_refusal_says_where_each_key_came_from(lf, monkeypatch, tmp_path):
    """The public key from a stale environment variable, the secret key from a Secret block."""
    blocks = {"langfuse-secret-key": "sk-lf-from-block", "langfuse-public-key": PUBLIC}
    monkeypatch.delenv("LANGFUSE_SECRET_KEY")
    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", "pk-lf-stale")
    monkeypatch.setattr(
        "feinschliff.ingest.credentials._prefect_secret", lambda block: (blocks.get(block), "")
    )
    with pytest.raises(MissingSecret) as caught:  # exit 2
        run_ingest(pull_spec(), tmp_path / "out")
    said = str(caught.value)
    assert "refused the credentials (401)" in said
    assert "public key: environment variable LANGFUSE_PUBLIC_KEY, read before any Prefect" in said
    assert "secret key: Prefect Secret block 'langfuse-secret-key'" in said, said
    assert not any(v in said for v in ("pk-lf-stale", "sk-lf-from-block", PUBLIC, SECRET))


def test_an_empty_pull_is_fine_when_the_mirror_holds_feedback(lf, home, tmp_path):
    """Nothing new since the last run is no error, and adds no empty batch to the mirror."""
    run_ingest(pull_spec(), tmp_path / "first")
    batches = sorted((home / "ingest" / "mirror").glob("*/*"))
    lf.tables["observations"], lf.tables["scores"] = [], []
    run_ingest(pull_spec(), tmp_path / "second")
    assert sorted((home / "ingest" / "mirror").glob("*/*")) == batches
    first, second = (
        json.loads((tmp_path / n / "manifest.json").read_text()) for n in ("first", "second")
    )
    assert second["counts"] == first["counts"]
    assert second["sources"][0]["pull"]["fetched"] == {"observations": 0, "scores": 0}
