"""Rows 10, 11, 13: PII recall and canaries, secret canaries, train/eval contamination.

One pipeline run per module (``leak_run``), library level: real ingest (pseudonymize) of a
synthetic Argilla export full of PII, real generate (distilabel child process) with PII in its
seed documents, the mix, the LLM judge on the held-out questions, a report, the gate, and a
registry version promoted with that lineage. Secret canaries sit in the environment the whole
time: the PII key, teacher/judge/vLLM API keys, Langfuse and Argilla keys.

The teacher and the judge are remote APIs in production and cannot be reached from here: a local
OpenAI-compatible stand-in (``standin.OpenAIStandIn``) sits at that boundary and records every
request body and header exactly as it left the process. Nothing else is replaced. Logs are
captured from the root logger at DEBUG (and the generate child's own log file is among the
files scanned). ``test_prefect_flow_leaks_nothing`` also runs the Prefect flow and checks
flow-run parameters, artifacts and persisted results (fewer canaries outside long mode).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import random
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
import yaml

from feinschliff.pii import find_pii, restore_text, scrub_text
from tests.reliability.conftest import trials
from tests.reliability.feedback_factory import SAMPLE, Pair, support_pair, write_export
from tests.reliability.pii_corpus import (
    ENTITY_KINDS,
    iban_is_valid,
    make_corpus,
    tax_id_is_valid,
)
from tests.reliability.standin import QUESTIONS, OpenAIStandIn

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "recipes" / "demo-de.yaml"
RECALL_MIN = {
    "IBAN_CODE": 0.98,
    "DE_TAX_ID": 0.98,
    "PHONE_NUMBER": 0.9,
    "EMAIL_ADDRESS": 0.9,
    "IP_ADDRESS": 0.9,
}
SECRETS = {
    "FEINSCHLIFF_PII_KEY": "piikey-CANARY-7Qx2Lm9Zr4Tn8Wb5vY",  # 32 bytes: AES-256
    "FS_TEACHER_API_KEY": "sk-teacher-CANARY-4f8a2c9e1b7d",
    "FS_JUDGE_API_KEY": "sk-judge-CANARY-9d3b7a1f5e2c",
    "FS_VLLM_API_KEY": "vllm-CANARY-2e6c8a4f0b1d",
    "LANGFUSE_PUBLIC_KEY": "pk-lf-CANARY-5a1c3e7b9d2f",
    "LANGFUSE_SECRET_KEY": "sk-lf-CANARY-8b2d4f6a0c3e",
    "ARGILLA_API_KEY": "argilla.apikey-CANARY-3c5e7a9b1d4f",
}
EVAL_FILE = ROOT / "evals" / "lm_eval_tasks" / "de_wissen_mc.jsonl"


def _eval_questions(min_words: int, max_words: int = 999) -> list[dict]:
    rows = [json.loads(x) for x in EVAL_FILE.read_text(encoding="utf-8").splitlines() if x]
    # words as the contamination rule counts them (whitespace-separated; feinschliff.ngrams):
    # eval texts under 8 words are skipped, 8-12 words match whole, 13+ words by their 13-grams
    return [r for r in rows if min_words <= len(r["question"].split()) <= max_words]


# --------------------------------------------------------------------------- row 10: recall


def test_pii_recall_per_entity_on_a_synthetic_german_corpus(reliability):
    """Every planted value must be covered by a finding of its own entity type."""
    n = trials(300, 3000)
    items = make_corpus(n // len(ENTITY_KINDS), seed=10)
    hits, total, false_pos = Counter(), Counter(), Counter()
    for item in items:
        found = find_pii(item.text)
        total[item.entity] += 1
        hits[item.entity] += any(
            e == item.entity and s <= item.start and end >= item.end for e, s, end in found
        )
        false_pos.update(e for e, s, end in found if end <= item.start or s >= item.end)
    recall = {e: hits[e] / total[e] for e in total}
    label = {"IBAN_CODE": "IBAN", "DE_TAX_ID": "Steuer-ID", "PHONE_NUMBER": "phone"}
    label |= {"EMAIL_ADDRESS": "e-mail", "IP_ADDRESS": "IP"}
    figure = ", ".join(f"{label[e]} {recall[e]:.3f}" for e in ENTITY_KINDS)
    reliability(
        trials=len(items),
        figure=f"recall {figure} (need IBAN, Steuer-ID >= 0.98; phone, e-mail >= 0.9); "
        f"false findings on distractor numbers: {sum(false_pos.values())}",
    )
    # the generator's identifiers are valid by the real rules, so a miss is the recognizer's
    assert all(
        iban_is_valid(i.value) for i in items if i.entity == "IBAN_CODE" and i.value.isupper()
    )
    assert all(tax_id_is_valid(i.value) for i in items if i.entity == "DE_TAX_ID")
    for entity, minimum in RECALL_MIN.items():
        assert recall[entity] >= minimum, (entity, recall[entity])
    assert sum(false_pos.values()) <= 0.01 * len(items), false_pos


def test_tax_id_generator_matches_presidios_checksum():
    """Our Steuer-ID generator and Presidio's validator agree on valid and on broken IDs."""
    from presidio_analyzer.predefined_recognizers import DeTaxIdRecognizer

    from tests.reliability.pii_corpus import make_tax_id

    rng = random.Random(0)
    validator = DeTaxIdRecognizer()
    for _ in range(200):
        tax_id = make_tax_id(rng)
        broken = tax_id[:10] + str((int(tax_id[10]) + 1) % 10)
        assert validator.validate_result(tax_id) and tax_id_is_valid(tax_id)
        assert not validator.validate_result(broken) and not tax_id_is_valid(broken)


