"""Metric names and directions: what the harness reports for lm-eval tasks, and what recipe
validation accepts as a gate metric.

- Each report entry carries lm-eval's ``higher_is_better`` for its metric (None when unknown).
- ``usecase_heldout`` reports ``acc_norm`` only: summed log-likelihood (``acc``) prefers the
  shorter answer, and the chosen answers (corrections) are the longer ones.
- A gate rule on a bundled task (or ``usecase_heldout``) must name a metric that task reports,
  filter included (``de_kurzantwort/exact_match[strip]``); upstream tasks stay prefix-checked.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import yaml

from feinschliff import recipe
from feinschliff.evaluate.harness import flatten_results, render_tasks, render_usecase_task
from feinschliff.paths import bundled_tasks_dir
from feinschliff.recipe_loader import RecipeError, load_recipe

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "recipes" / "demo-de.yaml"


# --------------------------------------------------------------------------- higher_is_better


def test_flatten_results_carries_lm_evals_direction():
    results = {
        "de_wissen_mc": {"alias": "de_wissen_mc", "acc,none": 0.6, "acc_stderr,none": 0.04},
        "de_kurzantwort": {"exact_match,strip": 0.5, "exact_match_stderr,strip": "N/A"},
        "wikitext": {"word_perplexity,none": 25.0, "bits_per_byte,none": 0.9},
        "grp": {"acc,none": 0.5},
        "other": {"acc,none": 0.4},
    }
    directions = {
        "de_wissen_mc": {"acc": True, "acc_norm": True},
        "de_kurzantwort": {"exact_match": True},  # keyed by metric, without the filter
        "wikitext": {"word_perplexity": False, "bits_per_byte": False},
        "grp": {"acc": None},  # lm-eval: subtasks of a group disagree
    }
    flat = flatten_results(results, {"de_wissen_mc": {"effective": 126}}, directions)
    assert flat["de_wissen_mc/acc"] == {
        "value": 0.6,
        "stderr": 0.04,
        "samples": 126,
        "higher_is_better": True,
    }
    assert flat["de_kurzantwort/exact_match[strip]"]["higher_is_better"] is True
    assert flat["wikitext/word_perplexity"]["higher_is_better"] is False
    assert flat["wikitext/bits_per_byte"]["higher_is_better"] is False
    assert flat["grp/acc"]["higher_is_better"] is None
    assert flat["other/acc"]["higher_is_better"] is None  # lm-eval said nothing
    # without lm-eval's dict (older callers): the key is there, the direction unknown
    assert flatten_results(results, {})["wikitext/word_perplexity"]["higher_is_better"] is None


# --------------------------------------------------------------------------- real lm-eval


def _pairs(data: Path) -> list[tuple[str, str]]:
    """Held-out preference pairs as ingest writes them; chosen ~4x longer than rejected."""
    pairs = [
        (
            "Sehr geehrte Kundin, Ihre Abschlagszahlung wurde angepasst, weil der Verbrauch im "
            "letzten Jahr deutlich gestiegen ist. Sie können den Abschlag jederzeit online "
            "ändern oder uns anrufen.",
            "Bitte rufen Sie an.",
        ),
        (
            "Ihr Zählerstand wurde korrigiert; die neue Rechnung erhalten Sie in den nächsten "
            "Tagen per Post. Die zu viel gezahlten Beträge überweisen wir zurück.",
            "Das ist korrekt so.",
        ),
        (
            "Der Umzug ist gemeldet. Ihr Vertrag läuft an der neuen Adresse weiter, Sie müssen "
            "nur noch den Zählerstand am Auszugstag mitteilen.",
            "Kein Problem.",
        ),
    ]
    (data / "heldout").mkdir(parents=True)
    rows = [
        {
            "prompt": [{"role": "user", "content": f"Frage {i}?"}],
            "chosen": [{"role": "assistant", "content": c}],
            "rejected": [{"role": "assistant", "content": r}],
        }
        for i, (c, r) in enumerate(pairs)
    ]
    (data / "heldout" / "preference.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )
    return pairs


@pytest.fixture(scope="module")
def lm_eval_run(tmp_path_factory):
    """The bundled tasks and usecase_heldout through real lm-eval (the harness's own task
    rendering), with a stub model: per byte it finds the chosen answers a little likelier
    (-0.8 per byte) than the rejected ones (-1.0), as a model that learnt the preference does;
    generations are fixed."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")  # local data only: nothing may be fetched
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        return _run_lm_eval(tmp_path_factory.mktemp("ingest"))


