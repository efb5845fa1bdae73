"""Review findings on evaluate, gate and register: an --out that would wipe a train output, a
report about another adapter, group sample counts, the inference device, answer scoring, and
infinite metric values."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from feinschliff.artifacts import AdapterRef, OutputInUse, mark_complete, prepare_out
from feinschliff.gate import decide_promotion
from feinschliff.recipe import GateSpec
from feinschliff.recipe_loader import load_recipe
from tests.cli_helpers import run_cli
from tests.unit.adapter_factory import make_base, make_train_output
from tests.unit.tiny_llama import make_tiny_llama

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "recipes" / "demo-de.yaml")
CHATML = (
    "{% for m in messages %}<|im_start|> {{ m.role }} {{ m.content }} <|im_end|> {% endfor %}"
    "{% if add_generation_prompt %}<|im_start|> assistant {% endif %}"
)
WORDS = ["[UNK]", "<|im_start|>", "<|im_end|>", "user", "assistant", "Frage", "Antwort", "ja"]


class _Stop(Exception):
    """Raised where a test has seen what it needs."""


def _train_output(path: Path) -> AdapterRef:
    """A train output as the train stage leaves it: stamped, adapter/, marked stage train."""
    prepare_out(path, "train-key")
    (path / "adapter").mkdir()
    (path / "adapter" / "adapter_config.json").write_text("{}")
    (path / "adapter" / "adapter_model.safetensors").write_bytes(b"weights")
    return AdapterRef(path=str(path), sha256=mark_complete(path, stage="train", key="train-key"))


def _no_model(monkeypatch):
    """run_evaluate up to its first model run, which raises _Stop."""
    import feinschliff.evaluate.stage as stage

    def stop(*a, **kw):
        raise _Stop

    monkeypatch.setattr(stage, "resolve_model", lambda name: "/nonexistent/model")
    monkeypatch.setattr(stage, "run_tasks", stop)


# ------------------------------------------------------------ 1: --out over a train output


def test_evaluate_out_on_another_train_output_refuses_and_keeps_the_adapter(tmp_path, monkeypatch):
    from feinschliff.evaluate import run_evaluate

    _no_model(monkeypatch)
    candidate = _train_output(tmp_path / "train-a")
    other = _train_output(tmp_path / "train-b")
    with pytest.raises((OutputInUse, _Stop)) as raised:
        run_evaluate(load_recipe(DEMO), candidate, other.dir)
    assert (other.dir / "adapter" / "adapter_model.safetensors").read_bytes() == b"weights"
    assert raised.match("finished train output.*nothing was deleted")


def test_prepare_out_refuses_another_stages_finished_output_but_reruns_its_own(tmp_path):
    out = tmp_path / "eval"
    prepare_out(out, "k1", "evaluate")
    (out / "report.json").write_text("{}")
    mark_complete(out, stage="evaluate", key="k1")
    prepare_out(out, "k2", "evaluate")  # the same stage with new inputs replaces its output
    assert not (out / "report.json").exists()
    (out / "report.json").write_text("{}")
    mark_complete(out, stage="evaluate", key="k2")
    with pytest.raises(OutputInUse, match="finished evaluate output"):
        prepare_out(out, "k3", "train")
    assert (out / "report.json").exists()


@pytest.mark.parametrize("where", ["adapter", "inside_adapter", "above_data", "data"])
def test_evaluate_out_overlapping_its_inputs_is_refused(tmp_path, monkeypatch, where):
    from feinschliff.artifacts import DatasetRef
    from feinschliff.evaluate import run_evaluate

    _no_model(monkeypatch)
    adapter = _train_output(tmp_path / "runs" / "train")
    data_dir = tmp_path / "runs" / "ingest"
    data_dir.mkdir()
    (data_dir / "sft.jsonl").write_text("")
    data = DatasetRef(path=str(data_dir), sha256=mark_complete(data_dir, stage="ingest"))
    out = {
        "adapter": adapter.dir,
        "inside_adapter": adapter.dir / "eval",
        "above_data": tmp_path / "runs",
        "data": data_dir,
    }[where]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(OutputInUse, match="overlaps the (adapter|data) folder"):
        run_evaluate(load_recipe(DEMO), adapter, out, data=data)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


# ------------------------------------------------------------ 3: register checks the report


def _register(tmp_path: Path, adapter: Path, report: Path) -> tuple[int, str]:
    base = tmp_path / "base"
    return run_cli(
        "register",
        DEMO,
        *("--adapter", str(adapter), "--report", str(report), "--promote"),
        *("--set", f"base_model.name={base}", "--set", f"register.registry={tmp_path / 'reg'}"),
        *("--set", "gate.rules=[{rule: min, metric: de_wissen_mc/acc_norm, threshold: 0.1}]"),
    )


def _report(path: Path, **candidate) -> Path:
    metrics = {
        "candidate": {"de_wissen_mc/acc_norm": {"value": 0.9, "stderr": 0.01, "samples": 100}}
    }
    path.write_text(json.dumps({"models": {"candidate": candidate}, "metrics": metrics}))
    return path


def test_register_refuses_a_report_about_another_adapter(tmp_path):
    base = make_base(tmp_path / "base")
    mine = make_train_output(tmp_path / "mine", str(base))
    other = make_train_output(tmp_path / "other", str(base), seed=2.0)
    assert mine.sha256 != other.sha256
    report = _report(tmp_path / "r.json", adapter=other.path, adapter_sha256=other.sha256)
    code, said = _register(tmp_path, mine.dir, report)
    assert code == 2 and "evaluated another adapter" in said and other.path in said
    assert not (tmp_path / "reg").exists()  # nothing registered, nothing promoted

    code, said = _register(tmp_path, mine.dir, _report(tmp_path / "old.json", adapter="x"))
    assert code == 2 and "re-run `evaluate`" in said

    good = _report(tmp_path / "good.json", adapter=mine.path, adapter_sha256=mine.sha256)
    code, said = _register(tmp_path, mine.dir, good)
    assert code == 0, said


def test_evaluate_records_the_candidates_hash_in_the_report(tmp_path, monkeypatch):
    import feinschliff.evaluate.stage as stage
    from feinschliff.evaluate import run_evaluate

    monkeypatch.setattr(stage, "resolve_model", lambda name: "/nonexistent/model")
    monkeypatch.setattr(
        stage, "run_tasks", lambda *a, **kw: {"t/acc": {"value": 0.5, "stderr": None}}
    )
    candidate = _train_output(tmp_path / "train")
    ref = run_evaluate(load_recipe(DEMO), candidate, tmp_path / "eval")
    models = json.loads((ref.dir / "report.json").read_text())["models"]
    assert models["candidate"]["adapter_sha256"] == candidate.sha256
    assert models["base"]["adapter_sha256"] is None


# ------------------------------------------------------------ 4: samples of a group metric


def test_a_group_metric_gets_its_sample_count():
    from feinschliff.evaluate.harness import flatten_results

    results = {
        "grp": {"alias": "grp", "acc,none": 0.6, "acc_stderr,none": 0.05, "sample_len": 40}
        | {"sample_count": {"acc,none": 40}},
        "leaf": {"alias": "leaf", "acc,none": 0.6, "acc_stderr,none": 0.05, "sample_len": 20},
        "bare": {"alias": "bare", "acc,none": 0.6, "sample_len": 7},
    }
    flat = flatten_results(results, {"leaf": {"original": 20, "effective": 20}})
    assert flat["grp/acc"]["samples"] == 40
    assert flat["leaf/acc"]["samples"] == 20
    assert flat["bare/acc"]["samples"] == 7  # no sample_count: the group's total
    rules = GateSpec.model_validate(
        {"rules": [{"rule": "min_samples", "metric": "grp/acc", "threshold": 30}]}
    )
    assert decide_promotion({"metrics": {"candidate": flat}}, rules).promote


# ------------------------------------------------------------ 5: --adapter that is no adapter


def test_evaluate_refuses_an_adapter_that_is_no_train_output_before_running(tmp_path, monkeypatch):
    import feinschliff.evaluate as evaluate

    def never(*a, **kw):
        raise AssertionError("evaluate ran on a folder that is no train output")

    monkeypatch.setattr(evaluate, "run_evaluate", never)
    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))
    ingest = tmp_path / "ingest"
    ingest.mkdir()
    (ingest / "sft.jsonl").write_text("")
    mark_complete(ingest, stage="ingest")
    args = ("evaluate", DEMO, "--out", str(tmp_path / "eval"))
    code, said = run_cli(*args, "--adapter", str(ingest))
    assert code == 2 and "is an ingest output, not a train output" in said

    bare = tmp_path / "no-adapter"
    bare.mkdir()
    (bare / "metrics.json").write_text("{}")
    mark_complete(bare, stage="train")
    code, said = run_cli(*args, "--adapter", str(bare))
    assert code == 2 and "no adapter/adapter_config.json" in said


# ------------------------------------------------------------ 2 and 6: inference


def _tiny_model(path: Path) -> Path:
    """A word-level tokenizer with a ChatML-like template and a one-layer Llama (kilobytes)."""
    return make_tiny_llama(path, WORDS, chat_template=CHATML)


PROMPT = [{"role": "user", "content": "Frage Frage"}]


def test_inference_runs_on_lm_evals_device_with_its_inputs_there(tmp_path, monkeypatch):
    """On a GPU machine lm-eval used CUDA while our own inference ran the model on the CPU;
    here the device choice says "meta" (no GPU needed) and every forward must see its inputs on
    the model's device."""
    import feinschliff.evaluate.harness as harness
    from feinschliff.evaluate.inference import answer_logprob, generate_answers, load_model

    monkeypatch.setattr(harness, "device", lambda: "meta")
    model, tok = load_model(str(_tiny_model(tmp_path / "m")), "float32")
    assert model.device.type == "meta"
    seen = []

    def record(module, args, kwargs):
        seen.extend(t.device.type for t in [*args, *kwargs.values()] if hasattr(t, "device"))
        raise _Stop

    model.register_forward_pre_hook(record, with_kwargs=True)
    with pytest.raises(_Stop):
        answer_logprob(model, tok, PROMPT, "Antwort")
    # generation itself cannot run on meta tensors: what generate_answers hands to it
    model.generate = lambda *args, **kwargs: record(model, args, kwargs)
    with pytest.raises(_Stop):
        generate_answers(model, tok, [PROMPT], max_new_tokens=2, batch_size=1)
    assert seen and set(seen) == {"meta"}


