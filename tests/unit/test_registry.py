"""Registry on a local directory AND on fsspec's real in-memory filesystem (``memory://``, the
object-store code path: temp prefix + copy + marker last, lock objects made by exclusive create
with a lease): preflight before any write, immutable versions, idempotent registration, CAS
aliases (promote / rollback / retire), audit log order, crash leftovers invisible, lock leases."""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest

from feinschliff.artifacts import AdapterRef
from feinschliff.registry import (
    AliasConflict,
    InvalidName,
    LockLost,
    LockTimeout,
    RegistryError,
    adapter_path,
    audit_log,
    list_registry,
    local_version,
    manifest,
    open_root,
    production_adapter,
    production_history,
    promote,
    read_aliases,
    record_event,
    register_adapter,
    retire,
    retired,
    rollback,
    set_alias,
    store_of,
    versions,
)
from feinschliff.registry_store import FsspecStore
from feinschliff.serving.preflight import PreflightError
from tests.unit.adapter_factory import make_base, make_train_output, target_for


@pytest.fixture()
def base(tmp_path):
    return make_base(tmp_path / "base")


@pytest.fixture(params=["local", "memory"])
def root(request, tmp_path, monkeypatch):
    """A fresh registry root: a local directory, or a memory:// URL (its own prefix)."""
    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))  # registry-cache goes here
    if request.param == "local":
        yield tmp_path / "reg"
        return
    url = f"memory://reg-{uuid.uuid4().hex[:8]}/registry"
    yield open_root(url)
    store_of(url).remove_tree("")


@pytest.fixture()
def reg(tmp_path, base, root):
    """register(name, seed) -> version, into the fresh registry ``root``."""

    def register(seed: float, use_case: str = "s", **kw) -> str:
        ref = make_train_output(tmp_path / f"out-{use_case}-{seed}", str(base), seed=seed, **kw)
        return register_adapter(
            root, use_case, ref, {"train": {"method": "sft"}}, target=target_for(base)
        )

    register.root = root
    return register


def snapshot(root):
    """Every path under root with its bytes (local dirs as None): 'byte-identical' made
    checkable on either store."""
    if isinstance(root, FsspecStore):
        st = store_of(root)
        return {rel: st.read_bytes(rel) for rel in st.files("")} or None
    if not root.exists():
        return None
    return {
        p.relative_to(root).as_posix(): (None if p.is_dir() else p.read_bytes())
        for p in sorted(root.rglob("*"))
    }


def test_register_copies_and_is_idempotent(tmp_path, base, reg):
    v1 = reg(1.0)
    assert v1 == "v0001"
    src = tmp_path / "out-s-1.0" / "adapter" / "adapter_model.safetensors"
    assert (
        adapter_path(reg.root, "s", v1) / "adapter_model.safetensors"
    ).read_bytes() == src.read_bytes()
    assert reg(1.0) == v1  # same content: no new version
    assert reg(2.0) == "v0002"
    assert versions(reg.root, "s") == ["v0001", "v0002"]
    m = manifest(reg.root, "s", v1)
    assert m["train"]["method"] == "sft"
    assert m["adapter"]["rank"] == 8 and m["adapter"]["target_modules"] == ["q_proj", "v_proj"]
    assert [r["version"] for r in list_registry(reg.root)] == ["v0001", "v0002"]


def test_a_hash_the_caller_has_is_not_computed_again(tmp_path, base, monkeypatch):
    """`register --report --promote` hashes the candidate to recognise it as production
    already; handed on, registration uses that hash as the version's content key."""
    import feinschliff.registry_write as registry_write
    from feinschliff.artifacts import hash_tree

    ref = make_train_output(tmp_path / "out", str(base), seed=1.0)
    sha = hash_tree(ref.dir / "adapter")
    hashed = []
    real = registry_write.hash_tree
    monkeypatch.setattr(registry_write, "hash_tree", lambda p: hashed.append(p) or real(p))
    root, target = tmp_path / "reg", target_for(base)
    v1 = register_adapter(root, "s", ref, {}, target=target, adapter_sha256=sha)
    assert hashed == [] and manifest(root, "s", v1)["adapter_sha256"] == sha
    assert register_adapter(root, "s", ref, {}, target=target) == v1  # the same key
    assert hashed == [ref.dir / "adapter"]


