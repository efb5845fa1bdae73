"""A deployed run paused for human approval survives past the flow engine's first lease
renewal (225 s into the run), where it crashed while the deployment's own concurrency limit
served as the one-run-per-use-case guard. Long row (4-6 minutes): `make reliability` only;
`make test` checks the waiting second run without the long pause
(tests/integration/test_flow_approval.py)."""

from __future__ import annotations

import pytest

from tests.integration.test_flow_approval import paused_deployed_run_keeps_its_slot

pytestmark = pytest.mark.integration


@pytest.mark.long
def test_a_paused_deployed_run_survives_its_lease_renewal(
    prefect_harness, demo_model, home, tmp_path, reliability
):
    paused_deployed_run_keeps_its_slot(tmp_path, survive_s=260)
    reliability(trials=1, figure="paused 260 s, resumed, completed; second run waited")
