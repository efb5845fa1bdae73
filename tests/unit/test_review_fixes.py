"""Small review fixes: the Argilla error's Langfuse hint, generate's eval-set names, JSONL seed
documents split at newlines only, and an --out folder holding only a `.gitkeep`."""

from __future__ import annotations

import json

import pytest

from feinschliff.artifacts import COMPLETE
from feinschliff.ingest import run_ingest
from feinschliff.specs.evaluate import USECASE_TASK
from tests.unit.test_ingest import ARGILLA_FLAT, ROOT, spec

FLAT_JSON = ROOT / "data" / "fixtures" / "argilla" / "flat" / "feedback-de-flat.json"


def test_a_truncated_argilla_flat_json_is_not_called_a_langfuse_export(tmp_path):
    """An unreadable file is read with Langfuse observations (its quarantine fails the stage),
    but says nothing about which tool wrote it: the Argilla error must not claim Langfuse."""
    from feinschliff.ingest.detect import UnknownExport, open_export
    from feinschliff.ingest.records import ReadLog
    from feinschliff.ingest.scratch import Scratch
    from feinschliff.specs.feedback import DerivationRules

    text = FLAT_JSON.read_text(encoding="utf-8")
    broken = tmp_path / "feedback-de-flat.json"
    broken.write_text(text[:200], encoding="utf-8")  # cut inside its first record
    with Scratch() as scratch, pytest.raises(UnknownExport) as err:
        open_export("argilla", broken, ReadLog(), DerivationRules(), scratch)
    assert "not an Argilla export" in str(err.value)
    assert "Langfuse" not in str(err.value)


def test_generate_does_not_list_ingests_own_heldout_split_as_an_eval_set():
    """`usecase_heldout` is ingest's held-out split, no eval set: generate neither lists it nor
    says decontamination cannot check it (as ingest and pipeline.ingest_fingerprint)."""
    from feinschliff.generate.stage import _eval_fingerprint, eval_set_names
    from feinschliff.recipe_loader import load_recipe

    recipe = load_recipe(ROOT / "recipes" / "demo-de.yaml")
    assert USECASE_TASK in recipe.evaluate.tasks  # the case this is about
    names = eval_set_names(recipe)
    assert USECASE_TASK not in names
    assert all(t in names for t in recipe.evaluate.tasks if t != USECASE_TASK)  # the others stay
    assert USECASE_TASK not in _eval_fingerprint(names)["unchecked"]


def test_a_jsonl_seed_document_with_a_raw_line_separator_in_a_string_is_read(tmp_path):
    """JSON writers with ensure_ascii=False leave U+2028 raw inside strings; `splitlines` cut
    such a record in two. Line numbers in errors still count `\\n`-lines."""
    from feinschliff.generate.seeds import SeedError, _document_seeds

    doc = tmp_path / "docs.jsonl"
    rows = [{"text": "Erster Satz.\u2028Zweiter Satz."}, {"text": "Noch einer."}]
    doc.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    assert _document_seeds(doc, 2000, lambda s: s) == [
        "Erster Satz.\u2028Zweiter Satz.",
        "Noch einer.",
    ]

    doc.write_text(doc.read_text("utf-8") + "\n{broken\n", "utf-8")  # line 4, after a blank one
    with pytest.raises(SeedError, match=r"docs\.jsonl:4: invalid JSON"):
        _document_seeds(doc, 2000, lambda s: s)


def test_an_out_folder_holding_only_a_gitkeep_is_used_and_the_gitkeep_stays(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".gitkeep").write_text("")
    run_ingest(spec(("argilla", ARGILLA_FLAT)), out)
    assert (out / COMPLETE).exists()
    assert (out / ".gitkeep").exists()


def test_warm_start_tells_two_local_folders_with_the_same_last_name_apart(tmp_path):
    """The production adapter's base /m/llama-8b/hf is not the recipe's /m/llama-8b-instruct/hf
    (the registry's preflight already told them apart; warm start matched the last name)."""

    from feinschliff.recipe_loader import load_recipe
    from feinschliff.train.warm_start import WarmStartError, check_same_base

    trained_on, mine = tmp_path / "llama-8b" / "hf", tmp_path / "llama-8b-instruct" / "hf"
    trained_on.mkdir(parents=True)
    mine.mkdir(parents=True)
    demo = ROOT / "recipes" / "demo-de.yaml"
    recipe = load_recipe(demo, [f"base_model.name={mine}"])
    with pytest.raises(WarmStartError, match="trained on base model"):
        check_same_base(recipe, {"name": str(trained_on)}, "v0001")
    check_same_base(recipe, {"name": str(mine)}, "v0001")  # the same folder passes