def test_rejected_adapter_leaves_registry_byte_identical(tmp_path, base, reg):
    reg(1.0)
    promote(reg.root, "s", "v0001", why="first")
    before = snapshot(reg.root)
    bad = [
        make_train_output(tmp_path / "r64", str(base), rank=64),
        make_train_output(tmp_path / "other", str(tmp_path / "other-base"), hidden_scale=2),
    ]
    missing = make_train_output(tmp_path / "nocfg", str(base))
    (missing.dir / "adapter" / "adapter_config.json").unlink()
    bad.append(missing)
    for ref in bad:
        with pytest.raises(PreflightError):
            register_adapter(reg.root, "s", ref, {}, target=target_for(base))
    with pytest.raises(InvalidName):
        register_adapter(reg.root, "../escape", bad[0], {}, target=target_for(base))
    assert snapshot(reg.root) == before
    assert not (tmp_path / "escape").exists()
    # ... and a use case that does not exist yet is not even created
    with pytest.raises(PreflightError):
        register_adapter(reg.root, "fresh", bad[0], {}, target=target_for(base))
    assert not store_of(reg.root).exists("fresh")


def test_killed_writer_leftovers_are_invisible_and_cleaned(reg):
    reg(1.0)
    promote(reg.root, "s", "v0001", why="first")
    st = store_of(reg.root)
    st.write_bytes("s/.v0002-abc123/adapter/x", b"1")  # a writer killed before its rename
    st.write_bytes("s/v0003/adapter/x", b"1")  # copied, but no .complete: never a version
    assert versions(reg.root, "s") == ["v0001"]
    with pytest.raises(RegistryError, match="not a registered version"):
        set_alias(reg.root, "s", "production", "v0003")
    assert read_aliases(reg.root, "s") == {"production": "v0001"}
    assert reg(2.0) == "v0004"
    assert not st.exists("s/.v0002-abc123")
    assert not st.exists("s/v0003")  # the unmarked copy is removed too; its number stays skipped


def test_promote_moves_previous_in_one_step_and_audits(reg):
    v1, v2 = reg(1.0), reg(2.0)
    promote(reg.root, "s", v1, why="first")
    prod = production_adapter(reg.root, "s")
    assert json.loads((prod.dir / "manifest.json").read_text())["version"] == v1
    promote(reg.root, "s", v2, why="better", decision={"promote": True})
    assert read_aliases(reg.root, "s") == {"production": v2, "previous": v1}
    audit = audit_log(reg.root, "s")
    moves = [(e["alias"], e["old"], e["new"]) for e in audit if e["event"] == "alias"]
    assert moves == [("production", None, v1), ("production", v1, v2), ("previous", None, v1)]
    assert audit[-1]["event"] == "gate" and audit[-1]["decision"] == {"promote": True}
    assert {e["by"] for e in audit} and all(e["at"].endswith("Z") for e in audit)


def test_rollback_swaps_and_history_orders_versions(reg):
    v1, v2, v3 = reg(1.0), reg(2.0), reg(3.0)
    with pytest.raises(RegistryError, match="no previous"):
        rollback(reg.root, "s", why="nothing yet")
    promote(reg.root, "s", v1, why="a")
    promote(reg.root, "s", v2, why="b")
    promote(reg.root, "s", v3, why="c")
    assert production_history(reg.root, "s") == [v3, v2, v1]
    rollback(reg.root, "s", why="v3 broke")
    assert read_aliases(reg.root, "s") == {"production": v2, "previous": v3}
    assert production_history(reg.root, "s") == [v2, v3, v1]
    with pytest.raises(AliasConflict):
        rollback(reg.root, "s", why="stale", expected=v3)


def test_retire(reg):
    v1, v2 = reg(1.0), reg(2.0)
    promote(reg.root, "s", v1, why="a")
    promote(reg.root, "s", v2, why="b")
    with pytest.raises(RegistryError, match="is production"):
        retire(reg.root, "s", v2, why="no")
    assert retire(reg.root, "s", v1, why="data leak") == {"production": v2}
    assert production_history(reg.root, "s") == [v2]
    with pytest.raises(RegistryError, match="retired"):
        promote(reg.root, "s", v1, why="again")
    assert "retired" in next(r for r in list_registry(reg.root) if r["version"] == v1)["aliases"]
    # a second retire keeps the first record (it overwrote the reason) and logs nothing
    first = retired(reg.root, "s")[v1]
    entries = len(audit_log(reg.root, "s"))
    assert retire(reg.root, "s", v1, why="again") == {"production": v2}
    assert retired(reg.root, "s")[v1] == first and first["why"] == "data leak"
    assert len(audit_log(reg.root, "s")) == entries


