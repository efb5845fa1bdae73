"""The registry on ``s3://`` through s3fs against moto's S3 server on a loopback port.

moto stands in for AWS S3, which cannot be reached from here; it speaks the S3 REST API over
HTTP, including the ``If-None-Match: *`` conditional PUT that the registry's lock objects rely
on (s3fs maps the 412 answer to FileExistsError). s3fs and moto[server] are dev dependencies,
so a missing one fails the import here rather than skipping the test.
"""

from __future__ import annotations

import json
import logging
import os
import uuid

import moto.server as moto_server
import pytest

from feinschliff.registry import (
    AliasConflict,
    LockTimeout,
    RegistryError,
    audit_log,
    local_version,
    manifest,
    open_root,
    promote,
    read_aliases,
    register_adapter,
    retire,
    rollback,
    store_of,
    versions,
)
from feinschliff.registry_store import FsspecStore
from tests.unit.adapter_factory import make_base, make_train_output, target_for

pytestmark = pytest.mark.integration
BUCKET = "feinschliff-test"


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 API on 127.0.0.1:<free port> with dummy credentials, one bucket."""
    from feinschliff.serving.vllm_server import free_port

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()  # no client made with other credentials
        s3fs.S3FileSystem().mkdir(BUCKET)
        yield env["AWS_ENDPOINT_URL"]
        s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


@pytest.fixture()
def url(s3_endpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))
    return f"s3://{BUCKET}/reg-{uuid.uuid4().hex[:8]}"


def test_registry_lifecycle_on_s3(url, tmp_path):
    base = make_base(tmp_path / "base")
    target = target_for(base)
    root = open_root(url)
    assert isinstance(root, FsspecStore) and type(root.fs).__name__ == "S3FileSystem"

    def register(seed):
        ref = make_train_output(tmp_path / f"o{seed}", str(base), seed=seed)
        return register_adapter(root, "s", ref, {"train": {"method": "sft"}}, target=target)

    v1, v2 = register(1.0), register(2.0)
    assert (v1, v2) == ("v0001", "v0002") and register(1.0) == v1  # idempotent
    st = store_of(root)
    st.write_bytes("s/v0003/adapter/adapter_config.json", b"{}")  # copied, marker never written
    assert versions(url, "s") == [v1, v2]
    assert [n for n in st.listdir("s") if n.startswith(".v")] == []  # temp prefixes removed

    promote(root, "s", v1, why="first", expected=None)
    with pytest.raises(AliasConflict):
        promote(root, "s", v2, why="stale", expected=None)
    promote(root, "s", v2, why="better", decision={"promote": True})
    assert rollback(root, "s", why="regressed") == {"production": v1, "previous": v2}
    with pytest.raises(RegistryError, match="is production"):
        retire(root, "s", v1, why="no")
    retire(root, "s", v2, why="data leak")
    moves = [(e["event"], e.get("alias"), e["old"], e["new"]) for e in audit_log(url, "s")]
    assert moves == [
        ("register", None, None, v1),
        ("register", None, None, v2),
        ("alias", "production", None, v1),
        ("alias", "production", v1, v2),
        ("alias", "previous", None, v1),
        ("gate", "production", v1, v2),
        ("alias", "production", v2, v1),
        ("alias", "previous", v1, v2),
        ("retire", None, v2, None),
        ("alias", "previous", v2, None),
    ]
    assert read_aliases(url, "s") == {"production": v1}

    local = local_version(root, "s", v1)  # what vLLM gets: a local copy keyed by content
    assert local.name == f"{v1}-{manifest(root, 's', v1)['adapter_sha256'][:12]}"
    assert json.loads((local / "manifest.json").read_text())["version"] == v1
    assert (local / "adapter" / "adapter_model.safetensors").read_bytes() == (
        tmp_path / "o1.0" / "adapter" / "adapter_model.safetensors"
    ).read_bytes()


def test_s3_lock_object_is_exclusive(url):
    """Two clients: the second's If-None-Match PUT fails while the first holds the lock."""
    first, second = FsspecStore(url, lease_s=5), FsspecStore(url, lease_s=5, wait_s=0.5)
    with first.lock("s/.lock"):
        held = json.loads(store_of(url).read_bytes("s/.lock"))
        assert held["owner"].endswith(f":{os.getpid()}") and held["expires"] > 0
        with pytest.raises(LockTimeout), second.lock("s/.lock"):
            pass
    with second.lock("s/.lock"):
        pass
    assert not store_of(url).exists("s/.lock")