def _run_lm_eval(data: Path):
    from lm_eval import simple_evaluate
    from lm_eval.api.model import LM
    from lm_eval.tasks import TaskManager

    chosen = {c for c, _ in _pairs(data)}

    class PrefersChosen(LM):
        def loglikelihood(self, requests, disable_tqdm=False):
            out = []
            for req in requests:
                cont = req.arguments[1]
                per_byte = -0.8 if cont.strip() in chosen else -1.0
                out.append((per_byte * len(cont.encode("utf-8")), False))
            return out

        def generate_until(self, requests, disable_tqdm=False):
            return ["Berlin" for _ in requests]

        def loglikelihood_rolling(self, requests, disable_tqdm=False):
            return [-1.0 for _ in requests]

    with tempfile.TemporaryDirectory() as tmp:
        bundled = render_tasks(bundled_tasks_dir(), Path(tmp))
        tasks = [*bundled, render_usecase_task(data, Path(tmp))]
        out = simple_evaluate(
            model=PrefersChosen(),
            tasks=tasks,
            limit=4,
            task_manager=TaskManager(include_path=tmp, include_defaults=False),
            bootstrap_iters=0,
        )
    assert out is not None
    return tasks, out


def test_real_lm_eval_output_gives_each_metric_its_direction(lm_eval_run):
    _, out = lm_eval_run
    flat = flatten_results(out["results"], out["n-samples"], out["higher_is_better"])
    assert flat and all(v["higher_is_better"] is True for v in flat.values()), flat


def test_the_use_case_task_scores_length_normalised_only(lm_eval_run):
    """Summed log-likelihood picks the 4x shorter rejected answer even for a model that
    prefers the chosen one per byte (acc would be 0.0 here, as it was for every model in the
    demo run); acc_norm sees the preference."""
    _, out = lm_eval_run
    flat = flatten_results(out["results"], out["n-samples"], out["higher_is_better"])
    use_case = {k: v for k, v in flat.items() if k.startswith("usecase_heldout/")}
    assert set(use_case) == {"usecase_heldout/acc_norm"}
    assert use_case["usecase_heldout/acc_norm"]["value"] == 1.0
    assert use_case["usecase_heldout/acc_norm"]["samples"] == 3
    assert out["versions"]["usecase_heldout"] == 2.0  # acc dropped: a new task version


def test_validation_knows_exactly_the_names_the_harness_reports(lm_eval_run):
    tasks, out = lm_eval_run
    flat = flatten_results(out["results"], out["n-samples"], out["higher_is_better"])
    known = recipe.known_metric_names(set(tasks))
    assert set(known) == set(tasks)
    assert sorted(n for names in known.values() for n in names) == sorted(flat)


def test_the_use_case_yaml_lists_only_acc_norm(tmp_path):
    _pairs(tmp_path / "data")
    render_usecase_task(tmp_path / "data", tmp_path)
    cfg = yaml.safe_load((tmp_path / "usecase_heldout.yaml").read_text(encoding="utf-8"))
    assert (
        [m["metric"] for m in cfg["metric_list"]]
        == ["acc_norm"]
        == list(recipe.USECASE_METRIC_LIST)
    )
    assert cfg["metadata"]["version"] == 2.0


# --------------------------------------------------------------------------- recipe validation


