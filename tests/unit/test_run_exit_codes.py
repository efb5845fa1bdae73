"""`feinschliff run` exits as the stage commands do when the flow fails: refused inputs 2, a
stage's failure 1 with one line naming the stage, a busy workdir 1 before Prefect starts.
The flow is replaced by a stub (no Prefect server in unit tests)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from feinschliff.evaluate.harness import EvalError
from feinschliff.ingest.stage import IngestError, InvalidSource
from feinschliff.pipeline import run_lock
from feinschliff.train.checks import RecipeRefused, TrainError
from tests.cli_helpers import run_cli
from tests.unit.adapter_factory import make_base

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "recipes" / "demo-de.yaml")


@pytest.fixture
def flow(tmp_path, monkeypatch):
    """The retrain flow as a stub that raises ``flow.error``; ``flow.calls`` counts its runs."""
    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))
    stub = types.SimpleNamespace(error=None, calls=0)

    def retrain(**_: object) -> dict:
        stub.calls += 1
        raise stub.error

    monkeypatch.setitem(sys.modules, "flows.retrain", types.SimpleNamespace(retrain=retrain))
    stub.args = ["run", DEMO, "--set", f"base_model.name={make_base(tmp_path / 'base')}"]
    return stub


@pytest.mark.parametrize(
    ("error", "code", "said"),
    [
        (RecipeRefused("target_modules: no module 'x_proj' in the model"), 2, "train: "),
        (InvalidSource("no export found in /data/x"), 2, "ingest: "),
        (TrainError("the trainer crashed: out of memory"), 1, "train: the trainer crashed"),
        (IngestError("every row was quarantined"), 1, "ingest: every row"),
        (EvalError("lm-eval does not know task 'x'"), 1, "evaluate: lm-eval"),
    ],
)
def test_a_failed_stage_is_one_line_naming_it_with_the_stage_commands_exit_code(
    flow, error, code, said
):
    """`run` let every flow exception through as a traceback (exit 1): a recipe the train
    stage refuses exited 2 from `train` but 1 from `run`, and nothing said which stage broke."""
    flow.error = error
    got, output = run_cli(*flow.args)
    assert (got, flow.calls) == (code, 1)
    assert said in output and str(error) in output


def test_a_busy_workdir_is_one_line_before_the_flow_starts(flow, tmp_path):
    """A second run on a busy workdir started Prefect, failed the flow run (notifying "run
    failed" for a run that never started) and ended in a traceback."""
    work = tmp_path / "my runs" / "über"
    with run_lock(work):
        got, output = run_cli(*flow.args, "--workdir", str(work))
    assert got == 1 and "is in use by a run (pid " in output
    assert flow.calls == 0


def test_an_unknown_error_keeps_its_traceback(flow):
    flow.error = KeyError("bug")
    with pytest.raises(KeyError):
        run_cli(*flow.args)


def test_a_workdir_that_is_a_file_is_an_argument_error(flow, tmp_path):
    work = tmp_path / "runs"
    work.write_text("not a folder")
    got, output = run_cli(*flow.args, "--workdir", str(work))
    assert got == 2 and f"workdir {work}: " in output and flow.calls == 0
