"""Content hashes of folders whose file names are not plain ASCII."""

from __future__ import annotations

import hashlib
import os

from feinschliff.artifacts import hash_tree, sha256_file
from feinschliff.pipeline import feedback_fingerprint
from feinschliff.recipe import FeedbackSpec


def test_a_file_name_that_is_no_utf8_is_hashed_not_a_crash(tmp_path):
    """A feedback export with a Latin-1 file name (a zip made on another system) crashed the
    ingest cache key with UnicodeEncodeError."""
    export = tmp_path / "export"
    export.mkdir()
    with open(os.fsencode(export) + b"/R\xfcckmeldung.json", "w") as f:
        f.write("{}")
    spec = FeedbackSpec.model_validate({"sources": [{"kind": "argilla", "path": str(export)}]})
    first = feedback_fingerprint(spec)
    assert first == feedback_fingerprint(spec) and len(first[0]) == 64


def test_utf8_names_hash_as_before(tmp_path):
    """Hashes recorded in .complete markers and registry versions must not change."""
    (tmp_path / "über 1.json").write_text("{}")
    (tmp_path / "a.txt").write_text("x")
    h = hashlib.sha256()
    for name in sorted(["a.txt", "über 1.json"]):
        digest = sha256_file(tmp_path / name)
        h.update(name.encode() + b"\0" + digest.encode() + b"\n")
    assert hash_tree(tmp_path) == h.hexdigest()
