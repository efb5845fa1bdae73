"""`feinschliff validate` names the files a recipe reads that do not exist here (a mistyped
export path showed up only when a scheduled run reached the ingest): warnings by default, since
a recipe may be meant for a worker with other volumes, problems (exit 2) with --strict."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from feinschliff.cli import app
from feinschliff.recipe_inputs import missing_inputs
from feinschliff.recipe_loader import load_recipe

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _recipe(tmp_path: Path, **changes) -> Path:
    data = yaml.safe_load((ROOT / "recipes" / "demo-de.yaml").read_text())
    for src in data["feedback"]["sources"]:
        src["path"] = str((ROOT / "recipes" / src["path"]).resolve())
    data["feedback"]["sources"].append({"kind": "langfuse", "path": "exports/langfsue"})
    data |= changes
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def test_a_missing_export_is_a_warning_and_ok(tmp_path):
    recipe = _recipe(tmp_path)
    res = runner.invoke(app, ["validate", str(recipe)])
    assert res.exit_code == 0, res.output
    want = f"{recipe}: warning: feedback.sources.2.path: {tmp_path}/exports/langfsue does not"
    assert want in res.stderr and f"{recipe}: ok (" in res.stdout
    assert "sources.0" not in res.stderr and "sources.1" not in res.stderr  # those exist


def test_strict_makes_it_a_problem(tmp_path):
    recipe = _recipe(tmp_path)
    res = runner.invoke(app, ["validate", "--strict", str(recipe)])
    assert res.exit_code == 2
    assert f"{recipe}: feedback.sources.2.path: {tmp_path}/exports/langfsue" in res.stderr
    assert "ok (" not in res.output
    (tmp_path / "exports" / "langfsue").mkdir(parents=True)
    res = runner.invoke(app, ["validate", "--strict", str(recipe)])
    assert res.exit_code == 0 and not res.stderr, res.output


def test_seed_files_and_local_model_folders_are_checked(tmp_path):
    (tmp_path / "themen.txt").write_text("Tarifwechsel\n", encoding="utf-8")
    local = {"kind": "transformers", "model": "./lehrer"}
    generate = {
        "seeds": {"topics": "themen.txt", "documents": "docs"},
        "teacher": local,
        "preference": {"judge": {**local, "model": "/nowhere/judge"}},
    }
    recipe = _recipe(
        tmp_path,
        base_model={"name": "./basis", "dtype": "float32"},
        generate=generate,
    )
    assert dict(missing_inputs(load_recipe(recipe))) == {
        "feedback.sources.2.path": str(tmp_path / "exports" / "langfsue"),
        "base_model.name": str(tmp_path / "basis"),
        "generate.seeds.documents": str(tmp_path / "docs"),  # topics exists
        "generate.teacher.model": str(tmp_path / "lehrer"),
        "generate.preference.judge.model": "/nowhere/judge",
    }
    # an alias or a hub id is fetched, not looked for; a live pull reads no file
    hub = _recipe(tmp_path, base_model={"name": "HuggingFaceTB/SmolLM2-135M-Instruct"})
    assert [where for where, _ in missing_inputs(load_recipe(hub))] == ["feedback.sources.2.path"]


def test_strict_checks_a_model_folder_against_the_recipe(tmp_path):
    """`validate --strict` said ok to target modules the model does not have (and lm_head),
    which `train` refuses only after provisioning: a local model folder is read now. Without
    --strict nothing is loaded (a recipe may be meant for another machine)."""
    from tests.unit.test_eval_review_fixes import CHATML
    from tests.unit.test_train_review_fixes import WORDS
    from tests.unit.tiny_llama import make_tiny_llama

    make_tiny_llama(tmp_path / "model", WORDS, chat_template=CHATML)
    data = yaml.safe_load((ROOT / "recipes" / "demo-de.yaml").read_text())
    for src in data["feedback"]["sources"]:
        src["path"] = str((ROOT / "recipes" / src["path"]).resolve())
    data["base_model"]["name"] = "./model"
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    fine = runner.invoke(app, ["validate", "--strict", str(path)])
    assert fine.exit_code == 0, fine.output
    for targets, said in (
        ("[q_proj,v_projj]", "'v_projj' (did you mean 'v_proj'?)"),
        ("[q_proj,lm_head]", "is the output layer (lm_head)"),
    ):
        sets = ["--set", f"train.lora.target_modules={targets}"]
        res = runner.invoke(app, ["validate", "--strict", str(path), *sets])
        assert res.exit_code == 2, res.output
        assert f"{path}: train.lora.target_modules: " in res.stderr and said in res.stderr
        assert runner.invoke(app, ["validate", str(path), *sets]).exit_code == 0


def test_strict_makes_the_fit_check_run_makes(tmp_path):
    """With train.gpu, `run` refuses a training whose memory estimate does not fit that GPU
    before Prefect starts; `validate --strict` said ok to it. Target names the model has that
    the estimate does not know (embed_tokens) pass both."""
    from tests.unit.test_eval_review_fixes import CHATML
    from tests.unit.test_train_review_fixes import WORDS
    from tests.unit.tiny_llama import make_tiny_llama

    make_tiny_llama(tmp_path / "model", WORDS, chat_template=CHATML)
    data = yaml.safe_load((ROOT / "recipes" / "demo-de.yaml").read_text())
    for src in data["feedback"]["sources"]:
        src["path"] = str((ROOT / "recipes" / src["path"]).resolve())
    data["base_model"]["name"] = "./model"
    data["train"]["gpu"] = "rtx-4090"
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    emb = ["--set", "train.lora.target_modules=[q_proj,v_proj,embed_tokens]"]
    for sets in ([], emb):
        fine = runner.invoke(app, ["validate", "--strict", str(path), *sets])
        assert fine.exit_code == 0, fine.output
    huge = ["--set", "train.hyperparameters.batch_size=200000"]
    res = runner.invoke(app, ["validate", "--strict", str(path), *huge])
    assert res.exit_code == 2, res.output
    assert f"{path}: train.gpu: training does not fit train.gpu=rtx-4090" in res.stderr
    assert "a micro-batch of" in res.stderr
    assert runner.invoke(app, ["validate", str(path), *huge]).exit_code == 0