def test_pseudonymize_round_trip_is_exact(reliability):
    """Single sentences and five-sentence texts (one value of each kind) decrypt exactly."""
    key = "roundtrip-key-of-exactly-32-byte"
    n = trials(300, 3000)
    items = make_corpus(n // len(ENTITY_KINDS), seed=11)
    texts = [i.text for i in items]
    texts += [" ".join(texts[j : j + 5]) for j in range(0, len(texts), 5)]
    exact = leaked = 0
    for text, item in zip(texts, items + [None] * len(texts), strict=False):
        scrubbed, _ = scrub_text(text, "pseudonymize", key)
        leaked += item is not None and item.value in scrubbed
        exact += restore_text(scrubbed, key) == text
    reliability(
        trials=len(texts),
        figure=f"round trip exact {exact}/{len(texts)} ({exact / len(texts):.1%}, need 100 %); "
        f"planted value left in pseudonymized text: {leaked}",
    )
    assert exact == len(texts)
    assert leaked == 0


# --------------------------------------------------------------------------- the pipeline run


def _pii_feedback(items, rng: random.Random) -> list[Pair]:
    """Records whose prompt holds one PII value and whose good answer repeats another."""
    pairs = []
    for a, b in zip(items[::2], items[1::2], strict=False):
        pair = support_pair(rng)
        pair.prompt = f"{a.text} {pair.prompt}"
        pair.good = f"{pair.good} Wir haben notiert: {b.value}."
        pair.annotators = rng.sample([f"annotator-{i}" for i in range(6)], 2)
        pairs.append(pair)
    return pairs


def _recipe(base: Path, teacher: OpenAIStandIn, judge: OpenAIStandIn, items) -> Path:
    seeds = base / "seeds"
    (seeds / "dokumente").mkdir(parents=True)
    (seeds / "themen.txt").write_text("Zählerstand melden\nAbschlag ändern\n", encoding="utf-8")
    (seeds / "dokumente" / "kundenmails.md").write_text(
        "\n\n".join(i.text for i in items[:20]), encoding="utf-8"
    )
    recipe = yaml.safe_load(DEMO.read_text(encoding="utf-8"))
    recipe["feedback"] = {
        "sources": [{"kind": "argilla", "path": str(base / "export")}],
        "pii": {"mode": "pseudonymize"},
        "heldout_fraction": 0.3,
    }
    recipe["generate"] = {
        "seeds": {"topics": str(seeds / "themen.txt"), "documents": str(seeds / "dokumente")},
        "num_instructions": 4,
        "instructions_per_seed": 2,
        "teacher": {
            "kind": "openai",
            "base_url": teacher.url,
            "model": "teacher-standin",
            "api_key_env": "FS_TEACHER_API_KEY",
        },
        "preference": {"num_generations": 2},
        "concurrency": 2,
        "retries": 0,
    }
    recipe["evaluate"]["judge"] = {
        "base_url": judge.url,
        "model": "judge-standin",
        "api_key_env": "FS_JUDGE_API_KEY",
        "questions": "heldout",
        "max_questions": 8,
        "concurrency": 2,
        "retries": 0,
        "bootstrap_iters": 100,
    }
    recipe["gate"]["rules"] += [{"rule": "contamination"}, {"rule": "poisoning"}]
    path = base / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True, sort_keys=False), "utf-8")
    return path


