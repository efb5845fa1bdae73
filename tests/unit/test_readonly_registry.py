"""A registry on a read-only mount (a serving pod's view of it, a wrong mount in a job), and
the exit codes of `registry promote|rollback --expect`.

Read-only is simulated where the OS would answer EROFS (tests run as root, where a chmod does
not stop writes): creating the use case's lock file, which every change takes first."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from feinschliff import registry
from feinschliff.registry_store import LocalStore, NotAFolder
from tests.cli_helpers import run_main
from tests.unit.adapter_factory import make_base, make_train_output, target_for


@pytest.fixture()
def reg(tmp_path, monkeypatch) -> Path:
    """A local registry of use case ``s``: v0002 production, v0001 previous."""
    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))
    base = make_base(tmp_path / "base")
    root = tmp_path / "reg"
    for seed in (1.0, 2.0):
        out = make_train_output(tmp_path / f"out-{seed}", str(base), seed=seed)
        registry.register_adapter(root, "s", out, {}, target=target_for(base))
    registry.promote(root, "s", "v0001", why="first")
    registry.promote(root, "s", "v0002", why="second")
    return root


def _read_only(monkeypatch, root: Path) -> None:
    import feinschliff.registry_store as store

    real = store.file_lock

    def file_lock(path: Path):
        if Path(path).is_relative_to(root):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real(path)

    monkeypatch.setattr(store, "file_lock", file_lock)


def test_changes_to_a_read_only_registry_exit_2_and_reads_still_work(reg, monkeypatch, capsys):
    """They exited 1 with `registry store failed: [Errno 30] Read-only file system: '...'`
    (register: `error: Read-only file system: ...`), where README promises 2 for a location
    the OS does not let us write."""
    _read_only(monkeypatch, reg)
    lock = reg / "s" / ".lock"
    for args in (
        ["promote", "s", "v0001"],
        ["rollback", "s"],
        ["retire", "s", "v0001", "--why", "bad"],
    ):
        code, err = run_main(monkeypatch, capsys, "registry", *args, "--root", str(reg))
        assert code == 2, (args, err)
        assert err.strip() == f"registry {reg}: Read-only file system: {lock}", args
    code, _ = run_main(monkeypatch, capsys, "registry", "list", "--root", str(reg))
    assert code in (0, None)
    assert registry.read_aliases(reg, "s") == {"production": "v0002", "previous": "v0001"}
    with pytest.raises(NotAFolder, match="Read-only file system"):
        registry.record_event(reg, "s", "note", why="x")


def test_a_refused_write_outside_the_registry_is_not_blamed_on_it(tmp_path):
    """Under the lock a change may write elsewhere (vLLM serving copies): their own error."""
    store = LocalStore(tmp_path / "reg")
    outside = str(tmp_path / "serving" / "s")
    with pytest.raises(OSError) as raised, store.lock("s/.lock"):
        raise OSError(errno.EROFS, "Read-only file system", outside)
    assert type(raised.value) is OSError and raised.value.filename == outside


@pytest.mark.parametrize("command", [["promote", "s", "v0001"], ["rollback", "s"]])
def test_expect_of_a_version_the_registry_lacks_is_a_wrong_argument(
    reg, monkeypatch, capsys, command
):
    """`--expect v0009` (a typo: no such version) exited 1 as a lost compare-and-swap; a
    version that exists but is not production stays a conflict, exit 1."""
    args = ["registry", *command, "--root", str(reg)]
    code, err = run_main(monkeypatch, capsys, *args, "--expect", "v0009")
    assert code == 2, err
    assert err.strip() == (
        "no --expect version 'v0009' of 's' in the registry (it has v0001, v0002)"
    )
    code, err = run_main(monkeypatch, capsys, *args, "--expect", "v0001")
    assert code == 1 and err.startswith("error: conflict: s:production is v0002"), err
    assert registry.read_aliases(reg, "s")["production"] == "v0002"