def test_stale_compare_and_swap_is_rejected(reg):
    v1, v2 = reg(1.0), reg(2.0)
    set_alias(reg.root, "s", "production", v1, expected=None)
    with pytest.raises(AliasConflict):
        set_alias(reg.root, "s", "production", v2, expected=None)
    with pytest.raises(AliasConflict):
        promote(reg.root, "s", v2, why="stale", expected=None)
    assert read_aliases(reg.root, "s")["production"] == v1


def test_concurrent_promotions_exactly_one_wins(reg):
    vs = [reg(float(i)) for i in range(1, 9)]
    promote(reg.root, "s", vs[0], why="base")
    wins, conflicts = [], []
    barrier = threading.Barrier(len(vs) - 1)

    def attempt(v):
        barrier.wait()
        try:
            promote(reg.root, "s", v, why="race", expected=vs[0])
            wins.append(v)
        except AliasConflict:
            conflicts.append(v)

    threads = [threading.Thread(target=attempt, args=(v,)) for v in vs[1:]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and len(conflicts) == len(vs) - 2
    assert read_aliases(reg.root, "s") == {"production": wins[0], "previous": vs[0]}
    moves = [(e["alias"], e["old"], e["new"]) for e in audit_log(reg.root, "s")[-2:]]
    assert moves == [("production", vs[0], wins[0]), ("previous", None, vs[0])]


def test_bad_names_and_versions(reg):
    reg(1.0)
    for bad in ("../x", "v1", "v0001/../../x", ""):
        with pytest.raises(InvalidName):
            manifest(reg.root, "s", bad)
    with pytest.raises(InvalidName):
        read_aliases(reg.root, "../s")
    with pytest.raises(RegistryError, match="unknown alias"):
        set_alias(reg.root, "s", "staging", "v0001")


def test_record_event_appends_to_audit(reg):
    reg(1.0)
    record_event(reg.root, "s", "approval", why="looks good", approved=True, reviewer="ana")
    last = audit_log(reg.root, "s")[-1]
    assert (last["event"], last["approved"], last["reviewer"]) == ("approval", True, "ana")


def test_open_root_locations(tmp_path):
    assert open_root(str(tmp_path)) == tmp_path
    assert open_root(f"file://{tmp_path}") == tmp_path
    assert open_root("memory://bucket/registry") == FsspecStore("memory://bucket/registry")
    with pytest.raises(RegistryError, match="cannot open nosuchscheme://"):
        open_root("nosuchscheme://bucket/registry")


def test_not_an_adapter_is_refused(tmp_path, base):
    out = tmp_path / "empty"
    (out / "adapter").mkdir(parents=True)
    with pytest.raises(PreflightError, match="not a PEFT adapter"):
        register_adapter(
            tmp_path / "reg",
            "s",
            AdapterRef(path=str(out), sha256="0"),
            {},
            target=target_for(base),
        )
    assert not (tmp_path / "reg").exists()


HELP = {
    ("registry", "list"): ["aliases", "retired"],
    ("registry", "show"): ["manifest", "lineage"],
    ("registry", "audit"): ["append-only", "gate decision"],
    ("registry", "promote"): ["production", "--expect", "verify", "conflict"],
    ("registry", "rollback"): ["previous", "verified"],
    ("registry", "retire"): ["never", "--why"],
    ("registry", "reconcile"): ["registry", "Idempotent", "unload"],
    ("serve-config",): ["--lora-modules", "LoraAdapter", "LORA_ADAPTERS", "Modelfile"],
    ("serve-demo",): ["German prompt", "install_vllm.sh", "vllm.log"],
}


@pytest.mark.parametrize("cmd", list(HELP), ids=" ".join)
def test_help_says_what_it_does_and_writes(cmd):
    from typer.testing import CliRunner

    from feinschliff.cli import app

    result = CliRunner().invoke(app, [*cmd, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for needle in HELP[cmd]:
        assert needle in text, f"{needle!r} missing from `feinschliff {' '.join(cmd)} --help`"


def test_registry_cli_without_servers(reg):  # runs on a directory and on a memory:// URL
    """promote / rollback / retire / show / audit / list on the registry alone (no recipe)."""
    from typer.testing import CliRunner

    from feinschliff.cli import app
    from feinschliff.cli.app import Failure

    v1, v2 = reg(1.0), reg(2.0)
    root = ["--root", getattr(reg.root, "url", str(reg.root))]

    def cli(*args):
        res = CliRunner().invoke(app, [*args, *root])
        if isinstance(res.exception, Failure):
            return res.exception.code, str(res.exception)
        return res.exit_code, res.output

    assert cli("registry", "promote", "s", v1, "--expect", "none") == (0, "s: production = v0001\n")
    code, out = cli("registry", "promote", "s", v2, "--expect", "none")
    assert code == 1 and out.startswith("conflict:")
    assert cli("registry", "promote", "s", v2, "--why", "better")[0] == 0
    assert cli("registry", "rollback", "s") == (0, "s: production = v0001\n")
    assert cli("registry", "retire", "s", v2, "--why", "regressed")[0] == 0
    code, out = cli("registry", "show", "s")
    assert json.loads(out) == {
        "aliases": {"production": v1},
        "versions": [v1, v2],
        "retired": {v2: json.loads(out)["retired"][v2]},
    }
    assert json.loads(cli("registry", "show", "s", v1)[1])["version"] == v1
    assert cli("registry", "show", "s", "v0009") == (
        2,
        f"no version 'v0009' of 's' in the registry (it has {v1}, {v2})",
    )
    code, out = cli("registry", "audit", "s")
    assert "v0002 -> v0001" in out and "regressed" in out
    assert "retired" in cli("registry", "list")[1]
    assert cli("registry", "show", "s", "../../etc")[0] == 2


# ---------------------------------------------------------------- object-store semantics


@pytest.fixture()
def mem(tmp_path, monkeypatch):
    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))
    url = f"memory://locks-{uuid.uuid4().hex[:8]}/registry"
    yield url
    store_of(url).remove_tree("")


def test_stale_lock_of_a_killed_writer_is_broken(tmp_path, base, mem, caplog):
    ref = make_train_output(tmp_path / "o", str(base), seed=1.0)
    v1 = register_adapter(mem, "s", ref, {}, target=target_for(base))
    dead = {"token": "t0", "owner": "ci@gone:4242", "expires": time.time() - 5}
    store_of(mem).write_bytes("s/.lock", json.dumps(dead).encode())  # holder was SIGKILLed
    promote(FsspecStore(mem, wait_s=3), "s", v1, why="after a crash")  # not 600 s if broken
    assert read_aliases(mem, "s") == {"production": v1}
    assert "breaking the stale registry lock" in caplog.text and "ci@gone:4242" in caplog.text
    assert not store_of(mem).exists("s/.lock") and not store_of(mem).exists("s/.lock.break")


def test_live_lock_waits_and_its_lease_is_renewed(mem):
    """A live holder's lock is waited for, never broken: its heartbeat renews the lease (every
    lease_s / 3) for far longer than one lease. Lease 1 s and a 3 s wait leave a loaded 2-core
    runner room for a late beat, yet without renewals the lock would expire and be broken."""
    holder = FsspecStore(mem, lease_s=1.0)
    other = FsspecStore(mem, lease_s=1.0, wait_s=3)
    inside, done = threading.Event(), threading.Event()
    held_to_the_end: list[bool] = []

    def hold():
        with holder.lock("s/.lock") as lease:
            inside.set()
            done.wait(10)
            held_to_the_end.append(not lease.lost)

    t = threading.Thread(target=hold)
    t.start()
    assert inside.wait(5), "the holder never got the free lock"
    first = json.loads(store_of(mem).read_bytes("s/.lock"))
    start = time.monotonic()
    # 3x the lease: renewed by the holder's heartbeat, so waited for and never broken
    with pytest.raises(LockTimeout, match="is held by"), other.lock("s/.lock"):
        pass
    assert time.monotonic() - start >= 3
    later = json.loads(store_of(mem).read_bytes("s/.lock"))
    done.set()
    t.join(10)
    assert not t.is_alive()
    assert later["token"] == first["token"]  # still the holder's lock, not a breaker's
    assert later["expires"] > first["expires"] + 1.0  # renewed while held (beats every ~0.33 s)
    assert later["expires"] > time.time()  # and not expired when the waiter gave up
    assert held_to_the_end == [True]
    with other.lock("s/.lock"):  # released: free again at once
        assert json.loads(store_of(mem).read_bytes("s/.lock"))["expires"] > time.time()
    assert not store_of(mem).exists("s/.lock")


def test_a_lost_lease_is_detected_before_writing(mem):
    st = FsspecStore(mem, lease_s=0.15)
    with st.lock("s/.lock") as lease:
        thief = {"token": "other", "owner": "x@y:1", "expires": time.time() + 60}
        st.write_bytes("s/.lock", json.dumps(thief).encode())  # our lease was broken meanwhile
        time.sleep(0.15)
        with pytest.raises(LockLost):
            lease.check()
    assert json.loads(st.read_bytes("s/.lock"))["token"] == "other"  # theirs is not removed


def test_a_heartbeat_that_cannot_renew_loses_the_lease(mem, monkeypatch):
    """A store error on a beat (here not even an OSError) must not leave the holder believing
    it still holds a lock whose lease ran out and that another writer then took."""
    st = FsspecStore(mem, lease_s=0.3, wait_s=2)
    real_cat = st.fs.cat_file

    def flaky(path, *a, **kw):
        if threading.current_thread().name == "registry-lease":
            raise RuntimeError("injected: botocore-style error while renewing")
        return real_cat(path, *a, **kw)

    monkeypatch.setattr(st.fs, "cat_file", flaky)
    with st.lock("s/.lock") as lease:
        time.sleep(0.5)  # no renewal got through: the lease has run out
        other = FsspecStore(mem, lease_s=0.3, wait_s=2)
        # the expired lock is broken by the next writer
        with other.lock("s/.lock"), pytest.raises(LockLost):
            lease.check()


def test_an_upload_that_outlasts_the_lease_publishes_no_version(tmp_path, base, mem, monkeypatch):
    """The lease is checked again after the (possibly long) upload, before the marker."""
    st = open_root(mem)
    real_copy = st.fs.copy

    def slow(src, dst, **kw):
        time.sleep(0.4)  # longer than the lease, and no heartbeat renews it
        return real_copy(src, dst, **kw)

    monkeypatch.setattr(st.fs, "copy", slow)
    monkeypatch.setattr("feinschliff.registry_lock._Heartbeat._run", lambda self: None)
    short = FsspecStore(mem, lease_s=0.3, wait_s=2)
    ref = make_train_output(tmp_path / "a", str(base), seed=1.0)
    with pytest.raises(LockLost):
        register_adapter(short, "s", ref, {}, target=target_for(base))
    assert versions(mem, "s") == []


def test_remote_version_is_materialised_by_content_hash(tmp_path, base, mem):
    ref = make_train_output(tmp_path / "o", str(base), seed=1.0)
    v1 = register_adapter(mem, "s", ref, {}, target=target_for(base))
    local = local_version(mem, "s", v1)
    sha = manifest(mem, "s", v1)["adapter_sha256"]
    assert local == tmp_path / "home" / "registry-cache" / "s" / f"{v1}-{sha[:12]}"
    src = ref.dir / "adapter" / "adapter_model.safetensors"
    assert (adapter_path(mem, "s", v1) / src.name).read_bytes() == src.read_bytes()
    stamp = (local / ".complete").stat().st_mtime_ns
    assert local_version(mem, "s", v1) == local  # reused, not downloaded again
    assert (local / ".complete").stat().st_mtime_ns == stamp
    store_of(mem).write_bytes(f"s/{v1}/adapter/adapter_model.safetensors", b"tampered")
    (local / "manifest.json").write_text("{}")  # invalidate the cache: forces a download
    with pytest.raises(RegistryError, match="does not match its .complete marker"):
        local_version(mem, "s", v1)


def test_tampered_manifest_hash_never_names_a_folder(tmp_path, base, mem):
    """adapter_sha256 from a remote manifest names the cache and serving folders: a hostile
    value ("/../../../ES"), even with a marker re-made to match, is refused before any write."""
    from feinschliff.artifacts import mark_complete
    from feinschliff.serving import deploy
    from feinschliff.specs.register import VllmSpec

    ref = make_train_output(tmp_path / "o", str(base), seed=1.0)
    v1 = register_adapter(mem, "s", ref, {}, target=target_for(base))
    st, copy = store_of(mem), tmp_path / "attacker"
    st.download(f"s/{v1}", copy)
    m = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps(m | {"adapter_sha256": "/../../../ES"}))
    mark_complete(copy)
    for name in ("manifest.json", ".complete"):
        st.write_bytes(f"s/{v1}/{name}", (copy / name).read_bytes())
    before = sorted(p for p in tmp_path.rglob("*") if "attacker" not in p.parts)
    spec = VllmSpec(servers=[{"url": "http://x:1"}], model=str(base), adapter_dir=str(tmp_path))
    for call in (
        lambda: local_version(mem, "s", v1),
        lambda: deploy.stage_files(mem, "s", v1, spec),
    ):
        with pytest.raises(RegistryError, match="adapter_sha256 '/../../../ES' is not a sha256"):
            call()
    assert sorted(p for p in tmp_path.rglob("*") if "attacker" not in p.parts) == before