class _Run:
    """What the module's pipeline run left behind."""

    def __init__(self, base: Path):
        self.base = base
        self.logs = io.StringIO()
        self.out = base / "out"
        self.home = base / "home"


def _pipeline(run: _Run, recipe_path: Path, teacher: OpenAIStandIn, judge: OpenAIStandIn):
    from feinschliff.artifacts import ReportRef, mark_complete, write_json
    from feinschliff.evaluate.extra import judge_questions
    from feinschliff.evaluate.judge import judge_metrics, run_judge
    from feinschliff.evaluate.stage import contamination
    from feinschliff.gate import decide_promotion, write_decision
    from feinschliff.generate import merge_datasets, run_generate
    from feinschliff.ingest import run_ingest
    from feinschliff.pipeline import lineage
    from feinschliff.poisoning import scan_dataset
    from feinschliff.recipe_loader import load_recipe
    from feinschliff.serving.publish import publish_version, register_version
    from tests.unit.adapter_factory import make_base, make_train_output

    recipe = load_recipe(recipe_path)
    ingest = run_ingest(recipe.feedback, run.out / "ingest", eval_tasks=recipe.evaluate.tasks)
    generated = run_generate(recipe, run.out / "generate", feedback=ingest)
    mixed = merge_datasets(ingest, generated, recipe.generate.mix, run.out / "mixed")
    heldout = [
        json.loads(x)
        for x in (mixed.dir / "heldout" / "sft.jsonl").read_text("utf-8").splitlines()
        if x
    ]
    questions = judge_questions(recipe, mixed.dir)
    answers = [r["messages"][-1]["content"] for r in heldout][: len(questions)]
    result = run_judge(
        recipe.evaluate.judge,
        ROOT / "evals" / "judge" / "prompts_de.jsonl",
        questions,
        {"base": answers, "candidate": answers[::-1]},
        "base",
    )
    metrics: dict = {"base": {}, "candidate": {}}
    for role, entries in judge_metrics(result, recipe.evaluate.judge, "base").items():
        metrics[role].update(entries)
    metrics["candidate"]["contamination/overlaps"] = contamination(mixed.dir, recipe.evaluate.tasks)
    metrics["candidate"]["poisoning/suspicious_rows"] = scan_dataset(mixed.dir)
    report_dir = run.out / "evaluate"
    report_dir.mkdir(parents=True)
    report = {"stage": "evaluate", "use_case": recipe.use_case, "metrics": metrics}
    write_json(report_dir / "report.json", report)
    report_ref = ReportRef(path=str(report_dir), sha256=mark_complete(report_dir))
    decision = decide_promotion(report, recipe.gate)
    write_decision(report_dir, decision)
    base_model = make_base(run.base / "tiny-base")
    recipe = load_recipe(recipe_path, [f"base_model.name={base_model}"])
    adapter = make_train_output(run.out / "train", str(base_model))
    # The mixed ref, as the flow passes it: the lineage names the mix and the feedback sources.
    version = register_version(
        recipe, adapter, lineage(recipe, mixed, adapter, report_ref, decision)
    )
    publish_version(recipe, version, why="reliability run", decision=decision.model_dump())
    return {
        "recipe": recipe,
        "ingest": ingest,
        "generated": generated,
        "mixed": mixed,
        "report": report,
        "decision": decision,
        "version": version,
    }


