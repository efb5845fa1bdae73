"""Which secrets hold a live pull's keys: named per source in the recipe.

Two use cases reading two Langfuse projects on one Prefect server read the same Secret blocks
while the names were fixed (LANGFUSE_PUBLIC_KEY / LANGFUSE_SECRET_KEY): use case B trained and
promoted on project A's feedback without a word. The fake Langfuse of ``test_ingest_live``
chooses the project by the key pair alone, as Langfuse Cloud does.
"""

from __future__ import annotations

import json
import threading

import pytest
from pydantic import ValidationError

from feinschliff.ingest import run_ingest
from feinschliff.ingest.stage import IngestError, MissingSecret
from feinschliff.recipe import FeedbackSpec
from tests.unit.test_ingest_live import PUBLIC, SECRET, pull_spec, serving, use_keys
from tests.unit.test_ingest_pull_errors import Failing, Handler

B_NAMES = {"public_key_secret": "SUPPORT_B_LF_PUBLIC", "secret_key_secret": "SUPPORT_B_LF_SECRET"}


@pytest.fixture()
def lf(home, monkeypatch):
    """Project A's keys under the default names, project B's (a month older, own texts) under
    B's names."""
    with serving() as srv:
        use_keys(monkeypatch, srv, PUBLIC, SECRET)
        text = json.dumps(srv.tables).replace("2026-10-", "2026-09-").replace("Gerne", "Projekt B")
        srv.projects[("pk-lf-b", "sk-lf-b")] = ("cm-project-b", json.loads(text))
        monkeypatch.setenv("SUPPORT_B_LF_PUBLIC", "pk-lf-b")
        monkeypatch.setenv("SUPPORT_B_LF_SECRET", "sk-lf-b")
        yield srv


def _texts(out) -> str:
    return "".join(p.read_text() for p in sorted(out.glob("*.jsonl")))


def _manifest(out) -> dict:
    return json.loads((out / "manifest.json").read_text())


def test_two_sources_with_their_own_key_names_read_their_own_projects(lf, home, tmp_path):
    run_ingest(pull_spec(), tmp_path / "a")
    run_ingest(pull_spec(**B_NAMES), tmp_path / "b")
    a, b = _texts(tmp_path / "a"), _texts(tmp_path / "b")
    assert "Gerne" in a and "Projekt B" not in a
    assert "Projekt B" in b and "Gerne" not in b
    pulled = _manifest(tmp_path / "b")["sources"][0]["pull"]
    assert pulled["watermark_after"]["identity"] == "project:cm-project-b"
    assert pulled["watermark_before"] == {}  # B's own history, not A's watermark
    assert len(list((home / "ingest" / "mirror").iterdir())) == 2
    # A again: its own mirror, incremental
    run_ingest(pull_spec(), tmp_path / "a2")
    assert _manifest(tmp_path / "a2")["sources"][0]["pull"]["watermark_before"]["identity"] == (
        "project:cm-support-de"
    )


def test_a_missing_key_is_named_as_the_recipe_names_it(lf, monkeypatch, tmp_path):
    monkeypatch.delenv("SUPPORT_B_LF_SECRET")
    with pytest.raises(MissingSecret) as caught:
        run_ingest(pull_spec(**B_NAMES), tmp_path / "b")
    said = str(caught.value)
    assert "SUPPORT_B_LF_SECRET" in said and "'support-b-lf-secret'" in said
    assert "LANGFUSE_SECRET_KEY" not in said


def test_key_names_do_not_rename_a_mirror_pulled_before_they_existed(lf):
    """The mirror's name leaves the key names out (the project the keys read is in it): an
    upgrade must not start a new mirror and a full re-pull for every recipe."""
    from feinschliff.ingest.pull import _digest, source_key

    source = pull_spec().sources[0]
    before = {"base_url": None, "observation_type": "GENERATION", "name": None}
    before["environment"] = None
    assert source_key(source, lf.url, "project:x") == _digest(
        ["langfuse", lf.url, before, "project:x"]
    )
    renamed = pull_spec(**B_NAMES).sources[0]
    assert source_key(renamed, lf.url, "project:x") == source_key(source, lf.url, "project:x")


@pytest.mark.parametrize(
    "pull",
    [
        {"kind": "langfuse", "pull": {"public_key_secret": "pk-lf-1234"}},  # a key, not a name
        {"kind": "langfuse", "pull": {"secret_key_secret": "langfuse-secret-key"}},
        {"kind": "argilla", "pull": {"dataset": "d", "api_key_secret": "argilla.apikey"}},
    ],
)
def test_a_key_name_must_be_a_variable_name(pull):
    with pytest.raises(ValidationError, match="should match pattern"):
        FeedbackSpec.model_validate({"sources": [pull]})


@pytest.fixture()
def argilla(home, monkeypatch):
    srv = Failing()
    srv.mode = "argilla"  # the recorded SDK exchanges: the server has no dataset 'nosuch'
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    monkeypatch.delenv("ARGILLA_API_KEY", raising=False)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    yield srv
    srv.shutdown()
    srv.server_close()


def _argilla_spec(url: str, **pull) -> FeedbackSpec:
    return FeedbackSpec.model_validate(
        {
            "sources": [{"kind": "argilla", "pull": {"api_url": url, **pull}}],
            "pii": {"mode": "off"},
        }
    )


def test_an_argilla_pull_reads_the_key_its_recipe_names(argilla, monkeypatch, tmp_path):
    spec = _argilla_spec(argilla.url, dataset="nosuch", api_key_secret="SUPPORT_B_ARGILLA_KEY")
    with pytest.raises(MissingSecret, match="SUPPORT_B_ARGILLA_KEY.*'support-b-argilla-key'"):
        run_ingest(spec, tmp_path / "out")
    assert argilla.requests == []
    monkeypatch.setenv("SUPPORT_B_ARGILLA_KEY", "argilla.apikey")
    with pytest.raises(IngestError) as caught:  # the server answered: the key was read
        run_ingest(spec, tmp_path / "out")
    said = str(caught.value)
    assert "no dataset 'nosuch'" in said and "SUPPORT_B_ARGILLA_KEY's user" in said
    assert "ARGILLA_API_KEY" not in said.replace("SUPPORT_B_ARGILLA_KEY", "")


def test_a_refused_argilla_key_says_where_it_came_from(argilla, monkeypatch, tmp_path):
    """A stale environment variable shadows a Secret block: the refusal says which was read."""
    argilla.mode, argilla.unauthorized = "404", True  # every answer a 401
    monkeypatch.setattr(
        "tests.unit.test_ingest_pull_errors.Handler._send",
        _unauthorized(Handler._send),
    )
    monkeypatch.setenv("SUPPORT_B_ARGILLA_KEY", "argilla.stale")
    spec = _argilla_spec(argilla.url, dataset="d", api_key_secret="SUPPORT_B_ARGILLA_KEY")
    with pytest.raises(MissingSecret) as caught:  # exit 2
        run_ingest(spec, tmp_path / "out")
    said = str(caught.value)
    assert "refused the API key (environment variable SUPPORT_B_ARGILLA_KEY, read before" in said
    assert "argilla.stale" not in said


def _unauthorized(send):
    def answer(self, status, body, *args, **kwargs):
        if getattr(self.server, "unauthorized", False):
            return send(self, 401, b'{"detail": "Could not validate credentials"}')
        return send(self, status, body, *args, **kwargs)

    return answer
