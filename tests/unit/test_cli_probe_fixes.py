"""Mistakes a first-time user makes get one line and the right exit code, and leave nothing
behind: an output path under a file or one the OS refuses, a train --out holding someone's
files (refused before the base model is provisioned), a mistyped use case given to
`registry promote|rollback|retire`, `estimate --gpu` with `--cpu`, an invalid
FEINSCHLIFF_LOG_LEVEL; a YAML syntax error said in the file's lines, not PyYAML's
`in "<unicode string>"` with echoed snippets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from feinschliff.artifacts import OutputInUse, prepare_out
from feinschliff.ingest import run_ingest
from feinschliff.recipe import FeedbackSpec
from feinschliff.registry import register_adapter
from tests.cli_helpers import run_cli, run_main
from tests.unit.adapter_factory import make_base, make_train_output, target_for

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "recipes" / "demo-de.yaml")
LANGFUSE = ROOT / "data" / "samples" / "langfuse"


def test_ingest_out_under_a_file_is_an_argument_error(tmp_path):
    (tmp_path / "notes.txt").write_text("mine\n")
    out = tmp_path / "notes.txt" / "run"
    code, said = run_cli("ingest", "--source", f"langfuse:{LANGFUSE}", "--out", str(out))
    assert code == 2 and f"{tmp_path / 'notes.txt'} is a file, not a folder" in said, said
    assert (tmp_path / "notes.txt").read_text() == "mine\n"


def test_an_output_folder_the_os_refuses_is_one_line_not_a_traceback():
    with pytest.raises(OutputInUse, match="cannot create the output folder /proc/"):
        prepare_out(Path("/proc/feinschliff-no-such/out"), "key", "train")


def test_train_refuses_a_foreign_out_before_provisioning_the_model(tmp_path, monkeypatch, capsys):
    """The refusal came after the base model was fetched and converted (a minute, network)."""
    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))
    data = tmp_path / "data"
    sources = [{"kind": "langfuse", "path": str(LANGFUSE)}]
    run_ingest(FeedbackSpec.model_validate({"sources": sources, "pii": {"mode": "off"}}), data)

    def provisioned(*_args, **_kwargs):
        raise AssertionError("the base model was provisioned before --out was checked")

    monkeypatch.setattr("feinschliff.train.stage.base_model_fingerprint", provisioned)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep\n")
    code, said = run_main(
        monkeypatch, capsys, "train", DEMO, "--data", str(data), "--out", str(mine)
    )
    assert code == 2 and "no feinschliff stage wrote it" in said, said
    assert (mine / "notes.txt").read_text() == "keep\n"
    under = str(mine / "notes.txt" / "run")
    code, said = run_main(monkeypatch, capsys, "train", DEMO, "--data", str(data), "--out", under)
    assert code == 2 and "is a file, not a folder" in said and "Traceback" not in said, said


@pytest.mark.parametrize(
    "args",
    [
        ("promote", "suport-de", "v0001"),
        ("rollback", "suport-de"),
        ("retire", "suport-de", "v0001", "--why", "typo"),
    ],
)
def test_registry_change_of_an_unknown_use_case_creates_nothing(tmp_path, args):
    """A mistyped use case left a `<use_case>/.lock` folder behind (exit 1), after which
    `registry show` of the typo answered an empty use case with exit 0."""
    reg = tmp_path / "reg"
    reg.mkdir()
    code, said = run_cli("registry", *args, "--root", str(reg))
    assert code == 2 and "no use case 'suport-de'" in said, said
    assert list(reg.iterdir()) == []


def test_estimate_gpu_with_cpu_is_an_argument_error():
    """--cpu prints no GPU table: the --gpu asked for was silently ignored."""
    code, said = run_cli("estimate", DEMO, "--cpu", "--gpu", "rtx-4090")
    assert code == 2 and "--gpu and --cpu exclude each other" in said, said


def test_an_invalid_log_level_is_one_line_not_a_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "feinschliff.cli", "validate", DEMO],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "FEINSCHLIFF_LOG_LEVEL": "verbose"},
    )
    assert proc.returncode == 2, proc.stderr
    assert "FEINSCHLIFF_LOG_LEVEL='verbose' is not a log level" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_home_that_is_a_file_is_one_line(tmp_path, monkeypatch, capsys):
    """`registry list` answered "registry is empty (.../afile.txt/registry)" with exit 0."""
    (tmp_path / "afile.txt").write_text("x")
    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "afile.txt"))
    code, said = run_main(monkeypatch, capsys, "registry", "list")
    assert (
        code == 2
        and said.strip() == f"FEINSCHLIFF_HOME={tmp_path / 'afile.txt'} is a file, not a folder"
    )


def test_a_tab_in_a_recipe_names_its_line_without_pyyaml_noise(tmp_path):
    bad = tmp_path / "tabs.yaml"
    bad.write_text(Path(DEMO).read_text().replace("  method: sft", "\tmethod: sft"))
    code, said = run_cli("validate", str(bad))
    line = 1 + Path(DEMO).read_text().splitlines().index("  method: sft")
    assert code == 2 and f"{bad}: (yaml): line {line}, column 1: found character" in said, said
    assert "indent with spaces, not tabs" in said and "<unicode string>" not in said


def test_a_missing_stage_output_is_said_to_be_missing(tmp_path):
    """A typo in --data said "is not a complete ingest output (no valid .complete marker)"."""
    missing = tmp_path / "dat"
    code, said = run_cli("estimate", DEMO, "--data", str(missing), "--cpu")
    expected = "(expected a complete ingest, generate or mix output)"
    assert code == 2 and f"{missing} does not exist {expected}" in said, said


def test_an_unknown_section_made_by_set_says_so():
    code, said = run_cli("validate", DEMO, "--set", "nosuch.key=1")
    assert code == 2 and "nosuch: unknown key" in said and said.rstrip().endswith("(from --set)")


@pytest.mark.parametrize("args", [("promote", "s", "v0009"), ("retire", "s", "v0009")])
def test_registry_change_of_an_unknown_version_is_an_argument_error(tmp_path, args):
    """`registry show s v0009` said exit 2; promote and retire said exit 1."""
    base = make_base(tmp_path / "base")
    ref = make_train_output(tmp_path / "out", str(base), seed=1.0)
    reg = tmp_path / "reg"
    register_adapter(reg, "s", ref, {"train": {"method": "sft"}}, target=target_for(base))
    code, said = run_cli("registry", *args, "--why", "typo", "--root", str(reg))
    assert code == 2 and "no version 'v0009' of 's' in the registry (it has v0001)" in said, said


@pytest.mark.parametrize(
    "extra, said",
    [
        (["--reject"], "--reject: the recipe's gate has no require_approval rule to answer"),
        (["--by", "alice"], "--by and --comment go with --approve or --reject"),
    ],
)
def test_a_gate_answer_that_would_be_ignored_is_refused(tmp_path, extra, said):
    """`gate --reject` on a recipe without a require_approval rule printed PROMOTE (exit 0)."""
    report = tmp_path / "report.json"
    report.write_text("{}")
    code, out = run_cli("gate", DEMO, "--report", str(report), *extra)
    assert code == 2 and said in out, out
    assert not (tmp_path / "decision.json").exists()


def test_registry_set_without_a_recipe_is_refused(tmp_path):
    """`registry promote s v1 --set register.vllm...` without --recipe dropped the --set and
    promoted without the servers the user meant to update."""
    code, said = run_cli(
        "registry", "promote", "s", "v0001", "--set", "x=1", "--root", str(tmp_path / "reg")
    )
    assert code == 2 and "--set changes a recipe: give --recipe too" in said, said


def test_schema_into_a_missing_folder_is_an_argument_error(tmp_path):
    code, said = run_cli("schema", "--out", str(tmp_path / "nope" / "schema.json"))
    assert code == 2 and "cannot write" in said and "No such file or directory" in said, said


def test_validate_print_of_several_recipes_is_one_yaml_document_each():
    """Concatenated without `---`, stdout was one mapping with every key twice."""
    import yaml

    proc = subprocess.run(
        [sys.executable, "-m", "feinschliff.cli", "validate", DEMO, DEMO, "--print"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    documents = list(yaml.safe_load_all(proc.stdout))
    assert len(documents) == 2 and documents[0] == documents[1]
    assert documents[0]["use_case"] == "support-de-demo"


def test_a_missing_pseudonymization_key_is_an_argument_error(tmp_path, monkeypatch):
    """Configuration, like an unset PREFECT_API_URL (exit 2); it exited 1 as a failure."""
    monkeypatch.delenv("FEINSCHLIFF_PII_KEY", raising=False)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)  # no Secret block to look in
    out = tmp_path / "out"
    code, said = run_cli(
        "ingest", "--source", f"langfuse:{LANGFUSE}", "--pii", "pseudonymize", "--out", str(out)
    )
    assert code == 2 and "FEINSCHLIFF_PII_KEY" in said, said


@pytest.mark.parametrize("under", [False, True])
def test_a_registry_that_is_a_file_is_an_argument_error(tmp_path, under):
    """`register --set register.registry=<a file>` ended in a NotADirectoryError traceback
    (exit 1) and `registry list --root <a file>` said the registry was empty (exit 0)."""
    afile = tmp_path / "notes.txt"
    afile.write_text("hi")
    where = afile / "reg" if under else afile
    base = make_base(tmp_path / "base")
    out = make_train_output(tmp_path / "out", str(base)).path
    sets = [f"base_model.name={base}", f"register.registry={where}"]
    code, said = run_cli(
        "register", DEMO, "--adapter", str(out), *[a for s in sets for a in ("--set", s)]
    )
    assert code == 2 and "not a folder" in said and "Traceback" not in said, said
    code, said = run_cli("registry", "list", "--root", str(where))
    assert code == 2 and "not a folder" in said, said
    assert afile.read_text() == "hi"


def test_retiring_twice_keeps_the_first_reason(tmp_path):
    reg = tmp_path / "reg"
    base = make_base(tmp_path / "base")
    target = target_for(base)
    v1 = register_adapter(
        reg, "s", make_train_output(tmp_path / "o1", str(base)), {}, target=target
    )
    code, said = run_cli("registry", "retire", "s", v1, "--why", "leaked PII", "--root", str(reg))
    assert code == 0 and f"s/{v1}: retired" in said, said
    code, said = run_cli("registry", "retire", "s", v1, "--why", "again", "--root", str(reg))
    assert code == 0 and "already retired" in said and "(leaked PII); unchanged" in said, said


def test_deployments_sync_refuses_two_recipes_with_one_use_case(tmp_path):
    """Both were synced into one `retrain/<use_case>` deployment (printed twice, exit 0): the
    later recipe silently replaced the first's schedule and recipe path. Refused before any
    Prefect call (no server is needed to see it)."""
    text = Path(DEMO).read_text(encoding="utf-8").replace("../data/", f"{ROOT}/data/")
    copy = tmp_path / "copy.yaml"
    copy.write_text(text, encoding="utf-8")
    code, said = run_cli("deployments", "sync", DEMO, str(copy), "--pool", "local")
    assert code == 2 and "use_case 'support-de-demo' is also" in said, said
    assert str(copy) in said


def test_registry_audit_shows_the_reviewers_answer(tmp_path):
    """An approval and a rejection printed alike (`approval approval - -> -`): the verdict
    and the reviewer were only in the JSON."""
    from feinschliff.registry import record_event

    reg = tmp_path / "reg"
    base = make_base(tmp_path / "base")
    out = make_train_output(tmp_path / "o1", str(base))
    register_adapter(reg, "s", out, {}, target=target_for(base))
    record_event(reg, "s", "approval", why="", approved=False, reviewer="alice")
    record_event(
        reg, "s", "approval", why="looks fine", approved=True, reviewer="bob", candidate="ab" * 32
    )
    code, said = run_cli("registry", "audit", "s", "--root", str(reg))
    lines = [line for line in said.splitlines() if " approval " in line]
    assert code == 0 and len(lines) == 2, said
    assert lines[0].endswith("rejected   by alice")
    assert "approved   by bob (candidate abababababab)  looks fine" in lines[1]


def test_stage_outputs_given_in_the_wrong_place_are_named_for_what_they_are(tmp_path):
    """A finished ingest output given as generate's --mixed-out was "not empty and no
    feinschliff stage wrote it" (ingest writes no .inputs stamp); a train output given as
    --data was "not a ingest output" (train also takes generate and mix outputs); an output
    changed after it was finished said only "no valid .complete marker"."""
    from feinschliff.artifacts import mark_complete, refuse_foreign_out
    from feinschliff.cli.app import Failure, _complete_dir

    def finished(stage: str, file: str) -> Path:
        (tmp_path / stage).mkdir()
        (tmp_path / stage / file).write_text("{}\n")
        mark_complete(tmp_path / stage, stage=stage)
        return tmp_path / stage

    ingest = finished("ingest", "sft.jsonl")
    with pytest.raises(OutputInUse, match="holds a finished ingest output; mix would replace it"):
        refuse_foreign_out(ingest, "mix")
    with pytest.raises(OutputInUse, match="holds a finished ingest output: choose a new"):
        refuse_foreign_out(ingest, None)

    trained = finished("train", "metrics.json")
    with pytest.raises(Failure, match="is a train output, not an ingest, generate or mix output"):
        _complete_dir(trained, "ingest")

    (ingest / "mixed").mkdir()  # e.g. a --mixed-out inside it
    (ingest / "mixed" / "sft.jsonl").write_text("{}\n")
    with pytest.raises(Failure, match="no valid .complete marker: changed since it was finished"):
        _complete_dir(ingest, "ingest")