def test_task_metric_names_follow_filters():
    assert recipe.task_metric_names({"task": "t", "metric_list": [{"metric": "acc"}]}) == ["t/acc"]
    cfg = {
        "task": "t",
        "metric_list": [{"metric": "exact_match"}, {"metric": "f1"}],
        "filter_list": [{"name": "strip"}, {"name": "none"}],
    }
    assert recipe.task_metric_names(cfg) == [
        "t/exact_match[strip]",
        "t/f1[strip]",
        "t/exact_match",
        "t/f1",
    ]
    assert recipe.task_metric_names({"task": "t"}) is None  # lm-eval's defaults: not derived here


def _refused(overrides: list[str]) -> str:
    with pytest.raises(RecipeError) as err:
        load_recipe(DEMO, ["register.registry=/tmp/reg", *overrides])
    assert len(err.value.lines) == 1, err.value.lines
    return err.value.lines[0]


@pytest.mark.parametrize(
    ("tasks", "metric", "suggestion"),
    [
        # the report key carries the filter: de_kurzantwort/exact_match[strip]
        (
            "[de_wissen_mc, de_kurzantwort]",
            "de_kurzantwort/exact_match",
            "de_kurzantwort/exact_match[strip]",
        ),
        ("[de_wissen_mc]", "de_wissen_mc/accuracy", "de_wissen_mc/acc"),
        ("[de_wissen_mc]", "de_wissen_mc/acc_nrom", "de_wissen_mc/acc_norm"),
        ("[de_wissen_mc]", "de_wissen_mc", "de_wissen_mc/acc"),
        ("[de_wissen_mc, usecase_heldout]", "usecase_heldout/acc", "usecase_heldout/acc_norm"),
    ],
)
def test_a_gate_metric_its_task_does_not_report_is_refused(tasks, metric, suggestion):
    line = _refused([f"evaluate.tasks={tasks}", f"gate.rules.1.metric={metric}"])
    assert f"demo-de.yaml: gate.rules.1.metric: '{metric}' is not a metric of task " in line
    assert f"did you mean '{suggestion}'?" in line
    assert "(from --set)" in line


@pytest.mark.parametrize(
    ("tasks", "metric"),
    [
        ("[de_wissen_mc, de_kurzantwort]", "de_kurzantwort/exact_match[strip]"),
        ("[de_wissen_mc]", "de_wissen_mc/acc"),
        ("[de_wissen_mc]", "de_wissen_mc/acc_norm"),
        ("[de_wissen_mc, usecase_heldout]", "usecase_heldout/acc_norm"),
        # upstream tasks (and groups, whose subtasks report under their own names): the task
        # prefix is all validation can know
        ("[de_wissen_mc, arc_de]", "arc_de/acc_norm"),
        ("[de_wissen_mc, m_mmlu_de]", "m_mmlu_de_sub/whatever"),
    ],
)
def test_a_gate_metric_its_task_reports_validates(tasks, metric):
    r = load_recipe(
        DEMO,
        ["register.registry=/tmp/reg", f"evaluate.tasks={tasks}", f"gate.rules.1.metric={metric}"],
    )
    assert r.gate.rules[1].metric == metric


def test_shipped_recipes_name_only_reported_metrics():
    """Rules on tasks with a known metric list (bundled tasks) must name a listed metric; the
    count guards against a glob or a lookup that finds nothing and checks nothing."""
    paths = sorted((ROOT / "recipes").glob("*.yaml"))
    assert paths
    checked = 0
    for path in paths:
        r = load_recipe(path)
        known = recipe.known_metric_names(set(r.evaluate.tasks))
        for rule in r.gate.rules:
            metric = getattr(rule, "metric", None)
            task = (metric or "").split("/", 1)[0]
            if task in known:
                assert metric in known[task], (path.name, metric)
                checked += 1
    assert checked > 0