def test_concurrent_materialisations_agree(tmp_path, base, mem):
    from feinschliff.artifacts import completed_hash

    ref = make_train_output(tmp_path / "o", str(base), seed=1.0)
    v1 = register_adapter(mem, "s", ref, {}, target=target_for(base))
    got, errors = [], []
    barrier = threading.Barrier(4)

    def fetch():
        barrier.wait()
        try:
            got.append(local_version(mem, "s", v1))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(set(got)) == 1
    assert completed_hash(got[0]) is not None
    assert [p.name for p in got[0].parent.iterdir()] == [got[0].name]  # no temp dirs left


def test_upload_killed_midway_leaves_no_version(tmp_path, base, mem, monkeypatch):
    st = open_root(mem)
    v1 = register_adapter(
        st, "s", make_train_output(tmp_path / "a", str(base), seed=1.0), {}, target=target_for(base)
    )
    real_copy, copied = st.fs.copy, []

    def dies(src, dst, **kw):
        if copied:
            raise ConnectionError("injected: network gone while copying the version")
        copied.append(dst)
        return real_copy(src, dst, **kw)

    monkeypatch.setattr(st.fs, "copy", dies)
    ref = make_train_output(tmp_path / "b", str(base), seed=2.0)
    with pytest.raises(ConnectionError, match="injected"):
        register_adapter(st, "s", ref, {}, target=target_for(base))
    assert versions(st, "s") == [v1]
    assert [n for n in store_of(st).listdir("s") if n.startswith((".v", "v0002"))] == []
    monkeypatch.setattr(st.fs, "copy", real_copy)
    assert register_adapter(st, "s", ref, {}, target=target_for(base)) == "v0002"


