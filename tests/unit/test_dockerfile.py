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