@pytest.fixture(scope="module")
def leak_run(tmp_path_factory):
    from feinschliff.models import feinschliff_home

    run = _Run(tmp_path_factory.mktemp("leaks"))
    run.home.mkdir()
    (run.home / "models").symlink_to(feinschliff_home() / "models", target_is_directory=True)
    items = make_corpus(trials(12, 40), seed=12)
    rng = random.Random(12)
    write_export(run.base / "export", _pii_feedback(items, rng))
    eval_q = _eval_questions(13)[0]["question"]
    short_q = _eval_questions(8, 12)[0]["question"]
    # two generated questions are eval data: one with a 13-gram of its own, one shorter
    teacher = OpenAIStandIn(questions=[eval_q, short_q, *QUESTIONS])
    judge = OpenAIStandIn()
    recipe_path = _recipe(run.base, teacher, judge, items)
    mp = pytest.MonkeyPatch()
    mp.setenv("FEINSCHLIFF_HOME", str(run.home))
    for name, value in SECRETS.items():
        mp.setenv(name, value)
    handler = logging.StreamHandler(run.logs)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        with contextlib.redirect_stdout(run.logs), contextlib.redirect_stderr(run.logs):
            run.result = _pipeline(run, recipe_path, teacher, judge)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        mp.undo()
        teacher.stop()
        judge.stop()
    run.items, run.teacher, run.judge = items, teacher, judge
    run.eval_question, run.short_eval_question = eval_q, short_q
    yield run
    shutil.rmtree(run.base, ignore_errors=True)


def _written_files(run: _Run) -> list[Path]:
    """Every file the run wrote (not its inputs: the export and the seeds hold PII on purpose)."""
    inputs = {run.base / "export", run.base / "seeds"}
    files = []
    for folder, dirs, names in os.walk(run.base, followlinks=False):
        here = Path(folder)
        dirs[:] = [d for d in dirs if here / d not in inputs and not (here / d).is_symlink()]
        files += [here / n for n in names if not (here / n).is_symlink()]
    return files


def _forms(value: str) -> set[str]:
    """The ways a value could be written: as planted, without spaces/separators, JSON-escaped."""
    forms = {value, value.replace(" ", ""), json.dumps(value)[1:-1]}
    digits = re.sub(r"\D", "", value)
    if len(digits) >= 9 and "@" not in value and value.count(".") != 3:
        forms.add(digits)
    return forms


def _leaks(values: list[str], haystacks: dict[str, bytes]) -> list[tuple[str, str]]:
    found = []
    for value in values:
        for form in _forms(value):
            needle = form.encode("utf-8")
            found += [(value, where) for where, data in haystacks.items() if needle in data]
    return found


def _haystacks(run: _Run) -> dict[str, bytes]:
    stacks = {str(p.relative_to(run.base)): p.read_bytes() for p in _written_files(run)}
    stacks["<logs>"] = run.logs.getvalue().encode("utf-8")
    stacks["<teacher requests>"] = run.teacher.sent_text().encode("utf-8")
    stacks["<judge requests>"] = run.judge.sent_text().encode("utf-8")
    return stacks


# --------------------------------------------------------------------------- row 10: canaries


def test_pii_canaries_never_leave_the_pipeline(leak_run, reliability):
    run = leak_run
    stacks = _haystacks(run)
    values = [i.value for i in run.items]
    leaks = _leaks(values, stacks)
    # Not vacuous: the values went through (pseudonymized, redacted) and come back with the key.
    ingest = run.result["ingest"].dir
    rows_text = "".join(
        (ingest / n).read_text("utf-8")
        for n in ("preference.jsonl", "heldout/preference.jsonl", "heldout/sft.jsonl")
        if (ingest / n).exists()
    )
    restored = restore_text(rows_text, SECRETS["FEINSCHLIFF_PII_KEY"])
    came_back = sum(v in restored for v in values)
    teacher_saw_placeholders = "<IBAN_CODE>" in stacks["<teacher requests>"].decode()
    judge_saw_pseudonyms = re.search(r"<[A-Z_]+:[A-Za-z0-9_=+/-]{24,}>", run.judge.sent_text())
    reliability(
        trials=len(values),
        figure=f"{len(values)} PII canaries x {len(stacks)} places (files, logs, teacher and "
        f"judge requests): {len(leaks)} leaks; {came_back} restored with the key",
    )
    assert not leaks, leaks[:10]
    # the detector itself finds them where they are on purpose: in the input export
    assert _leaks(values[:5], {"export": (run.base / "export" / "records.json").read_bytes()})
    assert came_back >= len(values) // 2, "too few canaries reached the output to test anything"
    assert teacher_saw_placeholders and judge_saw_pseudonyms
    assert len(run.judge.bodies) > 0 and len(run.teacher.bodies) > 0


