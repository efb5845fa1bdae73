"""A human's approve/reject for the gate's `require_approval` rule: the flow pauses for a typed
form in the Prefect UI; no answer within the rule's timeout rejects and the run goes on.

The deadline is ours, not the server's: at the deadline the flow resumes its own pause with a
rejection. A Prefect pause timeout alone races the server's pause-expiration service (every
5 s on a real server), which fails the run: a Failed state and event (and any automation that
alerts on failures) for a rejection that is no failure. The server's pause timeout is set
``EXPIRY_GRACE_S`` later, a backstop for a flow process that died while paused.
"""

from __future__ import annotations

import threading
from uuid import UUID

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run, resume_flow_run
from prefect.input import RunInput
from prefect.states import Running

from feinschliff import notify
from feinschliff.gate import Approval, Decision
from feinschliff.pipeline import registry_root
from feinschliff.recipe import Recipe
from feinschliff.registry import record_event
from feinschliff.specs.evaluate import RequireApprovalRule
from flows.artifacts import decision_markdown, run_logger

EXPIRY_GRACE_S = 600
TIMED_OUT = "(no answer: timeout)"  # the reviewer the deadline answers as


class ApprovalInput(RunInput):
    """The form a reviewer fills in the Prefect UI when the gate asks for a human."""

    approve: bool
    reviewer: str = ""
    comment: str = ""


def approval_description(recipe: Recipe, decision: Decision, timeout_s: int) -> str:
    """The markdown the UI shows above the approve/reject form: the gate's results."""
    return (
        f"{decision_markdown(decision, None)}\n\n"
        f"Approve to register and promote the {recipe.use_case} candidate, or reject it. "
        f"No answer within {timeout_s} s rejects."
    )


def ask_for_approval(recipe: Recipe, decision: Decision, candidate: str | None = None) -> Approval:
    """Notify, pause for the reviewer's form in the Prefect UI (headed by the gate's results),
    record the answer in the registry's audit log (with ``candidate``: the train output's hash,
    as the evaluation report names it); no answer within the rule's timeout counts as a
    rejection, and the run goes on (it ends Completed, not Failed)."""
    rule = next(r for r in recipe.gate.rules if isinstance(r, RequireApprovalRule))
    notify.send(
        "approval_needed", recipe.use_case, {"rules": [r.model_dump() for r in decision.results]}
    )
    run_id = FlowRunContext.get().flow_run.id
    answered = threading.Event()
    deadline = threading.Thread(
        target=_reject_at_deadline, args=(run_id, rule.timeout_s, answered), daemon=True
    )
    deadline.start()
    form = ApprovalInput.with_initial_data(
        description=approval_description(recipe, decision, rule.timeout_s)
    )
    get_run_logger().info(
        "waiting for a reviewer: approve or reject %s in the Prefect UI (Resume: the form "
        "shows the gate's results); no answer within %s s rejects",
        recipe.use_case,
        rule.timeout_s,
    )
    try:
        answer = pause_flow_run(
            wait_for_input=form, timeout=rule.timeout_s + EXPIRY_GRACE_S, poll_interval=2
        )
    except FlowPauseTimeout:  # the deadline could not resume the run (API unreachable)
        answer = None
        _unpause(run_id)
    finally:
        answered.set()
        deadline.join()
    if answer is None or (answer.reviewer == TIMED_OUT and not answer.approve):
        approval = Approval(
            approved=False, by="timeout", comment=f"no answer in {rule.timeout_s} s"
        )
    else:
        approval = Approval(
            approved=answer.approve, by=answer.reviewer or "prefect-ui", comment=answer.comment
        )
    record_answer(recipe, approval, candidate)
    return approval


def record_answer(recipe: Recipe, approval: Approval, candidate: str) -> None:
    """The reviewer's answer in the registry's audit log. A registry that cannot take it (read
    only, unreachable) gets a warning: a rejection must end as a rejection, not a failed run
    (an approval then fails where it registers, naming the registry)."""
    try:
        record_event(
            registry_root(recipe),
            recipe.use_case,
            "approval",
            why=approval.comment,
            approved=approval.approved,
            reviewer=approval.by,
            candidate=candidate,
        )
    except Exception as exc:  # noqa: BLE001 - any store error; the decision stands
        run_logger(__name__).warning(
            "the reviewer's answer could not be recorded in the registry's audit log (%s: %s)",
            type(exc).__name__,
            exc,
        )


def _reject_at_deadline(run_id: UUID, timeout_s: int, answered: threading.Event) -> None:
    """At the deadline, resume the paused run with a rejection. A run not paused yet is tried
    again; a reviewer who answered first wins (the server refuses a second resume)."""
    if answered.wait(timeout_s):
        return
    while not answered.is_set():
        try:
            resume_flow_run(run_id, run_input={"approve": False, "reviewer": TIMED_OUT})
            return
        except Exception:  # noqa: BLE001 - not paused yet, answered meanwhile, API hiccup
            answered.wait(1)


def _unpause(run_id: UUID) -> None:
    """The server still has the run Paused: without this Prefect fails it at the end. Only a
    paused run: a cancellation that arrived meanwhile must not be overwritten."""
    with get_client(sync_client=True) as client:
        if client.read_flow_run(run_id).state.is_paused():
            client.set_flow_run_state(run_id, Running(), force=True)
