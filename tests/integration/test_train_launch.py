"""`train.launcher: accelerate`: DDP with 2 CPU processes (gloo) trains a few steps."""

from __future__ import annotations

import pytest
from test_train_trl import assert_adapter_trained, train_cli

pytestmark = pytest.mark.integration


def test_ddp_with_two_cpu_processes(demo_model, demo_ingest, tmp_path):
    out = tmp_path / "ddp"
    p = train_cli(
        demo_ingest.dir,
        out,
        **{"train.launcher": "accelerate", "train.num_processes": 2},
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert "launching 2 processes" in p.stderr and "accelerate.commands.launch" in p.stderr
    metrics = assert_adapter_trained(out, demo_model)
    assert metrics["world_size"] == 2 and metrics["launcher"] == "accelerate/ddp"
    assert metrics["peak_rss_mb"] > 500  # the ranks' peak, not the light parent's
