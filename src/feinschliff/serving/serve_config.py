"""Serving configs for the production adapter: vLLM flags, a production-stack ``LoraAdapter``,
TGI's ``LORA_ADAPTERS`` and an Ollama Modelfile (shared FACTS 10.3.1, 10.3.6).

Each renders text only; nothing is started or written. Adapter paths are those of
:func:`feinschliff.serving.deploy.stage_files` (one path per version), as the servers see them.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Target = Literal["vllm", "vllm-k8s", "tgi", "ollama"]
TARGETS: tuple[str, ...] = ("vllm", "vllm-k8s", "tgi", "ollama")


@dataclass(frozen=True)
class ServedAdapter:
    """What every target needs: the served name, where the files are, and the base model."""

    name: str
    version: str
    path: str
    base_model: str
    max_lora_rank: int
    max_loras: int
    mode: str = "runtime"
    resolver_dir: str | None = None


def render(adapter: ServedAdapter, target: Target) -> str:
    if target == "vllm":
        return render_vllm(adapter)
    if target == "vllm-k8s":
        return render_vllm_k8s(adapter)
    if target == "tgi":
        return render_tgi(adapter)
    if target == "ollama":
        return render_ollama(adapter)
    raise ValueError(f"unknown target {target!r}; choose one of {TARGETS}")


def render_vllm(a: ServedAdapter) -> str:
    """Environment + ``python -m vllm.entrypoints.openai.api_server`` arguments.

    Runtime mode pins the stable name to this version's path in ``--lora-modules``: a replica
    restarted after a later promotion comes back on it until ``registry reconcile`` runs.
    Resolver mode has no ``--lora-modules``: the resolver loads ``<resolver_dir>/<name>/``,
    which ``registry reconcile`` keeps on the production version.
    """
    env = ["VLLM_ALLOW_RUNTIME_LORA_UPDATING=true"]
    if a.mode == "resolver":
        env += [
            "VLLM_PLUGINS=lora_filesystem_resolver",
            f"VLLM_LORA_RESOLVER_CACHE_DIR={a.resolver_dir}",
        ]
    args = [
        "python",
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        a.base_model,
        "--enable-lora",
        "--max-lora-rank",
        str(a.max_lora_rank),
        "--max-loras",
        str(a.max_loras),
        "--max-cpu-loras",
        str(a.max_loras * 2),
    ]
    if a.mode == "resolver":
        lines = [
            f"# {a.name} = {a.version}, served by the resolver from {a.resolver_dir}/{a.name}/ "
            "(`feinschliff registry reconcile` writes it)"
        ]
    else:
        module = {"name": a.name, "path": a.path, "base_model_name": a.base_model}
        args += ["--lora-modules", json.dumps(module, separators=(",", ":"))]
        lines = [
            f"# {a.name} = {a.version}; `feinschliff registry reconcile` keeps running servers "
            "in sync",
            f"# a replica restarted after a later promotion comes back on {a.version}: run "
            "`feinschliff registry reconcile RECIPE` after every restart",
        ]
    lines += [f"export {e}" for e in env]
    lines.append(" \\\n  ".join(shlex.quote(x) for x in args))
    return "\n".join(lines) + "\n"


def render_vllm_k8s(a: ServedAdapter) -> str:
    """A vLLM production-stack operator ``LoraAdapter`` (production-stack.vllm.ai/v1alpha1)."""
    return (
        "apiVersion: production-stack.vllm.ai/v1alpha1\n"
        "kind: LoraAdapter\n"
        "metadata:\n"
        f"  name: {a.name}-{a.version}\n"
        "  labels:\n"
        "    app.kubernetes.io/managed-by: feinschliff\n"
        f"    feinschliff/version: {a.version}\n"
        "spec:\n"
        f"  baseModel: {json.dumps(a.base_model)}\n"
        "  adapterSource:\n"
        "    type: local\n"
        f"    adapterName: {json.dumps(a.name)}\n"
        f"    adapterPath: {json.dumps(a.path)}\n"
        "  loraAdapterDeploymentConfig:\n"
        "    algorithm: default\n"
    )


def render_tgi(a: ServedAdapter) -> str:
    """TGI loads adapters at startup only; requests pick one with parameters.adapter_id."""
    return (
        f"# TGI has no runtime load endpoint: restart with the new value to switch {a.name}\n"
        f"LORA_ADAPTERS={a.name}={a.path}\n"
        f"# request: POST /generate "
        f'{{"inputs": "...", "parameters": {{"adapter_id": "{a.name}"}}}}\n'
    )


def render_ollama(a: ServedAdapter) -> str:
    """An Ollama Modelfile: the base model plus the safetensors adapter directory.

    Ollama's ``FROM`` takes a local weights folder (or GGUF file) or an Ollama model name, not a
    Hugging Face id: a base served by id gets a folder to download it into, said in a comment.
    """
    head = (
        f"# ollama create {a.name} -f Modelfile  ({a.version}; Llama/Mistral/Gemma architectures)\n"
    )
    base = a.base_model
    if not _is_local_path(base):
        folder = "./" + base.rstrip("/").rsplit("/", 1)[-1]
        head += (
            f"# FROM needs the base weights on disk: download {base} (safetensors) into {folder}\n"
            f"# (e.g. `hf download {base} --local-dir {folder}`), or name an Ollama model built\n"
            "# from exactly that base; the adapter was trained on it\n"
        )
        base = folder
    return f"{head}FROM {base}\nADAPTER {a.path}\n"


def _is_local_path(model: str) -> bool:
    """A path as vLLM's --model takes it (absolute, relative or ~), not a hub ``org/name`` id."""
    return model.startswith(("/", "./", "../", "~")) or Path(model).expanduser().exists()
