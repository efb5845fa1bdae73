"""Serving configs for the production adapter: vLLM flags, a production-stack ``LoraAdapter``,
TGI's ``LORA_ADAPTERS`` and an Ollama Modelfile (shared FACTS 10.3.1, 10.3.6).

Each renders text only; nothing is started or written. Adapter paths are those of
:func:`feinschliff.serving.deploy.stage_files` (one path per version), as the servers see them.
"""

from __future__ import annotations

import json
import re
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
    api_key_envs: tuple[str, ...] = ()  # the variables the recipe's servers are called with


class ServeConfigError(ValueError):
    """The adapter cannot be served on the target as configured (a CLI exit 2)."""


def render(adapter: ServedAdapter, target: Target, *, k8s_model: str | None = None) -> str:
    if k8s_model is not None and target != "vllm-k8s":
        raise ServeConfigError(f"--k8s-model is only for --target vllm-k8s, not {target}")
    if target == "vllm":
        return render_vllm(adapter)
    if target == "vllm-k8s":
        return render_vllm_k8s(adapter, k8s_model)
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
    env = [("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "true")]
    if a.mode == "resolver":
        env += [
            ("VLLM_PLUGINS", "lora_filesystem_resolver"),
            ("VLLM_LORA_RESOLVER_CACHE_DIR", str(a.resolver_dir)),
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
    lines += [f"export {k}={shlex.quote(v)}" for k, v in env]
    lines += auth_lines(a.api_key_envs)
    lines.append(" \\\n  ".join(shlex.quote(x) for x in args))
    return "\n".join(lines) + "\n"


def auth_lines(envs: tuple[str, ...]) -> list[str]:
    """The server's API key: vLLM checks ``VLLM_API_KEY`` on every /v1 route, the adapter
    load/unload routes included; without one anyone who reaches the port can swap adapters."""
    if len(envs) == 1:  # the variable holds the key on the server too: expanded there
        return [f'export VLLM_API_KEY="${{{envs[0]}}}"']
    if envs:
        return [f'# each replica: export VLLM_API_KEY="$<its api_key_env>" ({", ".join(envs)})']
    return [
        "# no register.vllm.servers[].api_key_env: anyone who reaches this port can load and "
        "unload adapters (/v1/load_lora_adapter); set one and export VLLM_API_KEY"
    ]


# a Kubernetes label value: the operator matches pods by the label `model: <baseModel>`
_LABEL_VALUE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?")


def render_vllm_k8s(a: ServedAdapter, k8s_model: str | None = None) -> str:
    """A vLLM production-stack operator ``LoraAdapter`` (production-stack.vllm.ai/v1alpha1).

    The operator places the adapter on the pods labelled ``model: <spec.baseModel>`` (the Helm
    chart's ``modelSpec[].name``), so baseModel is that name: ``k8s_model``, or the vLLM
    ``--model`` string where that is a valid label value. One resource per use case: the
    operator loads by adapterName and does not reload a changed adapterPath.
    """
    base = k8s_model if k8s_model is not None else a.base_model
    if not _LABEL_VALUE.fullmatch(base):
        given = "--k8s-model" if k8s_model is not None else "the served model"
        raise ServeConfigError(
            f"{given} {base!r} is no Kubernetes label value (at most 63 of A-Za-z0-9._-, "
            "alphanumeric at both ends), so the operator's pod label `model` cannot match it: "
            "pass --k8s-model NAME, the production-stack modelSpec name"
        )
    n = a.name
    return (
        f"# {n} = {a.version}. The operator loads by adapterName and does not reload a changed\n"
        f"# adapterPath: to switch versions, `kubectl delete loraadapter {n}` (requests for {n}\n"
        "# answer 404 until the new one is loaded), then `kubectl apply` this. For a switch\n"
        "# without that gap, list the servers in register.vllm and let feinschliff switch live\n"
        "# (`feinschliff registry promote ... --recipe`).\n"
        "apiVersion: production-stack.vllm.ai/v1alpha1\n"
        "kind: LoraAdapter\n"
        "metadata:\n"
        f"  name: {n}\n"
        "  labels:\n"
        "    app.kubernetes.io/managed-by: feinschliff\n"
        f"    feinschliff/version: {a.version}\n"
        "spec:\n"
        f"  baseModel: {json.dumps(base)}\n"
        "  adapterSource:\n"
        "    type: local\n"
        f"    adapterName: {json.dumps(n)}\n"
        f"    adapterPath: {json.dumps(a.path)}\n"
        "  loraAdapterDeploymentConfig:\n"
        "    algorithm: default\n"
    )


def render_tgi(a: ServedAdapter) -> str:
    """TGI loads adapters at startup only; requests pick one with parameters.adapter_id.

    ``LORA_ADAPTERS`` has no escaping (TGI's parse_lora_adapters splits on ',' and reads '='
    and '@' as separators), so a path with one of those is refused.
    """
    check_tgi_path(a.path)
    return (
        f"# TGI has no runtime load endpoint: restart with the new value to switch {a.name}\n"
        f"LORA_ADAPTERS={shlex.quote(f'{a.name}={a.path}')}\n"
        f"# request: POST /generate "
        f'{{"inputs": "...", "parameters": {{"adapter_id": "{a.name}"}}}}\n'
    )


def check_tgi_path(path: str) -> None:
    """Refuse a path ``LORA_ADAPTERS`` cannot hold (TGI splits on ',', '=' and '@')."""
    for char in ",=@":
        if char in path:
            raise ServeConfigError(
                f"TGI's LORA_ADAPTERS cannot hold {char!r} in an adapter path: {path}"
            )


def render_ollama(a: ServedAdapter) -> str:
    """An Ollama Modelfile: the base model plus the safetensors adapter directory.

    Ollama's ``FROM`` takes a local weights folder (or GGUF file) or an Ollama model name, not a
    Hugging Face id: a base served by id gets a folder to download it into, said in a comment.
    A Hugging Face cache snapshot folder counts as its hub id: Ollama refuses its symlinks.
    """
    head = (
        f"# ollama create {a.name} -f Modelfile  ({a.version}; Llama/Mistral/Gemma architectures)\n"
        "# the paths below are read by `ollama create` on the machine where it runs\n"
    )
    base = _hub_id_of_snapshot(a.base_model) or a.base_model
    if not _is_local_path(base):
        folder = "./" + base.rstrip("/").rsplit("/", 1)[-1]
        head += (
            f"# FROM needs the base weights on disk: download {base} (safetensors) into {folder}\n"
            f"# (e.g. `hf download {base} --local-dir {folder}`), or name an Ollama model built\n"
            "# from exactly that base; the adapter was trained on it\n"
        )
        base = folder
    head += (
        '# Ollama >= 0.13 refuses an adapter folder ("no Modelfile or safetensors files found",'
        " ollama/ollama#13314): convert it with llama.cpp's `convert_lora_to_gguf.py --base "
        f"{shlex.quote(base)} {shlex.quote(a.path)} --outfile adapter.gguf` and use "
        "`ADAPTER ./adapter.gguf`\n"
    )
    return f"{head}FROM {base}\nADAPTER {a.path}\n"


# huggingface_hub's cache: <cache>/models--<org>--<name>/snapshots/<revision>
_HF_SNAPSHOT = re.compile(r"(?:^|.*/)models--([^/]+)/snapshots/[^/]+/?")


def _hub_id_of_snapshot(model: str) -> str | None:
    """``org/name`` for a Hugging Face cache snapshot folder, else None."""
    m = _HF_SNAPSHOT.fullmatch(model)
    return m.group(1).replace("--", "/", 1) if m else None


def _is_local_path(model: str) -> bool:
    """A path as vLLM's --model takes it (absolute, relative or ~), not a hub ``org/name`` id."""
    return model.startswith(("/", "./", "../", "~")) or Path(model).expanduser().exists()