def test_answer_logprob_scores_the_answers_tokens_only(tmp_path):
    """The template's closing token (<|im_end|>) is not part of the answer: counting it pulled
    the per-token mean of short answers towards its (near-certain) probability."""
    import torch

    from feinschliff.evaluate.inference import answer_logprob, load_model

    model, tok = load_model(str(_tiny_model(tmp_path / "m")), "float32")
    for answer in ("ja", "Antwort ja Antwort"):
        full = tok.apply_chat_template(
            [*PROMPT, {"role": "assistant", "content": answer}], tokenize=False
        )
        ids = tok(full, return_tensors="pt", add_special_tokens=False)["input_ids"]
        words = full.split()
        first = len(words) - 1 - len(answer.split())  # the answer's words, then <|im_end|>
        assert words[first:-1] == answer.split()
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
        want = sum(float(logp[i - 1, ids[0, i]]) for i in range(first, first + len(answer.split())))
        assert math.isclose(
            answer_logprob(model, tok, PROMPT, answer), want / len(answer.split()), rel_tol=1e-5
        )


# ------------------------------------------------------------ 7 and 8: gate


def _gate(*rules):
    return GateSpec.model_validate({"rules": list(rules)})


@pytest.mark.parametrize("value", [math.inf, -math.inf])
def test_an_infinite_value_fails_its_rule_without_a_crash(value):
    entry = {"value": value, "stderr": None, "samples": 100}
    report = {"metrics": {"candidate": {"t/acc": entry, "contamination/overlaps": entry}}}
    g = _gate(
        {"rule": "min", "metric": "t/acc", "threshold": 0.5},
        {"rule": "max", "metric": "t/acc", "threshold": 0.5},
        {"rule": "contamination"},
    )
    d = decide_promotion(report, g)
    assert not d.promote and len(d.failed) == 3
    assert all("missing" in r.detail for r in d.failed)


