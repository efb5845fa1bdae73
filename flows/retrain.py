"""The retrain flow: feedback (+ synthetic data) -> adapter -> evaluation -> gate -> registry.

Reads top to bottom; each step is a task in ``flows/tasks.py`` wrapping one library call.
Parameters are typed so the Prefect UI renders a form: the recipe path (the YAML stays the
source of truth) plus ``--set``-style overrides such as ``train.hyperparameters.max_steps=3``.
Secrets never travel as parameters: the UI shows parameters in plain text.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.context import FlowRunContext
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from feinschliff import notify
from feinschliff.artifacts import OutputInUse, hash_tree, input_key, rows_sha256
from feinschliff.estimate import check_training_fits
from feinschliff.gate import Approval
from feinschliff.ledger import Ledger, effect_key, resume_or_restart
from feinschliff.pipeline import (
    default_workdir,
    held_back,
    read_report,
    registry_root,
    run_lock,
    summary_text,
)
from feinschliff.recipe import Recipe
from feinschliff.recipe_loader import load_recipe, recipe_hash
from feinschliff.registry import RegistryError, adapter_sha256
from feinschliff.rejections import record_rejection
from feinschliff.train.stage import nothing_new
from flows import artifacts
from flows.approval import ask_for_approval
from flows.faults import fault_point
from flows.tasks import (
    evaluate_task,
    fresh,
    gate_task,
    generate_task,
    ingest_task,
    mix_task,
    production_version,
    register_task,
    train_task,
)
from flows.train_stage import check_train_deployment, train_via_deployment

PASSED_NOT_REGISTERED = "PASSED the gate (not registered: register=false)"
UNCHANGED = "UNCHANGED: the adapter is already production {}"
NOTHING_NEW = "UNCHANGED: production {} was trained on these rows with this training recipe"
HELD = "HELD: the adapter is {}, {}"
# An evaluate-only run registers nothing: a human is not asked to approve it.
NOT_ASKED = Approval(
    approved=True, by="nobody", comment="not asked: evaluate only (register=false)"
)


def _notify_failure(flow, flow_run, state) -> None:
    params = flow_run.parameters
    try:  # the notification names the use case; the recipe itself may be what failed
        name = load_recipe(params.get("recipe_path", ""), params.get("overrides") or []).use_case
    except Exception:  # noqa: BLE001 - any failure to read it: fall back to the file name
        name = Path(params.get("recipe_path", "")).stem
    notify.send("failed", name, {"error": str(state.message)[:500]})


# How long a slot of `retrain-<use_case>` outlives a holder that died without releasing it
# (SIGKILL, a lost node): the run renews its lease while it lives; the server frees the slot
# once the lease has expired.
LEASE_S = 300


def limit_name(use_case: str) -> str:
    """The global concurrency limit (1 slot) that deployed runs of ``use_case`` queue on."""
    return f"retrain-{use_case}"


@contextmanager
def _one_run_per_use_case(use_case: str) -> Iterator[None]:
    """Deployed runs of a use case run one at a time: a second one waits here (Running, its
    work not started) until the first ends. A global concurrency limit, not the deployment's
    own limit: the server frees a deployment slot (and revokes its lease, crashing the run
    minutes later) when a run pauses for approval; this slot is held through the pause.
    Direct calls (`feinschliff run`) keep to ``run_lock`` alone: no queue, no lease that
    outlives a killed run."""
    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None or ctx.flow_run.deployment_id is None:
        yield
        return
    name = limit_name(use_case)
    with get_client(sync_client=True) as client:  # created on first use: no sync step needed
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with suppress(ObjectAlreadyExists):  # a concurrent first run created it
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=1)
                )
    get_run_logger().info(
        "taking concurrency limit %r: waits while another run of %s holds it (a holder that "
        "crashed or was killed keeps it until its lease expires, up to %d s after it died)",
        name,
        use_case,
        LEASE_S,
    )
    # a failed renewal must not kill an hours-long training; run_lock still guards the workdir
    with concurrency(
        name,
        occupy=1,
        lease_duration=LEASE_S,
        strict=True,
        raise_on_lease_renewal_failure=False,
    ):
        yield


def _check_workdir(work: Path) -> None:
    """A workdir that is a file, lies under one, or that the OS refuses to create: one line
    (as `feinschliff run` says it) before any stage runs or the run queues."""
    try:
        work.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputInUse(f"workdir {work}: {exc.strerror or exc}") from None


@flow(name="retrain", on_failure=[_notify_failure], on_crashed=[_notify_failure])
def retrain(
    recipe_path: str,
    overrides: list[str] | None = None,
    workdir: str | None = None,
    register: bool = True,
    train_deployment: str | None = None,
) -> dict:
    """Retrain one use case's adapter from its recipe and promote it if the gate passes. A run
    whose trained adapter is already production (nothing new to train on), or a warm start
    whose production was trained on these very rows, ends UNCHANGED: nothing is evaluated,
    asked, registered or announced (``register=False`` still evaluates); so does one whose
    adapter is a version an operator rolled back from or retired (HELD).

    Deployed runs of a use case run one at a time (a later one waits, see
    `_one_run_per_use_case`); a failed or crashed run (e.g. SIGTERM on pod eviction) notifies.

    Args:
        recipe_path: recipe YAML, absolute or relative to the flow run's working directory
            (`feinschliff deployments sync` stores it relative to the checkout it deploys).
        overrides: `dotted.path=value` recipe overrides (YAML-parsed, e.g.
            `train.hyperparameters.max_steps=3`), validated like the file. A deployment's
            default is the `--set` of `deployments sync`; a list given here replaces it.
        workdir: where stage outputs, the run's ledger and its lock go, on the worker (default
            `$FEINSCHLIFF_HOME/runs/<use_case>`); while another run holds it, this one fails
            at once (deployed runs of a use case queue one at a time before that).
        register: register and promote when the gate passes (off: evaluate only, and a
            `require_approval` rule passes without asking anyone: nothing would be registered).
        train_deployment: run training through this deployment (e.g. on a GPU work pool)
            instead of in this flow run; set by `feinschliff deployments sync --train-pool`.
            Both pools must see the workdir at the same path.
    """
    recipe = load_recipe(recipe_path, overrides or [])
    check_training_fits(recipe)  # a training that cannot fit train.gpu: refused before any stage
    work = Path(workdir) if workdir else default_workdir(recipe)
    _check_workdir(work)
    if train_deployment:  # a missing one fails here, not after ingest as "ObjectNotFound: None"
        check_train_deployment(train_deployment)
    with (
        _one_run_per_use_case(recipe.use_case),  # deployed runs queue here
        run_lock(work),  # one run per workdir: a second one would wipe this one's outputs
    ):
        return _retrain(recipe, recipe_path, overrides or [], work, register, train_deployment)


def _retrain(
    recipe: Recipe,
    recipe_path: str,
    overrides: list[str],
    work: Path,
    register: bool,
    train_deployment: str | None,
) -> dict:
    logger = get_run_logger()
    artifacts.publish_recipe(recipe)

    data = fresh(ingest_task, recipe=recipe, out=work / "ingest")
    artifacts.publish_ingest(recipe, data)
    for line in artifacts.pull_lines(data):  # whether a scheduled pull found anything
        logger.info("%s", line)
    fault_point("after-ingest")

    # Side effects (registry, servers, notifications) go through the run's ledger: a rerun after
    # a crash resumes this run and does each once (feinschliff.ledger). A run is keyed by the
    # recipe AND its feedback: a run that broke after its own promotion is resumed only with its
    # own data, never training a new candidate against the production it recorded before.
    ledger = Ledger(work / "ledger.jsonl")
    inputs = input_key(recipe_hash(recipe), register, rows_sha256(data))
    run, abandoned = resume_or_restart(ledger, inputs, lambda: production_version(recipe))
    if abandoned:
        logger.warning(
            "the unfinished run in %s is stale (%s): starting a new run", work, abandoned
        )

    def production_at(step: str) -> str | None:
        # The registry state a step builds on, recorded once per run: a rerun after a crash
        # that followed this run's own promotion trains, evaluates and decides as the first
        # attempt did, not against the candidate it promoted itself.
        return ledger.perform(
            effect_key(run, "production", recipe.use_case, step),
            lambda: production_version(recipe),
            what=f"production of {recipe.use_case} at {step}",
            run=run,
            effect="production",
        )

    if recipe.generate is not None:
        synthetic = fresh(generate_task, recipe=recipe, feedback=data, out=work / "generate")
        data = fresh(
            mix_task, recipe=recipe, feedback=data, generated=synthetic, out=work / "mixed"
        )
    warm_from = production_at("train")  # what init_from: production continues
    if register and warm_from and nothing_new(recipe, data, warm_from):
        # continuing production on the rows it was trained on would only compound them
        summary = f"decision: {NOTHING_NEW.format(warm_from)}"
        markdown = artifacts.nothing_new_markdown(warm_from)
        return _report_unchanged(recipe, ledger, run, work, warm_from, summary, markdown)
    if train_deployment:
        adapter = train_via_deployment(
            train_deployment, recipe, recipe_path, overrides, data, work / "train", warm_from
        )
    else:
        adapter = fresh(
            train_task, recipe=recipe, data=data, out=work / "train", production=warm_from
        )
    artifacts.publish_training(recipe, adapter)
    fault_point("after-train")
    # The production version the evaluation compares with: promotion compare-and-swaps against
    # it, so a production that moved after this point is never silently overridden.
    seen_production = production_at("evaluate")
    content = hash_tree(adapter.dir / "adapter") if register else ""
    if register and _already_production(recipe, content, seen_production):
        # Nothing to decide: production is this very adapter (no new feedback, training
        # cached). Evaluating it against itself would only re-run lm-eval (the key names the
        # production it compares with) and announce a "promotion" that moves nothing.
        summary = f"decision: {UNCHANGED.format(seen_production)}"
        return _report_unchanged(recipe, ledger, run, work, seen_production, summary)
    # an operator's rollback (or retirement) of this very adapter is not undone by a schedule
    if register and (held := held_back(recipe, content, ledger.results(run, "register"))):
        version, why = held
        summary = f"decision: {HELD.format(version, why)}"
        markdown = artifacts.held_markdown(version, why)
        return _report_unchanged(recipe, ledger, run, work, version, summary, markdown, held=True)
    report = fresh(
        evaluate_task,
        recipe=recipe,
        data=data,
        adapter=adapter,
        out=work / "evaluate",
        production=seen_production,
    )
    artifacts.publish_evaluation(recipe, report)
    fault_point("after-evaluate")
    decision = gate_task(recipe, report)
    fault_point("after-gate")

    if decision.needs_approval and not register:
        decision = gate_task(recipe, report, NOT_ASKED)
    elif decision.needs_approval:

        def ask() -> dict:
            # the reviewer sees the gate's results before answering (the final decision's
            # artifact replaces this one, same key)
            artifacts.publish_decision(recipe, decision, None)
            return ask_for_approval(recipe, decision, adapter.sha256).model_dump()

        # asked once per run and report: a rerun after a crash reuses the recorded answer
        answer = ledger.perform(
            effect_key(run, "approval", recipe.use_case, report.sha256),
            ask,
            what=f"approval of {recipe.use_case}",
        )
        decision = gate_task(recipe, report, Approval(**answer))

    version = None
    if decision.promote and register:
        version = register_task(
            recipe, data, adapter, report, decision, seen_production, ledger.path, run
        )
        fault_point("after-register")
    elif register:  # registered nowhere else: history shows rejected runs from the audit log
        ctx = FlowRunContext.get()
        record_rejection(
            recipe,
            decision,
            report=report,
            adapter=adapter,
            adapter_sha256=content,
            data=data,
            production=seen_production,
            workdir=work,
            run=str(ctx.flow_run.id) if ctx and ctx.flow_run else None,
            ledger_run=run,  # once per run: a retry or crash-resume adds nothing, a new run does
        )
    artifacts.publish_decision(recipe, decision, version, register)

    promoted = decision.promote and version is not None
    summary = summary_text(read_report(report), decision, version)
    if decision.promote and not register:  # evaluate only: nothing was registered or promoted
        summary = summary.replace("decision: PROMOTED", f"decision: {PASSED_NOT_REGISTERED}")
    logger.info("run summary\n%s", summary)
    if promoted and (now := production_version(recipe)) != version:
        # a rerun after a crash mid-promotion found the promotion done and moved away since:
        # it does not promote again (that would undo someone's rollback)
        logger.warning(
            "%s was promoted by this run, but production has since been moved to %s "
            "(rolled back or replaced by someone else): not promoting it again",
            version,
            now or "nothing",
        )
    candidate = read_report(report)["metrics"].get("candidate", {})
    fault_point("before-notify")
    # an evaluate-only run (register=false) that passes is neither promoted nor rejected
    event = "promoted" if promoted else "passed" if decision.promote else "rejected"
    notify.send_once(
        ledger,
        run,
        event,
        recipe.use_case,
        {
            "version": version,
            "rules": [r.model_dump() for r in decision.results],
            "metrics": {
                k: v["value"] for k, v in candidate.items() if isinstance(v.get("value"), float)
            },
        },
    )
    fault_point("after-notify")
    ledger.close_run(run)

    return {
        "use_case": recipe.use_case,
        "promoted": promoted,
        "unchanged": False,
        "held": None,
        "version": version,
        "workdir": str(work),
        "report": str(Path(report.path) / "report.json"),
        "decision": decision.model_dump(),
        "summary": summary,
    }


def _already_production(recipe: Recipe, content: str, version: str | None) -> bool:
    """Whether the trained adapter (content hash ``content``) is production ``version`` (the
    run's recorded view: a rerun after a crash past its own promotion recorded the production
    before it, so it finishes as the first attempt would have)."""
    if version is None:
        return False
    try:
        recorded = adapter_sha256(registry_root(recipe), recipe.use_case, version)
    except RegistryError:  # an unreadable version: evaluate and decide as usual
        return False
    return recorded == content


def _report_unchanged(
    recipe: Recipe,
    ledger: Ledger,
    run: str,
    work: Path,
    version: str,
    summary: str,
    markdown: str | None = None,
    held: bool = False,
) -> dict:
    """End a run that has nothing to decide (its adapter is production, production was trained
    on these rows, or the adapter is ``held``: a version an operator took out of production):
    no evaluation, gate, registration or notification (a daily schedule stays quiet)."""
    get_run_logger().info(
        "run summary\n%s\n(evaluation and gate skipped; `feinschliff evaluate` or "
        "register=false evaluates it anew)",
        summary,
    )
    artifacts.publish_unchanged(recipe, version, markdown)
    ledger.close_run(run)
    return {
        "use_case": recipe.use_case,
        "promoted": False,
        "unchanged": True,
        "held": version if held else None,  # the version no run promotes on its own
        "version": version,
        "workdir": str(work),
        "report": None,
        "decision": None,
        "summary": summary,
    }
