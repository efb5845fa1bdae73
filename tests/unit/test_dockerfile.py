"""The Dockerfile passes hadolint and keeps what a build needs (no Docker engine runs in CI; the
CPU variant was built with a Debian bookworm base and a local package index, README "Docker")."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def read_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) per Dockerfile instruction, continuation lines left out."""
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    return [
        (line.split(maxsplit=1)[0].upper(), line.split(maxsplit=1)[1])
        for line in lines
        if line.strip() and not line.startswith((" ", "#"))
    ]


def read_dockerignore() -> set[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


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
    assert "ENTRYPOINT" not in [kind for kind, _ in read_instructions()]


def test_image_has_the_install_scripts_and_a_lean_build_context():
    """The Axolotl backend and a local vLLM build their venvs with scripts/; without a
    .dockerignore `docker build .` sent the 2 GB .venv and .git to the daemon."""
    text = (ROOT / "Dockerfile").read_text()
    assert "COPY scripts ./scripts" in text
    ignored = read_dockerignore()
    # `**/` also matches at the top (Docker: `**` is any number of folders, zero included)
    assert {".venv", ".git", "**/.env", "**/*.safetensors", "**/*.gguf"} <= set(ignored)


def test_the_base_images_uid_1000_user_is_removed_before_ours_is_made():
    """nvidia/cuda ubuntu24.04 images ship `ubuntu` with UID 1000: useradd --uid 1000 fails."""
    text = (ROOT / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=nvidia/cuda:" in text and "ubuntu24.04" in text
    assert text.index("userdel --remove ubuntu") < text.index("useradd --create-home --uid 1000")


def test_the_defaults_build_the_gpu_image_and_args_a_cpu_one():
    """Without build args: the CUDA base and CUDA torch. BASE_IMAGE and TORCH_INDEX_URL make a
    CPU image where the CUDA base or download.pytorch.org cannot be reached."""
    steps = read_instructions()
    assert [rest for kind, rest in steps if kind == "FROM"] == ["${BASE_IMAGE}"]
    args = dict(rest.partition("=")[::2] for kind, rest in steps if kind == "ARG")
    assert args["BASE_IMAGE"] == "nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04"
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cu128"
    assert args["PIP_INDEX_URL"] == "https://pypi.org/simple"
    text = (ROOT / "Dockerfile").read_text()
    assert 'pip install --index-url "$TORCH_INDEX_URL" torch==2.13.0' in text


def test_the_deadsnakes_ppa_is_added_on_ubuntu_only():
    """Debian bookworm ships python3.11 and has no add-apt-repository: the PPA step ran
    unconditionally and stopped a build on a Debian base."""
    text = (ROOT / "Dockerfile").read_text()
    guard = text.index("if grep -q '^ID=ubuntu' /etc/os-release; then")
    assert guard < text.index("software-properties-common") < text.index("fi \\")
    assert guard < text.index("add-apt-repository") < text.index("fi \\")


def test_the_image_has_the_prefect_yaml_for_prefect_deploy():
    """`prefect deploy --all` inside the image stopped with "provide an entrypoint"."""
    assert ("COPY", "prefect.yaml ./") in read_instructions()


def test_the_build_context_leaves_out_what_git_ignores():
    """Every .gitignore entry is in .dockerignore: a `.cache` folder (models, venvs) or
    build/dist in the checkout went to the daemon and into `COPY` layers."""
    ignored = read_dockerignore()
    for line in (ROOT / ".gitignore").read_text().splitlines():
        pattern = line.strip().strip("/")
        if pattern and not pattern.startswith(("#", "!")):
            assert pattern in ignored or f"**/{pattern}" in ignored, pattern
    assert ".mypy_cache" in ignored  # ignored by its own .gitignore


def test_every_copied_path_exists_and_is_in_the_build_context():
    ignored = read_dockerignore()
    for kind, rest in read_instructions():
        if kind == "COPY":
            for source in rest.split()[:-1]:
                assert (ROOT / source).exists(), source
                assert source not in ignored, source


def test_the_image_has_libnuma_for_a_local_vllm():
    """scripts/install_vllm.sh builds the CPU vLLM in the image, but its kernels (vllm._C) need
    libnuma.so.1: without it `serve-demo` failed at engine start."""
    text = (ROOT / "Dockerfile").read_text()
    assert "libnuma1=" in text.split("rm -rf /var/lib/apt/lists/*")[0]
