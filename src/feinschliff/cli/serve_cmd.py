"""`feinschliff serve-config` and `feinschliff serve-demo`: serve the production adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from feinschliff.cli.app import Failure, RecipeArg, SetOpt, _load, app
from feinschliff.cli.registry_cmd import _errors
from feinschliff.serving.serve_config import TARGETS


@app.command("serve-config")
def serve_config(
    recipe: RecipeArg,
    target: Annotated[str, typer.Option(help=f"One of: {', '.join(TARGETS)}.")] = "vllm",
    version: Annotated[
        str | None,
        typer.Option(help="Registry version, e.g. v0003 (default: production)."),
    ] = None,
    k8s_model: Annotated[
        str | None,
        typer.Option(
            "--k8s-model",
            help="The production-stack modelSpec name, i.e. the pods' `model` label (default: "
            "the served --model string, where that is a valid label value); only for --target "
            "vllm-k8s.",
        ),
    ] = None,
    set_: SetOpt = None,
) -> None:
    """Print a serving config for the production adapter (or --version) of the recipe's
    registry: vllm (server flags with --enable-lora --max-lora-rank --max-loras, and
    --lora-modules in runtime mode; in resolver mode the resolver serves the use case), vllm-k8s
    (a production-stack LoraAdapter resource named after the use case; its baseModel is
    --k8s-model, the pods' `model` label), tgi (LORA_ADAPTERS; a path with ',', '=' or '@' is
    refused, exit 2) or ollama (a Modelfile with ADAPTER). A version that does not fit the
    recipe's serving settings now (register.max_lora_rank, base model) is refused, exit 2.
    Copies the version to its serving path (register.vllm.adapter_dir) so the printed path
    exists; writes nothing else."""
    from feinschliff.registry import RegistryError
    from feinschliff.serving.publish import served_adapter
    from feinschliff.serving.serve_config import ServeConfigError, render

    if target not in TARGETS:
        raise Failure(f"--target must be one of {', '.join(TARGETS)}", code=2)
    if k8s_model is not None and target != "vllm-k8s":
        raise Failure(f"--k8s-model is only for --target vllm-k8s, not {target}", code=2)
    cfg = _load(recipe, set_)
    # as the registry commands: a store's OSError / cloud SDK error -> exit 1; a PreflightError
    # (served model is not the recipe's base model: a recipe error) -> exit 2, in _errors
    with _errors():
        if version is not None:  # a typo is a wrong argument (exit 2), as for `registry show`
            from feinschliff.cli.registry_cmd import _known_version
            from feinschliff.pipeline import registry_root

            _known_version(registry_root(cfg), cfg.use_case, version)
        try:
            adapter = served_adapter(cfg, version)
            text = render(adapter, target, k8s_model=k8s_model)  # type: ignore[arg-type]
        except RegistryError as exc:
            raise Failure(str(exc)) from exc
        except ServeConfigError as exc:  # cannot be served on that target as configured
            raise Failure(str(exc), code=2) from exc
    typer.echo(text, nl=False)


@app.command("serve-demo")
def serve_demo(
    recipe: RecipeArg,
    prompt: Annotated[
        str | None,
        typer.Option(
            help="German prompt to answer (default: 'Wie kann ich mein Passwort zurücksetzen?')."
        ),
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(
            help="A running vLLM server to use instead of starting one (its --model must be "
            "the recipe's base model, with runtime LoRA loading); the production adapter is "
            "loaded into it and stays loaded, as `registry reconcile` would leave it (other "
            "versions of this use case loaded there are unloaded)."
        ),
    ] = None,
    workdir: Annotated[
        Path | None,
        typer.Option(
            help="Where the started server's vllm.log goes (default "
            "$FEINSCHLIFF_HOME/serve-demo; unused with --url)."
        ),
    ] = None,
    set_: SetOpt = None,
) -> None:
    """Load the production adapter into a local vLLM server (installed on first use by
    scripts/install_vllm.sh into $FEINSCHLIFF_HOME/venvs, ~4-5 min once; started ~1-2 min) and print
    the base model's and the adapter's answer to one German prompt; a server it started is
    stopped after (one given as --url keeps running). Writes vllm.log (unless --url) and copies the adapter to its serving folder
    (register.vllm.adapter_dir, default $FEINSCHLIFF_HOME/serving). Exit 1
    when there is no production version or the server fails; exit 2 when the served model is
    not the recipe's base model."""
    from feinschliff.registry import RegistryError
    from feinschliff.serving.deploy import DeployError
    from feinschliff.serving.publish import DEMO_PROMPT
    from feinschliff.serving.publish import serve_demo as run_demo
    from feinschliff.serving.vllm_client import VllmError
    from feinschliff.serving.vllm_server import VllmStartError

    cfg = _load(recipe, set_)
    # as the registry commands: a store's OSError / cloud SDK error -> exit 1; a PreflightError
    # (served model is not the recipe's base model: a recipe error) -> exit 2, in _errors
    with _errors():
        try:
            answer = run_demo(cfg, prompt=prompt or DEMO_PROMPT, url=url, workdir=workdir)
        except (RegistryError, DeployError, VllmError, VllmStartError) as exc:
            raise Failure(str(exc)) from exc
    typer.echo(f"vLLM {answer.url}: {cfg.use_case} = {answer.version}")
    typer.echo(f"prompt:  {answer.prompt}")
    typer.echo(f"base:    {answer.base.strip()}")
    typer.echo(f"adapter: {answer.adapter.strip()}")
