"""Prefect Secret blocks are looked up when the Prefect API is configured in the active profile
(`prefect config set PREFECT_API_URL=...` writes the profile, not the environment): before, only
the environment variable counted, and such a setup never found its Secret blocks.

The Prefect API is a stand-in here (``Secret.load`` replaced in the child process): a Prefect
server with Secret blocks is not needed to test which URL the lookup trusts. Each case runs in a
fresh interpreter because Prefect reads its profile once, at import."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CHILD = """
import prefect.blocks.system as system
asked = []
class Found:
    def get(self):
        return "s3cr3t"
def load(name, *a, **k):
    asked.append(name)
    return Found()
system.Secret.load = load
from feinschliff.ingest.credentials import lookup_secret
print(lookup_secret("LANGFUSE_SECRET_KEY"), asked)
"""


def _lookup(tmp_path: Path, profile: str | None) -> str:
    home = tmp_path / "prefect"
    home.mkdir()
    profiles = home / "profiles.toml"
    if profile is not None:
        profiles.write_text(profile)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.pop("LANGFUSE_SECRET_KEY", None)
    env |= {"PREFECT_HOME": str(home), "PREFECT_PROFILES_PATH": str(profiles)}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip()


def test_a_profiles_api_url_makes_secret_blocks_count(tmp_path):
    profile = 'active = "remote"\n[profiles.remote]\nPREFECT_API_URL = "http://127.0.0.1:9/api"\n'
    assert _lookup(tmp_path, profile) == "s3cr3t ['langfuse-secret-key']"


def test_without_any_api_url_no_block_is_asked(tmp_path):
    assert _lookup(tmp_path, None) == "None []"


DOWN = """
import httpx
import prefect.blocks.system as system
def load(name, *a, **k):
    raise httpx.ConnectError("[Errno 111] Connection refused")
system.Secret.load = load
from feinschliff.ingest.credentials import MissingCredentials, require_secret
try:
    require_secret("LANGFUSE_SECRET_KEY", "Langfuse pull")
except MissingCredentials as exc:
    print(exc)
"""


def test_a_prefect_api_that_does_not_answer_is_named_not_taken_for_a_missing_block(tmp_path):
    """With the Prefect API down, the error said only "create a Prefect Secret block": a team
    whose block exists went looking for a missing block instead of a server that is down."""
    home = tmp_path / "prefect"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.pop("LANGFUSE_SECRET_KEY", None)
    env |= {"PREFECT_HOME": str(home), "PREFECT_API_URL": "http://127.0.0.1:9/api"}
    proc = subprocess.run(
        [sys.executable, "-c", DOWN], capture_output=True, text=True, env=env, timeout=120
    )
    said = proc.stdout.strip()
    assert "create a Prefect Secret block 'langfuse-secret-key'" in said, proc.stderr[-2000:]
    assert "the Prefect API at http://127.0.0.1:9/api could not be asked" in said
    assert "ConnectError: [Errno 111] Connection refused" in said
