"""Registry under concurrency, a hypothesis state machine, failure injection and hostile names."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from feinschliff.registry import (
    AliasConflict,
    RegistryError,
    audit_log,
    promote,
    read_aliases,
    register_adapter,
    rollback,
    set_alias,
    use_case_dir,
    version_dir,
    versions,
)
from tests.reliability.conftest import trials
from tests.unit.adapter_factory import make_base, make_train_output, target_for


def _content(p: Path) -> bytes | str | None:
    # A lock file holds its last holder's note ("pid N since <second>"), rewritten by every
    # locked operation: compare that it exists, not the second it was last taken.
    if p.is_dir():
        return None
    return "lock" if p.name.endswith(".lock") else p.read_bytes()


def _snapshot(root: Path) -> dict:
    return (
        {str(p.relative_to(root)): _content(p) for p in sorted(root.rglob("*"))}
        if root.exists()
        else {}
    )


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_base(tmp_path_factory.mktemp("base") / "m")


def test_32_concurrent_writers(tmp_path, base, reliability):
    """32 threads each register an adapter and try to promote it with CAS on what they saw."""
    root = tmp_path / "reg"
    n = 32
    refs = [make_train_output(tmp_path / f"o{i}", str(base), seed=float(i + 1)) for i in range(n)]
    target = target_for(base)
    barrier = threading.Barrier(n)
    results: dict[int, str] = {}

    def writer(i: int) -> None:
        barrier.wait()
        v = register_adapter(root, "s", refs[i], {}, target=target)
        seen = read_aliases(root, "s").get("production")
        try:
            promote(root, "s", v, why=f"writer {i}", expected=seen)
            results[i] = "won"
        except AliasConflict:
            results[i] = "conflict"

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    vs = versions(root, "s")
    assert len(vs) == n and len(set(vs)) == n  # no lost update: every write became a version
    aliases = read_aliases(root, "s")
    assert aliases["production"] in vs
    moves = [
        e for e in audit_log(root, "s") if e["event"] == "alias" and e["alias"] == "production"
    ]
    for prev, nxt in zip(moves, moves[1:], strict=False):
        assert nxt["old"] == prev["new"]  # strictly ordered: each move starts where the last ended
    assert moves[-1]["new"] == aliases["production"]
    wins = sum(1 for r in results.values() if r == "won")
    assert wins == len(moves) and wins + sum(r == "conflict" for r in results.values()) == n
    reliability(
        trials=n, figure=f"{len(vs)} versions, {wins} CAS wins, {n - wins} stale CAS rejected"
    )


class RegistryMachine(RuleBasedStateMachine):
    """Model: a list of versions, the production history. Real: the registry on disk."""

    def __init__(self):
        super().__init__()
        import tempfile

        self.tmp = Path(tempfile.mkdtemp(prefix="regsm-"))
        self.base = make_base(self.tmp / "base")
        self.root = self.tmp / "reg"
        self.model_versions: list[str] = []
        self.production: str | None = None
        self.previous: str | None = None  # what a rollback returns to, predicted by the model
        self.seed = 0.0

    @rule()
    def register(self):
        self.seed += 1
        ref = make_train_output(self.tmp / f"o{self.seed}", str(self.base), seed=self.seed)
        v = register_adapter(self.root, "s", ref, {}, target=target_for(self.base))
        assert v not in self.model_versions
        self.model_versions.append(v)

    @precondition(lambda self: self.model_versions)
    @rule(i=st.integers(0, 100), stale=st.booleans())
    def promote(self, i, stale):
        v = self.model_versions[i % len(self.model_versions)]
        # a stale expectation: something other than the current production
        expected = (
            (self.model_versions[0] if self.production is None else None)
            if stale
            else self.production
        )
        if v == self.production and not stale:
            return
        try:
            promote(self.root, "s", v, why="sm", expected=expected)
        except AliasConflict:
            assert stale
            return
        assert not stale
        if self.production is not None:
            self.previous = self.production
        self.production = v

    @precondition(lambda self: self.production is not None)
    @rule()
    def rollback(self):
        try:
            rollback(self.root, "s", why="sm")
        except RegistryError:
            assert self.previous is None  # refused only when there is nothing to return to
            return
        # the model predicts the swap; it never copies the registry's answer
        self.production, self.previous = self.previous, self.production

    @invariant()
    def matches_model(self):
        if self.model_versions:
            assert versions(self.root, "s") == self.model_versions
            assert read_aliases(self.root, "s").get("production") == self.production
            assert read_aliases(self.root, "s").get("previous") == self.previous


def test_registry_state_machine(reliability):
    n = trials(25, 200)
    RegistryMachine.TestCase.settings = settings(
        max_examples=n,
        stateful_step_count=8,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    RegistryMachine.TestCase().runTest()
    reliability(trials=n, figure="model == registry after every step")


def test_failure_between_registered_and_gate_passed_leaves_registry_identical(
    tmp_path, base, reliability, monkeypatch
):
    """Failures injected while a new version is being written (copy done, marker not yet) and
    at the alias move: the registry stays byte-identical each time."""
    import feinschliff.registry_write as registry_write

    root = tmp_path / "reg"
    v1 = register_adapter(
        root,
        "s",
        make_train_output(tmp_path / "a", str(base), seed=1.0),
        {},
        target=target_for(base),
    )
    promote(root, "s", v1, why="first")
    before = _snapshot(root)
    n = trials(5, 30)
    real_mark = registry_write.mark_complete

    def boom(*a, **k):
        raise OSError("injected: disk full while finishing the version")

    for i in range(n):
        ref = make_train_output(tmp_path / f"b{i}", str(base), seed=10.0 + i)
        monkeypatch.setattr(registry_write, "mark_complete", boom)
        with pytest.raises(OSError, match="injected"):
            register_adapter(root, "s", ref, {}, target=target_for(base))
        monkeypatch.setattr(registry_write, "mark_complete", real_mark)
        with pytest.raises(AliasConflict):
            set_alias(root, "s", "production", "v0001", expected="v0002", why="injected")
        assert _snapshot(root) == before, i
    reliability(trials=2 * n, figure="registry byte-identical after every injected failure")


HOSTILE = st.one_of(
    st.sampled_from(
        [
            "../x",
            "..",
            "/etc",
            "//proc/self/root",
            "%2e%2e",
            "a#b",
            "a/../../b",
            "C:\\x",
            "x\x00y",
            "\u202e",
            "ü",
            "a b",
            "v0001/../..",
            ".",
        ]
    ),
    st.text(min_size=1, max_size=20),
)


@given(name=HOSTILE, version=HOSTILE)
@settings(max_examples=trials(200, 2000), deadline=None, suppress_health_check=list(HealthCheck))
def test_hostile_names_never_escape_the_root(tmp_path_factory, reliability, name, version):
    _EXAMPLES.append(name)
    root = tmp_path_factory.mktemp("hostile") / "reg"
    root.mkdir()
    outside = set(os.listdir(root.parent))
    for call in (
        lambda: use_case_dir(root, name),
        lambda: version_dir(root, "s", version),
        lambda: version_dir(root, name, version),
    ):
        try:
            path = call()
        except RegistryError:
            continue
        assert path.resolve().is_relative_to(root.resolve()), (name, version, path)
    for call in (
        lambda: set_alias(root, name, "production", version),
        lambda: read_aliases(root, name),
        lambda: versions(root, name),
    ):
        with contextlib.suppress(RegistryError):
            call()
    assert set(os.listdir(root.parent)) == outside
    # the row is recorded by the test itself (the last example's call stands), so a failure
    # or a run that never happened cannot show up as a passed row
    reliability(trials=len(_EXAMPLES), figure="0 escapes")


_EXAMPLES: list[str] = []  # examples hypothesis ran, for the table row


def test_model_cache_rejects_hostile_aliases(tmp_path, monkeypatch, reliability):
    from feinschliff.models import ModelFetchError, fetch_model

    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))
    names = ["../../etc/passwd", "/abs", "smollm2-135m-instruct/../../x", "%2e%2e", "a#b"]
    for n in names:
        with pytest.raises(ModelFetchError):
            fetch_model(n)
    assert not (tmp_path / "home").exists() or not any((tmp_path / "home").rglob("*"))
    reliability(trials=len(names), figure="0 writes for hostile model aliases")
    json.dumps(names)