# --------------------------------------------------------------------------- row 11: secrets


def test_secret_canaries_are_never_written(leak_run, reliability):
    run = leak_run
    stacks = _haystacks(run)
    for name in ("<teacher requests>", "<judge requests>"):
        stacks[name] = b"\n".join(
            json.dumps(b, ensure_ascii=False).encode() for b in _bodies(run, name)
        )
    leaks = _leaks(list(SECRETS.values()), stacks)
    # The keys were used where they belong: in the Authorization header, and only there.
    teacher_auth = {h.get("Authorization") for h in run.teacher.headers}
    judge_auth = {h.get("Authorization") for h in run.judge.headers}
    registry = run.home / "registry"
    written = [p for p in _written_files(run) if registry in p.parents]
    reliability(
        trials=len(SECRETS),
        figure=f"{len(SECRETS)} secrets x {len(stacks)} places (incl. {len(written)} registry "
        f"files, manifests, report, request cache, logs, request bodies): {len(leaks)} leaks",
    )
    assert not leaks, leaks[:10]
    assert teacher_auth == {f"Bearer {SECRETS['FS_TEACHER_API_KEY']}"}
    assert judge_auth == {f"Bearer {SECRETS['FS_JUDGE_API_KEY']}"}
    assert (registry / "support-de-demo" / run.result["version"] / "manifest.json").exists()
    assert any("ingest/manifest.json" in k for k in stacks)


def _bodies(run: _Run, which: str) -> list[dict]:
    return run.teacher.bodies if which == "<teacher requests>" else run.judge.bodies


# --------------------------------------------------------------------------- row 13: overlap


def test_no_train_eval_overlap_after_ingest_and_generate(leak_run, demo_ingest, reliability):
    """The gate's overlap metric (13-grams, plus 8-12-word eval texts matched whole) is 0 after
    ingest and generate, and generate's filter dropped both eval questions the teacher returned.
    Ingest, generate and the gate apply one rule (``feinschliff.ngrams``; that they flag the
    same rows is a unit test), so the metric is also ingest's check over the mixed rows."""
    from feinschliff.evaluate.stage import contamination

    result = leak_run.result
    tasks = result["recipe"].evaluate.tasks
    mixed = contamination(result["mixed"].dir, tasks)
    demo = contamination(demo_ingest.dir, tasks)
    generated = json.loads((result["generated"].dir / "manifest.json").read_text())
    sft = (result["generated"].dir / "sft.jsonl").read_text("utf-8")
    dropped = generated["drops"]["sft"].get("eval_contamination", 0)
    reliability(
        trials=int(mixed["samples"] + demo["samples"]),
        figure=f"eval-text overlap: mixed (ingest + generate) {int(mixed['value'])}, demo ingest "
        f"{int(demo['value'])} (need 0); teacher's eval questions (13+ and 8-12 words) dropped "
        f"by generate: {dropped} (need >= 2)",
    )
    assert mixed["value"] == 0 and demo["value"] == 0
    assert mixed["samples"] > 0 and demo["samples"] > 0
    assert dropped >= 2
    assert leak_run.eval_question not in sft and leak_run.short_eval_question not in sft
    cand = result["report"]["metrics"]["candidate"]
    assert cand["contamination/overlaps"]["value"] == 0
    assert cand["poisoning/suspicious_rows"]["value"] == 0