def test_a_bundled_task_without_metric_list_stays_prefix_checked(tmp_path, monkeypatch):
    tasks = tmp_path / "root" / "evals" / "lm_eval_tasks"
    tasks.mkdir(parents=True)
    for name in ("de_wissen_mc", "de_kurzantwort"):  # the demo recipe's tasks stay valid
        (tasks / f"{name}.yaml").write_text(
            (bundled_tasks_dir() / f"{name}.yaml").read_text(encoding="utf-8"), encoding="utf-8"
        )
    (tasks / "own.yaml").write_text("task: own\noutput_type: multiple_choice\n")
    monkeypatch.setenv("FEINSCHLIFF_PROJECT_ROOT", str(tmp_path / "root"))
    assert "own" not in recipe.known_metric_names({"own"})
    r = load_recipe(
        DEMO,
        [
            "register.registry=/tmp/reg",
            "evaluate.tasks=[own]",
            "gate.rules.0.metric=own/acc",
            "gate.rules.1.metric=own/anything",
        ],
    )
    assert r.gate.rules[1].metric == "own/anything"


def test_a_contamination_rule_with_nothing_to_check_is_refused():
    """Upstream tasks only, no judge: the metric would be n/a and reject every trained run."""
    upstream = ["evaluate.tasks=[arc_de]"]
    upstream += [f"gate.rules.{i}.metric=arc_de/acc_norm" for i in (0, 1)]
    line = _refused(upstream)
    assert "gate.rules.2.metric: 'contamination/overlaps' has no eval data to check" in line
    # a bundled task, or a judge reading the bundled questions, gives it something to check
    assert load_recipe(
        DEMO, ["register.registry=/tmp/reg", "evaluate.tasks=[arc_de, de_wissen_mc]"]
    )
    judged = ["evaluate.judge={base_url: 'http://127.0.0.1:8000/v1', model: judge}"]
    assert load_recipe(DEMO, ["register.registry=/tmp/reg", *upstream, *judged])


def test_a_group_yaml_among_the_bundled_tasks_does_not_break_validation(tmp_path, monkeypatch):
    """An lm-eval group lists its tasks (``task: [a, b]``); validation crashed with a
    TypeError (unhashable list) on such a file."""
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for f in bundled_tasks_dir().iterdir():
        (tasks / f.name).write_bytes(f.read_bytes())
    (tasks / "de_gruppe.yaml").write_text("group: de_gruppe\ntask: [de_wissen_mc]\n")
    monkeypatch.setattr(recipe, "bundled_tasks_dir", lambda: tasks)
    assert "de_wissen_mc" in recipe.known_metric_names({"de_wissen_mc", "de_gruppe"})


@pytest.mark.parametrize(
    ("tasks", "metric", "said"),
    [
        # with an upstream task any prefix could be a group's subtask, but not these
        (
            "[de_wissen_mc, arc_de]",
            "de_kurzantwort/exact_match[strip]",
            "task de_kurzantwort is not in evaluate.tasks",
        ),
        ("[de_wissen_mc, arc_de]", "usecase_heldout/acc_norm", "is not in evaluate.tasks"),
        ("[de_wissen_mc, arc_de]", "de_wisen_mc/acc", "did you mean 'de_wissen_mc'?"),
        ("[de_wissen_mc, arc_de]", "de_wissen_mc.acc", "is not a metric any producer reports"),
        # the fixed names of the other producers, with or without upstream tasks
        ("[de_wissen_mc]", "poisoning/rows", "did you mean 'poisoning/suspicious_rows'?"),
        ("[de_wissen_mc, arc_de]", "contamination/overlap", "'contamination/overlaps'?"),
    ],
)
def test_a_gate_metric_no_producer_reports_is_refused_also_beside_upstream_tasks(
    tasks, metric, said
):
    """These passed validation and then rejected every run after training ("metric missing from
    the candidate's report")."""
    line = _refused([f"evaluate.tasks={tasks}", f"gate.rules.1.metric={metric}"])
    assert f"gate.rules.1.metric: '{metric}'" in line and said in line, line


def test_the_fixed_heldout_and_judge_names_are_checked():
    line = _refused(["evaluate.heldout=true", "gate.rules.1.metric=heldout/preference_acc"])
    assert "did you mean 'heldout/preference_accuracy'?" in line, line
    r = load_recipe(
        DEMO,
        ["register.registry=/tmp/reg", "evaluate.heldout=true"]
        + ["gate.rules.1.metric=heldout/correction_chrf"],
    )
    assert r.gate.rules[1].metric == "heldout/correction_chrf"
