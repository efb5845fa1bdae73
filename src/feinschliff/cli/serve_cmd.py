"""`feinschliff serve-config` and `feinschliff serve-demo`: serve the production adapter."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from feinschliff.cli.app import Failure, RecipeArg, SetOpt, _load, app
from feinschliff.cli.registry_cmd import _errors
from feinschliff.serving.serve_config import TARGETS, Target


@app.command("serve-config")
def serve_config(
    recipes: Annotated[
        list[Path],
        typer.Argument(
            metavar="RECIPE",
            help="Recipe YAML file; several: one config for a server they all share.",
            show_default=False,
        ),
    ],
    target: Annotated[str, typer.Option(help=f"One of: {', '.join(TARGETS)}.")] = "vllm",
    version: Annotated[
        str | None,
        typer.Option(help="Registry version, e.g. v0003 (default: production; one RECIPE only)."),
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
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Override a recipe value: dotted.path=value (YAML-parsed), in every RECIPE. "
            "Repeatable.",
        ),
    ] = None,
) -> None:
    """Print a serving config for the production adapter (or --version) of the recipe's
    registry: vllm (server flags with --enable-lora --max-lora-rank --max-loras, and
    --lora-modules in runtime mode; in resolver mode the resolver serves the use case), vllm-k8s
    (a production-stack LoraAdapter resource named after the use case; its baseModel is
    --k8s-model, the pods' `model` label), tgi (LORA_ADAPTERS; a path with ',', '=' or '@' is
    refused, exit 2) or ollama (a Modelfile with ADAPTER). A version that does not fit the
    recipe's serving settings now (register.max_lora_rank, base model) is refused, exit 2.
    Copies the version to its serving path (register.vllm.adapter_dir) so the printed path
    exists; writes nothing else.

    Several RECIPEs: one config for a server that serves all their use cases (production
    versions; not for ollama, whose Modelfile is one model). They must agree on what the server
    is: base model, register.vllm.model, mode, resolver_dir and servers, each use case given
    once (else exit 2 naming both recipes and the field). --max-lora-rank is the largest
    register.max_lora_rank; --max-loras counts keep_versions + 1 per use case plus one being
    staged and one kept free (at least the largest register.vllm.max_loras), and the output
    names the recipes whose register.vllm.max_loras should be raised to it."""
    from feinschliff.registry import RegistryError
    from feinschliff.serving.publish import served_adapter
    from feinschliff.serving.serve_config import ServeConfigError, render

    if target not in TARGETS:
        raise Failure(f"--target must be one of {', '.join(TARGETS)}", code=2)
    if k8s_model is not None and target != "vllm-k8s":
        raise Failure(f"--k8s-model is only for --target vllm-k8s, not {target}", code=2)
    if len(recipes) > 1:
        if version is not None:
            raise Failure("--version takes one RECIPE (several: their production)", code=2)
        _serve_config_shared(recipes, target, k8s_model, set_)  # type: ignore[arg-type]
        return
    cfg = _load(recipes[0], set_)
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


def _serve_config_shared(
    paths: list[Path], target: Target, k8s_model: str | None, overrides: list[str] | None
) -> None:
    """`serve-config A B ...`: the recipes are checked to fit one server before any version
    is copied to its serving path."""
    from feinschliff.registry import InvalidName, RegistryError
    from feinschliff.serving.preflight import PreflightError
    from feinschliff.serving.publish import served_adapter
    from feinschliff.serving.serve_config import ServeConfigError
    from feinschliff.serving.serve_config_shared import SharedUseCase, check_shared, render_shared

    items = [SharedUseCase(str(p), _load(p, overrides)) for p in paths]
    with _errors():
        try:
            check_shared(items, target)
            served = []
            for item in items:
                try:
                    served.append(dataclasses.replace(item, adapter=served_adapter(item.recipe)))
                except (RegistryError, PreflightError) as exc:  # which recipe; codes as one
                    code = 2 if isinstance(exc, PreflightError | InvalidName) else 1
                    raise Failure(f"{item.source}: {exc}", code=code) from exc
            text = render_shared(served, target, k8s_model)
        except ServeConfigError as exc:
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