def _planted_export(folder: Path, questions: list[dict]) -> Path:
    shutil.copytree(SAMPLE, folder)
    records = json.loads((folder / "records.json").read_text("utf-8"))
    base = records[0]
    for i, q in enumerate(questions):
        records.append(
            base
            | {
                "id": f"planted-{q['id']}",
                "fields": {
                    "prompt": q["question"],
                    "response_a": f"Gerne helfe ich Ihnen: {q['choices'][q['answer']]}.",
                    "response_b": "Keine Ahnung.",
                },
                "_server_id": f"planted-{i}",
            }
        )
    (folder / "records.json").write_text(json.dumps(records, ensure_ascii=False), "utf-8")
    return folder


def test_planted_eval_items_are_dropped_or_fail_the_gate(tmp_path, reliability):
    """Eval questions planted verbatim into the feedback: ingest's decontamination drops them;
    with it switched off, the gate's contamination rule rejects the run."""
    from feinschliff.evaluate.harness import bundled_task_files
    from feinschliff.evaluate.stage import contamination
    from feinschliff.gate import decide_promotion
    from feinschliff.ingest import run_ingest
    from feinschliff.ngrams import contaminated, index_jsonl
    from feinschliff.poisoning import scan_dataset
    from feinschliff.recipe_loader import load_recipe

    long_q = _eval_questions(13)[: trials(5, 34)]
    short_q = _eval_questions(8, 12)[: trials(5, 45)]
    export = _planted_export(tmp_path / "export", long_q + short_q)
    recipe = load_recipe(DEMO)  # its gate has the contamination rule
    assert any(r.rule == "contamination" for r in recipe.gate.rules)
    tasks = recipe.evaluate.tasks
    outcome = {}
    for enabled in (True, False):
        spec = recipe.feedback.model_copy(
            update={
                "sources": [recipe.feedback.sources[0].model_copy(update={"path": str(export)})],
                "pii": recipe.feedback.pii.model_copy(update={"mode": "off"}),
                "decontamination": recipe.feedback.decontamination.model_copy(
                    update={"enabled": enabled}
                ),
            }
        )
        data = run_ingest(spec, tmp_path / f"ingest-{enabled}", eval_tasks=tasks)
        entry = contamination(data.dir, tasks)
        report = {
            "metrics": {
                "base": {"de_wissen_mc/acc_norm": {"value": 0.3, "samples": 60}},
                "candidate": {
                    "de_wissen_mc/acc_norm": {"value": 0.3, "samples": 60},
                    "contamination/overlaps": entry,
                    "poisoning/suspicious_rows": scan_dataset(data.dir),
                },
            }
        }
        rows = []
        for name in ("sft.jsonl", "preference.jsonl"):
            rows += [json.loads(x) for x in (data.dir / name).read_text("utf-8").splitlines()]
        index = index_jsonl([f for t, f in bundled_task_files().items() if t in tasks])
        caught = {rows[i]["provenance"]["source_id"] for i in contaminated(rows, index)}
        in_training = {r["provenance"]["source_id"] for r in rows}
        manifest = json.loads((data.dir / "manifest.json").read_text())
        outcome[enabled] = {
            "decision": decide_promotion(report, recipe.gate),
            "overlaps": int(entry["value"]),
            "dropped": sum(manifest["decontamination"]["dropped_by_eval_set"].values()),
            # planted items in training rows (the held-out split may take some), and those the
            # gate's metric finds
            "long": {f"planted-{q['id']}" for q in long_q} & in_training,
            "short": {f"planted-{q['id']}" for q in short_q} & in_training,
            "caught": caught,
        }
    on, off = outcome[True], outcome[False]
    reliability(
        trials=len(long_q) + len(short_q),
        figure=f"decontamination on: {on['dropped']} planted rows dropped, overlap "
        f"{on['overlaps']} -> gate {'passes' if on['decision'].promote else 'REJECTS'}; off: "
        f"gate metric finds {len(off['long'] & off['caught'])}/{len(off['long'])} >=13-word and "
        f"{len(off['short'] & off['caught'])}/{len(off['short'])} 8-12-word planted questions "
        f"-> {'rejected' if not off['decision'].promote else 'PROMOTED'}",
    )
    assert on["overlaps"] == 0 and on["decision"].promote, on["decision"].failed
    assert not (on["long"] | on["short"]), "a planted eval item survived decontamination"
    assert on["dropped"] >= len(long_q) + len(short_q)
    assert off["long"] and off["long"] <= off["caught"]
    assert off["short"] and off["short"] <= off["caught"]
    assert off["overlaps"] >= len(off["long"]) + len(off["short"])
    assert [r.rule for r in off["decision"].failed] == ["contamination"]