def test_no_regression_names_the_base_it_fell_back_to():
    report = {"metrics": {"base": {}, "candidate": {"t/acc": {"value": 0.5, "samples": 9}}}}
    g = _gate({"rule": "no_regression", "metric": "t/acc", "baseline": "production"})
    (r,) = decide_promotion(report, g).results
    assert not r.passed and "no base value to compare against" in r.detail
    assert "production" not in r.detail.split("(")[0]


def test_prepare_out_refuses_another_stages_unfinished_run_and_keeps_its_checkpoints(tmp_path):
    """A killed training has its .inputs stamp but no .complete: evaluate/generate/mix --out
    pointed at it deleted the checkpoints its rerun resumes from."""
    out = tmp_path / "train-out"
    prepare_out(out, "train-key", "train")
    (out / "checkpoints" / "checkpoint-200").mkdir(parents=True)
    with pytest.raises(OutputInUse, match="unfinished train run"):
        prepare_out(out, "evaluate-key", "evaluate")
    assert (out / "checkpoints" / "checkpoint-200").is_dir()
    prepare_out(out, "train-key-2", "train")  # its own stage with new inputs still replaces it
    assert not (out / "checkpoints").exists()


def test_answer_logprob_finds_the_answer_where_the_template_puts_it(tmp_path):
    """A template that renders earlier turns differently once an assistant turn follows (here
    its first word) shares no prefix with the prompt's rendering: the answer's text searched
    from there was found in the user's turn, which repeats it."""
    import torch

    from feinschliff.evaluate.inference import answer_logprob, load_model

    template = "{% if messages[-1].role == 'assistant' %}Antwort {% else %}Frage {% endif %}"
    path = make_tiny_llama(tmp_path / "m", WORDS, chat_template=template + CHATML)
    model, tok = load_model(str(path), "float32")
    prompt = [{"role": "user", "content": "ja"}]
    full = tok.apply_chat_template(
        [*prompt, {"role": "assistant", "content": "ja"}], tokenize=False
    )
    words = full.split()
    assert words[0] == "Antwort" and words.count("ja") == 2
    at = len(words) - 2  # the answer: the last "ja", before <|im_end|>
    ids = tok(full, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    want = float(logp[at - 1, ids[0, at]])
    assert math.isclose(answer_logprob(model, tok, prompt, "ja"), want, rel_tol=1e-5)


def test_heldout_and_judge_generation_use_the_recipes_batch_size(tmp_path, monkeypatch):
    """Held-out correction answers were generated four at a time whatever
    ``evaluate.batch_size`` said (a GPU user's 32 left the card mostly idle); seven corrections
    at batch size 3 are three generate calls."""
    import feinschliff.evaluate.extra as extra
    from feinschliff.evaluate.inference import load_model

    recipe = load_recipe(DEMO)
    recipe = recipe.model_copy(
        update={"evaluate": recipe.evaluate.model_copy(update={"batch_size": 3})}
    )
    data = tmp_path / "data"
    (data / "heldout").mkdir(parents=True)
    row = {
        "messages": [*PROMPT, {"role": "assistant", "content": "Antwort ja"}],
        "provenance": {"rule": "correction"},
    }
    (data / "heldout" / "sft.jsonl").write_text("".join(json.dumps(row) + "\n" for _ in range(7)))
    (data / "heldout" / "preference.jsonl").write_text("")
    calls: list[int] = []

    def counted_load(*args, **kwargs):
        model, tok = load_model(*args, **kwargs)
        real = model.generate
        model.generate = lambda **kw: calls.append(len(kw["input_ids"])) or real(**kw)
        return model, tok

    monkeypatch.setattr(extra, "load_model", counted_load)
    metrics = extra.judge_and_heldout(
        recipe, str(_tiny_model(tmp_path / "m")), {"base": None}, data, tmp_path / "out"
    )
    assert metrics["base"]["heldout/correction_chrf"]["samples"] == 7
    assert calls == [3, 3, 1]
