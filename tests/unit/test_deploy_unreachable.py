"""An unreachable replica is named once: the client's error already starts with its URL, and
the deploy message repeated it ("http://127.0.0.1:9: http://127.0.0.1:9: GET ...")."""

from __future__ import annotations

import socket

import pytest

from feinschliff.serving import deploy
from feinschliff.specs.register import VllmSpec


def _closed_port() -> int:
    with socket.socket() as s:  # bound, never listening: connections are refused at once
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_replica_is_named_once(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}"
    spec = VllmSpec.model_validate(
        {"servers": [{"url": url}], "model": "m", "retries": 0, "timeout_s": 2}
    )
    with pytest.raises(deploy.DeployError) as caught:
        deploy._refuse_unserve(tmp_path / "registry", "support-de", spec)
    message = str(caught.value)
    assert message.startswith(f"{url}: GET ") and message.count(url) == 1, message
    assert message.endswith("no server was changed")
