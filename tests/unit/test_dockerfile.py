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


def test_image_has_the_install_scripts_and_a_lean_build_context():
    """The Axolotl backend and a local vLLM build their venvs with scripts/; without a
    .dockerignore `docker build .` sent the 2 GB .venv and .git to the daemon."""
    text = (ROOT / "Dockerfile").read_text()
    assert "COPY scripts ./scripts" in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    # `**/` also matches at the top (Docker: `**` is any number of folders, zero included)
    assert {".venv", ".git", "**/.env", "**/*.safetensors", "**/*.gguf"} <= set(ignored)


def test_the_base_images_uid_1000_user_is_removed_before_ours_is_made():
    """nvidia/cuda ubuntu24.04 images ship `ubuntu` with UID 1000: useradd --uid 1000 fails."""
    text = (ROOT / "Dockerfile").read_text()
    assert "FROM nvidia/cuda" in text and "ubuntu24.04" in text
    assert text.index("userdel --remove ubuntu") < text.index("useradd --create-home --uid 1000")