def test_remote_versions_reach_vllm_as_local_paths(tmp_path, base, mem):
    """vLLM reads local paths: a memory:// version is materialised, preflighted and staged to
    its own serving path (runtime mode) or written as the resolver layout, with no server."""
    from feinschliff.serving import deploy
    from feinschliff.specs.register import VllmSpec

    root = open_root(mem)
    ref = make_train_output(tmp_path / "o", str(base), seed=1.0)
    v1 = register_adapter(root, "s", ref, {}, target=target_for(base))
    promote(root, "s", v1, why="first")
    sha = manifest(root, "s", v1)["adapter_sha256"]
    spec = VllmSpec(
        servers=[{"url": "http://vllm:8000"}], model=str(base), adapter_dir=str(tmp_path / "srv")
    )
    staged = deploy.stage_files(root, "s", v1, spec)
    assert staged == str(tmp_path / "srv" / "s" / f"{v1}-{sha[:12]}")
    name = "adapter_model.safetensors"
    assert (tmp_path / "srv" / "s" / f"{v1}-{sha[:12]}" / name).read_bytes() == (
        ref.dir / "adapter" / name
    ).read_bytes()
    resolver = spec.model_copy(update={"mode": "resolver", "resolver_dir": str(tmp_path / "rs")})
    report = deploy.reconcile(root, "s", resolver)
    assert {a.name for a in report.actions} == {"s", f"s@{v1}"}
    cfg = json.loads((tmp_path / "rs" / "s" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(base)
    assert not store_of(mem).exists("s/.serve.lock")  # the serve lock object was released


def test_an_audit_line_torn_by_a_kill_neither_breaks_the_registry_nor_the_next_entry(tmp_path):
    """A kill mid-append left half a JSON line: every later read of the audit log (reconcile,
    promote, production_history) raised, for good."""
    from feinschliff.registry import audit_log, record_event

    root = tmp_path / "reg"
    record_event(root, "s", "approval", why="first", approved=True, reviewer="anna")
    log_file = root / "s" / "audit.jsonl"
    with log_file.open("a") as f:
        f.write('{"at": "2026-11-26T00:00:00Z", "event": "al')  # torn
    record_event(root, "s", "approval", why="second", approved=False, reviewer="ben")
    assert [e["why"] for e in audit_log(root, "s")] == ["first", "second"]
