"""The Dockerfile passes hadolint (a Docker engine does not run here, so it is not built)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_hadolint_passes():
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    proc = subprocess.run([exe, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_image_ships_what_the_flow_needs():
    text = (ROOT / "Dockerfile").read_text()
    for needed in (
        "requirements.lock",
        "COPY flows",
        "COPY evals",
        "COPY recipes",
        "torch==2.13.0",
    ):
        assert needed in text


def test_container_runs_the_command_it_is_given():
    """Prefect's Docker worker sets the container command and the Kubernetes template passes it
    as ``args`` (configs/prefect/*-gpu.json): an ENTRYPOINT would prefix every flow run's
    ``prefect flow-run execute`` (and the documented ``docker run ... feinschliff run``)."""
    instructions = [
        line.split(maxsplit=1)[0].upper()
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.strip() and not line.startswith((" ", "#"))
    ]
    assert "ENTRYPOINT" not in instructions
