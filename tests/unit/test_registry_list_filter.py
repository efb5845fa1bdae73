"""`feinschliff registry list --use-case NAME`: one registry holds every use case's folder, and an
operator with several use cases needs the versions of one (the list printed all of them)."""

from __future__ import annotations

import pytest

from feinschliff import registry
from tests.cli_helpers import run_cli
from tests.unit.adapter_factory import make_base, make_train_output, target_for

LONG = "a" * 63  # the longest valid use case name


@pytest.fixture()
def reg(tmp_path):
    base = make_base(tmp_path / "base")
    root = tmp_path / "reg"
    seed = 1.0
    for use_case, n in (("support-de", 2), ("billing-de", 1), (LONG, 1)):
        for _ in range(n):
            seed += 1
            out = make_train_output(tmp_path / f"out{seed}", str(base), seed=seed)
            registry.register_adapter(root, use_case, out, {}, target=target_for(base))
    registry.promote(root, "support-de", "v0002", why="test")
    return root


def _rows(out: str) -> list[tuple[str, str]]:
    return [tuple(line.split()[:2]) for line in out.splitlines()[1:]]


def test_use_case_filter(reg):
    code, out = run_cli("registry", "list", "--root", str(reg), "--use-case", "support-de")
    assert code == 0, out
    assert _rows(out) == [("support-de", "v0001"), ("support-de", "v0002")]
    args = ["--use-case", "billing-de", "--use-case", "support-de", "--use-case", "billing-de"]
    code, out = run_cli("registry", "list", "--root", str(reg), *args)
    assert code == 0, out
    assert _rows(out) == [("billing-de", "v0001"), ("support-de", "v0001"), ("support-de", "v0002")]


def test_unknown_use_case_names_the_known_ones(reg):
    code, out = run_cli("registry", "list", "--root", str(reg), "--use-case", "support-dx")
    assert code == 2, out
    assert f"no use case 'support-dx' in the registry at {reg}" in out
    assert f"it has {LONG}, billing-de, support-de" in out
    code, out = run_cli("registry", "list", "--root", str(reg), "--use-case", "Support")
    assert code == 2 and "invalid use case name 'Support'" in out, out


def test_a_use_case_without_versions_says_so(reg):
    (reg / "legal-de").mkdir()  # e.g. left by a lock taken before a failed first registration
    code, out = run_cli("registry", "list", "--root", str(reg), "--use-case", "legal-de")
    assert (code, out) == (0, f"no versions of legal-de in the registry at {reg}\n")


def test_long_use_case_names_keep_the_columns_aligned(reg):
    code, out = run_cli("registry", "list", "--root", str(reg))
    assert code == 0, out
    lines = out.splitlines()
    starts = {line.index(" v0") for line in lines[1:]}
    assert starts == {lines[0].index(" version")}, out


def test_a_manifest_of_an_older_writer_lists_with_dashes(reg):
    """A version whose manifest lacks the adapter hash and the creation time (an older or
    damaged writer; registries live for years) is a line with dashes, not a KeyError."""
    import json

    path = reg / "billing-de" / "v0001" / "manifest.json"
    m = json.loads(path.read_text())
    for key in ("adapter_sha256", "created_at"):
        m.pop(key)
    m["train"] = "sft"  # not an object either
    path.write_text(json.dumps(m))
    code, out = run_cli("registry", "list", "--root", str(reg), "--use-case", "billing-de")
    assert code == 0, out
    assert out.splitlines()[1].split()[:6] == ["billing-de", "v0001", "-", "-", "-", "-"]