# --------------------------------------------------------------------------- Prefect (long mode)

FLOW_FAST = [
    "train.hyperparameters.max_steps=1",
    "train.hyperparameters.save_steps=1",
    "train.hyperparameters.max_length=96",
    "evaluate.tasks=[de_wissen_mc]",
    "evaluate.limit=4",
    "evaluate.heldout_max_new_tokens=8",
    "evaluate.judge.max_new_tokens=8",
    "evaluate.judge.max_questions=2",
    "gate.rules.1.threshold=1000",  # rejects: nothing is registered by the flow here
]


@pytest.mark.integration
def test_prefect_flow_leaks_nothing(
    prefect_harness, demo_model, tmp_path, monkeypatch, reliability
):
    """The retrain flow with the same PII feedback, teacher and judge stand-ins and secrets:
    flow-run parameters, artifacts, logs, the Prefect database, persisted results and the
    workdir hold no PII canary and no secret."""
    from prefect.client.orchestration import get_client
    from prefect.settings import (
        PREFECT_API_DATABASE_CONNECTION_URL,
        PREFECT_HOME,
        PREFECT_RESULTS_LOCAL_STORAGE_PATH,
    )

    from feinschliff.models import feinschliff_home
    from flows.retrain import retrain

    home = tmp_path / "home"
    home.mkdir()
    (home / "models").symlink_to(feinschliff_home() / "models", target_is_directory=True)
    monkeypatch.setenv("FEINSCHLIFF_HOME", str(home))
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    items = make_corpus(trials(4, 12), seed=13)  # a full flow run either way: CI gets fewer
    write_export(tmp_path / "export", _pii_feedback(items, random.Random(13)))
    teacher, judge = OpenAIStandIn(), OpenAIStandIn()
    try:
        recipe = _recipe(tmp_path, teacher, judge, items)
        result = retrain(recipe_path=str(recipe), overrides=FLOW_FAST, workdir=str(tmp_path / "w"))
    finally:
        teacher.stop()
        judge.stop()
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs()
        artifacts = client.read_artifacts()
        logs = client.read_logs()
    stacks: dict[str, bytes] = {
        "<flow-run parameters>": json.dumps([r.parameters for r in runs], default=str).encode(),
        "<artifacts>": json.dumps([a.data for a in artifacts], default=str).encode(),
        "<flow logs>": "\n".join(x.message for x in logs).encode(),
        "<teacher requests>": b"\n".join(json.dumps(b).encode() for b in teacher.bodies),
        "<judge requests>": b"\n".join(json.dumps(b).encode() for b in judge.bodies),
    }
    db = Path(PREFECT_API_DATABASE_CONNECTION_URL.value().split("///", 1)[1])
    roots = [
        tmp_path,
        Path(PREFECT_RESULTS_LOCAL_STORAGE_PATH.value()),
        PREFECT_HOME.value(),
        db.parent,
    ]
    for root in roots:
        for folder, dirs, names in os.walk(root, followlinks=False):
            here = Path(folder)
            dirs[:] = [d for d in dirs if d not in ("export", "seeds", "models")]
            for n in names:
                if not (here / n).is_symlink():
                    stacks[str(here / n)] = (here / n).read_bytes()
    values = [i.value for i in items] + list(SECRETS.values())
    leaks = _leaks(values, stacks)
    reliability(
        trials=len(values),
        figure=f"flow run: {len(items)} PII canaries + {len(SECRETS)} secrets x {len(stacks)} "
        f"places (parameters, {len(artifacts)} artifacts, {len(logs)} log lines, Prefect DB, "
        f"results, workdir): {len(leaks)} leaks",
    )
    assert result["promoted"] is False and artifacts and logs
    assert teacher.bodies and judge.bodies
    assert not leaks, leaks[:10]
