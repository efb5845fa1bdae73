"""Derivation rules, annotator aggregation, contribution cap, dedup and decontamination."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from feinschliff.ingest import run_ingest
from feinschliff.ingest.decontam import Decontaminator, find_eval_sets
from feinschliff.ingest.dedup import Deduplicator, MinHasher
from feinschliff.ingest.derive import derive_record, pair_thumbs
from feinschliff.ingest.records import FeedbackRecord, Message, Vote
from feinschliff.ingest.scratch import Scratch
from feinschliff.ngrams import word_hashes
from feinschliff.recipe import FeedbackSpec
from feinschliff.specs.feedback import DedupSpec, DerivationRules

ROOT = Path(__file__).resolve().parents[2]


def record(
    *votes: Vote, answers=None, prompt="Wie melde ich meinen Zählerstand?"
) -> FeedbackRecord:
    return FeedbackRecord(
        source="argilla",
        source_id="r1",
        prompt=[Message(role="user", content=prompt)],
        answers=answers or {"a": "Im Kundenportal.", "b": "Gar nicht."},
        votes=list(votes),
    )


def rating(value: float, who: str) -> Vote:
    return Vote(kind="rating", annotator=who, answer="a", value=value)


def label(value: str | None, who: str) -> Vote:
    return Vote(kind="preference", annotator=who, value=value)


def thumb(up: bool, who: str) -> Vote:
    return Vote(kind="thumbs", annotator=who, answer="a", value=up)


@pytest.mark.parametrize(
    ("aggregation", "ratings", "accepted"),
    [
        ("mean", [5, 5, 2], True),  # mean 4.0
        ("mean", [5, 2, 2], False),
        ("majority", [5, 5, 2], True),
        ("majority", [5, 2], False),  # a draw is not a majority
        ("unanimous", [5, 5, 4], True),
        ("unanimous", [5, 5, 3], False),
    ],
)
def test_rating_aggregation(aggregation, ratings, accepted):
    rules = DerivationRules(aggregation=aggregation, min_rating=4)
    rec = record(*(rating(v, f"u{i}") for i, v in enumerate(ratings)))
    derived = derive_record(rec, rules)
    assert bool(derived.sft) is accepted
    assert derived.disagreements["rating"] == (1 if len({v >= 4 for v in ratings}) > 1 else 0)


@pytest.mark.parametrize(
    ("aggregation", "labels", "chosen"),
    [
        ("majority", ["a", "a", "b"], "a"),
        ("majority", ["a", "b"], None),
        ("unanimous", ["a", "a", "b"], None),
        ("unanimous", ["b", "b"], "b"),
        ("mean", ["a", None, "b", "b"], "b"),  # a `tie` label does not vote
    ],
)
def test_preference_aggregation(aggregation, labels, chosen):
    rec = record(*(label(v, f"u{i}") for i, v in enumerate(labels)))
    derived = derive_record(rec, DerivationRules(aggregation=aggregation))
    got = derived.preference[0]["chosen"][0]["content"] if derived.preference else None
    assert got == (rec.answers[chosen] if chosen else None)


def test_correction_is_sft_target_and_beats_the_original():
    fix = Vote(
        kind="correction", annotator="u1", answer="a", value="Im Kundenportal unter Zählerstand."
    )
    derived = derive_record(record(fix, rating(1, "u2")), DerivationRules())
    assert derived.sft[0]["messages"][-1]["content"] == fix.value
    assert derived.sft[0]["provenance"]["rule"] == "correction"
    pair = derived.preference[0]
    assert (
        pair["chosen"][0]["content"] == fix.value
        and pair["rejected"][0]["content"] == "Im Kundenportal."
    )
    off = derive_record(
        record(fix), DerivationRules(corrections_as_sft=False, corrections_as_preference=False)
    )
    assert not off.sft and not off.preference and off.drops["no_training_signal"] == 1


def test_thumbs_give_kto_rows_and_pairs_across_records():
    up = derive_record(record(thumb(True, "end-user-1")), DerivationRules())
    down = derive_record(
        record(thumb(False, "end-user-2"), answers={"a": "Keine Ahnung."}), DerivationRules()
    )
    assert up.kto[0]["label"] is True and down.kto[0]["label"] is False
    assert set(up.kto[0]) == {"prompt", "completion", "label", "provenance"}
    assert up.sft and not down.sft
    (pair,), _, _ = pair_thumbs([up.thumbs[0][1]], [down.thumbs[0][1]])
    assert (
        pair["chosen"][0]["content"] == "Im Kundenportal."
        and pair["rejected"][0]["content"] == "Keine Ahnung."
    )
    assert pair["provenance"]["annotators"] == ["end-user-1", "end-user-2"]
    mixed = derive_record(record(thumb(True, "x"), thumb(False, "y")), DerivationRules())
    assert (
        not mixed.kto
        and mixed.disagreements["thumbs"] == 1
        and mixed.drops["thumbs_undecided"] == 1
    )
    no_kto = derive_record(record(thumb(True, "x")), DerivationRules(kto=False))
    assert not no_kto.kto and no_kto.thumbs


def _write_langfuse(path: Path, n: int, user: str) -> None:
    obs, scores = [], []
    for i in range(n):
        obs.append(
            {
                "id": f"o{i}",
                "traceId": f"t{i}",
                "type": "GENERATION",
                "startTime": f"2026-01-01T00:00:{i:02d}Z",
                "input": json.dumps(
                    [{"role": "user", "content": f"Frage Nummer {i} zum Tarif {i * 7}?"}]
                ),
                "output": json.dumps(
                    {"role": "assistant", "content": f"Antwort {i}: Tarif {i * 7} kostet {i} Euro."}
                ),
            }
        )
        scores.append(
            {
                "id": f"s{i}",
                "name": "user-feedback",
                "dataType": "BOOLEAN",
                "value": True,
                "authorUserId": user,
                "subject": {"kind": "observation", "id": f"o{i}"},
            }
        )
    path.mkdir()
    (path / "obs.json").write_text(json.dumps({"data": obs, "meta": {}}))
    (path / "scores.json").write_text(json.dumps({"data": scores, "meta": {}}))


def test_a_thumbs_verdict_without_partner_is_a_counted_drop(tmp_path):
    """With KTO off (an SFT or DPO recipe) a thumbs verdict only makes a row when an opposite
    verdict on the same prompt pairs with it. A thumbs-down on its own is then lost: counted.
    A thumbs-up that made an SFT row (accepted answer) is not a drop."""

    def gen(i: int, question: str, answer: str) -> dict:
        return {
            "id": f"o{i}",
            "traceId": f"t{i}",
            "type": "GENERATION",
            "startTime": f"2026-01-01T00:00:0{i}Z",
            "input": json.dumps([{"role": "user", "content": question}]),
            "output": json.dumps({"role": "assistant", "content": answer}),
        }

    obs = [
        gen(1, "Wann wird mein Zähler abgelesen?", "Im Herbst, wir schreiben Ihnen vorher."),
        gen(2, "Kann ich meinen Abschlag ändern?", "Nein, das geht nicht."),
    ]
    scores = [
        {
            "id": f"s{i}",
            "name": "user-feedback",
            "dataType": "BOOLEAN",
            "value": up,
            "subject": {"kind": "observation", "id": f"o{i}"},
        }
        for i, up in ((1, True), (2, False))
    ]
    (tmp_path / "lf").mkdir()
    (tmp_path / "lf" / "obs.json").write_text(json.dumps({"data": obs, "meta": {}}))
    (tmp_path / "lf" / "scores.json").write_text(json.dumps({"data": scores, "meta": {}}))
    spec = FeedbackSpec.model_validate(
        {
            "sources": [{"kind": "langfuse", "path": str(tmp_path / "lf")}],
            "pii": {"mode": "off"},
            "heldout_fraction": 0,
            "rules": {"kto": False},
        }
    )
    run_ingest(spec, tmp_path / "out")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["counts"]["sft.jsonl"] == 1 and manifest["counts"]["preference.jsonl"] == 0
    assert manifest["drops"] == {"thumbs_without_partner": 1}


def test_annotator_contribution_cap(tmp_path):
    _write_langfuse(tmp_path / "lf", 10, "power-user")
    spec = FeedbackSpec.model_validate(
        {
            "sources": [{"kind": "langfuse", "path": str(tmp_path / "lf")}],
            "pii": {"mode": "off"},
            "heldout_fraction": 0,
            "rules": {"max_rows_per_annotator": 3},
        }
    )
    run_ingest(spec, tmp_path / "out")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["counts"]["sft.jsonl"] + manifest["counts"]["kto.jsonl"] == 3
    assert manifest["drops"]["annotator_cap"] == 17


def test_minhash_signatures_equal_datasketch():
    from datasketch import MinHash

    hasher = MinHasher(num_perm=32, shingle_words=3)
    texts = ["Gerne helfe ich Ihnen: Ihr Abschlag steigt zum 1. Dezember.", "kurz", "a b c d e f g"]
    for text, sig in zip(texts, hasher.signatures(texts), strict=True):
        m = MinHash(num_perm=32, seed=1, scheme="affine32", hashfunc=lambda x: x)
        m.update_batch([int(h) for h in hasher.shingles(word_hashes(text))])
        assert np.array_equal(m.hashvalues, sig)


@pytest.mark.parametrize(
    ("threshold", "num_perm", "weights"),
    [
        (0.85, 64, (0.1, 0.9)),
        (0.5, 128, (0.5, 0.5)),
        (0.7, 16, (0.9, 0.1)),
        (0.95, 256, (0.1, 0.9)),
    ],
)
def test_minhash_parameters_equal_datasketch(threshold, num_perm, weights):
    """Permutations, fmix pre-mix and LSH band split are re-derived without importing
    datasketch (it pulls in scipy); they must equal datasketch's own."""
    from datasketch import MinHash, MinHashLSH
    from datasketch.minhash import _fmix

    from feinschliff.ingest.dedup import affine32_permutations, fmix32, lsh_params

    a, b = affine32_permutations(num_perm)
    theirs = MinHash(num_perm=num_perm, seed=1, scheme="affine32").permutations
    assert np.array_equal(theirs[0], a) and np.array_equal(theirs[1], b)
    hv = np.random.default_rng(0).integers(0, 2**32, 500, dtype=np.uint64).astype(np.uint32)
    assert np.array_equal(fmix32(hv), _fmix(hv, 32))
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=weights)
    assert lsh_params(threshold, num_perm, weights) == (lsh.b, lsh.r)


def test_batched_near_dups_equal_one_row_at_a_time():
    """The batch path (index candidates vectorised, in-batch candidates row by row) gives the
    same answers as feeding the same rows one per call."""
    rng = np.random.default_rng(3)
    words = [f"w{i}" for i in range(40)]
    base = [" ".join(rng.choice(words, 30)) for _ in range(12)]
    texts = []
    for _ in range(150):
        t = base[int(rng.integers(0, len(base)))].split()
        t[int(rng.integers(0, len(t)))] = str(rng.choice(words))  # a small edit
        texts.append(("sft" if rng.random() < 0.7 else "kto", " ".join(t)))
    with Scratch() as s1, Scratch() as s2:
        batched, single = Deduplicator(DedupSpec(), s1), Deduplicator(DedupSpec(), s2)
        got = batched.near_dups(texts[:60]) + batched.near_dups(texts[60:])
        want = [single.near_dups([t])[0] for t in texts]
    assert got == want and 0 < sum(got) < len(got)


def test_record_fast_path_equals_validation():
    """``FeedbackRecord.build`` / ``message`` / ``vote`` skip validation only when it would
    pass unchanged; anything else raises the constructor's error."""
    from pydantic import ValidationError

    from feinschliff.ingest.records import message, vote

    fields = {
        "source": "langfuse",
        "source_id": "o1",
        "prompt": [message("user", "Hallo?")],
        "answers": {"output": "Moin."},
        "votes": [vote("thumbs", annotator="u1", answer="output", value=True, timestamp="t")],
    }
    assert FeedbackRecord.build(**fields) == FeedbackRecord(**fields)
    assert message("user", "x") == Message(role="user", content="x")
    for bad in (
        {"prompt": []},
        {"answers": {}},
        {"source_id": 7},
        {"prompt": [{"role": "user", "content": 1}]},
        {"timestamp": 5},
    ):
        with pytest.raises(ValidationError):
            FeedbackRecord.build(**{**fields, **bad})
    with pytest.raises(ValidationError):
        message("robot", "x")
    with pytest.raises(ValidationError):
        message("user", None)
    with pytest.raises(ValidationError):
        vote("thumbs", timestamp=12)


def test_near_duplicates_found_exact_duplicates_normalised():
    base = (
        "Gerne helfe ich Ihnen: Ihren Zählerstand melden Sie im Kundenportal unter Zählerstand "
        "melden oder in der App, Sie können dort auch ein Foto des Zählers hochladen und die "
        "Ablesekarte portofrei zurückschicken, wir bestätigen den Eingang per E-Mail."
    )
    near = base.replace("per E-Mail", "per Mail")
    other = "Die Grundgebühr im Tarif Basis beträgt zwölf Euro im Monat, der Arbeitspreis steht im Vertrag."
    with Scratch() as scratch:
        dedup = Deduplicator(DedupSpec(), scratch)
        assert dedup.near_dups([("sft", base), ("sft", near), ("sft", other), ("kto", near)]) == [
            False,
            True,
            False,
            False,
        ]  # spaces (output kinds) are separate
        key = b"k1".ljust(16, b"-")
        assert not dedup.is_exact_dup("sft", key) and dedup.is_exact_dup("sft", key)
        assert not dedup.is_exact_dup("preference", key)


def test_duplicates_across_sources_are_removed(tmp_path):
    ui = ROOT / "data" / "fixtures" / "langfuse" / "traces"
    api = ROOT / "data" / "samples" / "langfuse"
    spec = FeedbackSpec.model_validate(
        {
            "sources": [
                {"kind": "langfuse", "path": str(api)},
                {"kind": "langfuse", "path": str(ui)},
            ],
            "pii": {"mode": "off"},
            "heldout_fraction": 0,
        }
    )
    run_ingest(spec, tmp_path / "out")
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert (m["counts"]["sft.jsonl"], m["counts"]["kto.jsonl"]) == (22, 27)
    assert m["drops"]["duplicate_sft_row"] == 22 and m["drops"]["duplicate_kto_row"] == 27


def test_decontamination_drops_rows_that_quote_an_eval_question(tmp_path):
    eval_rows = [
        json.loads(line)
        for line in (ROOT / "evals/lm_eval_tasks/de_wissen_mc.jsonl").read_text().splitlines()
    ]
    question = next(r["question"] for r in eval_rows if len(r["question"].split()) >= 8)
    found = find_eval_sets(["de_wissen_mc", "upstream_task_without_data"])
    assert found.unchecked == ["upstream_task_without_data"]
    decon = Decontaminator(found, ngram=13)
    leaked = {
        "messages": [
            {"role": "user", "content": f"Kurze Frage: {question} Danke!"},
            {"role": "assistant", "content": "Gerne."},
        ]
    }
    clean = {
        "messages": [
            {"role": "user", "content": "Wie melde ich meinen Zählerstand?"},
            {"role": "assistant", "content": "Im Kundenportal."},
        ]
    }
    assert decon.contaminated_by(leaked) == "de_wissen_mc"
    assert decon.contaminated_by(clean) is None
    long_text = "eins zwei drei vier fünf sechs sieben acht neun zehn elf zwölf dreizehn vierzehn"
    own = tmp_path / "own.jsonl"
    own.write_text(json.dumps({"passage": long_text}) + "\n")
    decon2 = Decontaminator(find_eval_sets([str(own)]), ngram=13)
    hit = {
        "messages": [{"role": "user", "content": "x " + " ".join(long_text.split()[1:14]) + " y"}]
    }
    miss = {"messages": [{"role": "user", "content": " ".join(long_text.split()[1:13])}]}
    assert decon2.contaminated_by(hit) == str(own) and decon2.contaminated_by(miss) is None


def test_output_does_not_depend_on_the_number_of_workers(tmp_path):
    _write_langfuse(tmp_path / "lf", 700, "u1")  # several batches: the pool starts
    digests = []
    for workers in (1, 2):
        spec = FeedbackSpec.model_validate(
            {
                "sources": [{"kind": "langfuse", "path": str(tmp_path / "lf")}],
                "pii": {"mode": "off"},
                "heldout_fraction": 0.2,
                "workers": workers,
            }
        )
        digests.append(run_ingest(spec, tmp_path / f"out{workers}").sha256)
    assert digests[0] == digests[1]


def test_bloom_filter_never_forgets_a_key():
    """The filter in front of the key tables may only skip lookups of keys never added."""
    from feinschliff.ingest.bloom import Bloom

    rng = np.random.default_rng(5)
    added = rng.integers(-(2**63), 2**63 - 1, 50_000, dtype=np.int64)
    other = rng.integers(-(2**63), 2**63 - 1, 50_000, dtype=np.int64)
    bloom = Bloom(20)  # small: 1 Mbit
    assert not bloom.might_contain(added).any()
    bloom.add(added[:25_000])
    bloom.add(added[25_000:])
    assert bloom.might_contain(added).all()
    assert bloom.might_contain(other).mean() < 0.05
    assert bloom.might_contain(added.reshape(100, 500)).shape == (100, 500)


def test_a_missing_eval_set_file_fails_the_ingest_and_paths_are_recipe_relative(tmp_path, caplog):
    """A JSONL eval set that is not found used to be listed as "unchecked" with no warning:
    decontamination against it was silently off. Paths were also taken from the cwd, not the
    recipe's folder."""
    from feinschliff.ingest.decontam import MissingEvalSet
    from feinschliff.recipe_loader import load_recipe

    recipe_dir = tmp_path / "recipes"
    recipe_dir.mkdir()
    (recipe_dir / "private.jsonl").write_text(json.dumps({"question": "eine frage"}) + "\n")
    demo = yaml.safe_load((ROOT / "recipes" / "demo-de.yaml").read_text())
    demo["feedback"]["sources"] = [{"kind": "langfuse", "path": str(ROOT / "data/samples")}]
    demo["feedback"]["decontamination"] = {"eval_sets": ["private.jsonl", "de_wisen_mc"]}
    path = recipe_dir / "r.yaml"
    path.write_text(yaml.safe_dump(demo))
    sets = load_recipe(path).feedback.decontamination.eval_sets
    assert sets == [str(recipe_dir / "private.jsonl"), "de_wisen_mc"]
    with caplog.at_level("WARNING", logger="feinschliff.ingest.decontam"):
        found = find_eval_sets(sets)
    assert list(found.files) == [sets[0]] and found.unchecked == ["de_wisen_mc"]
    assert "cannot check de_wisen_mc" in caplog.text and "de_wissen_mc" in caplog.text
    with pytest.raises(MissingEvalSet, match="gone.jsonl does not exist"):
        find_eval_sets([str(tmp_path / "gone.jsonl")])
    spec = load_recipe(path, [f"feedback.decontamination.eval_sets=[{tmp_path}/gone.jsonl]"])
    from feinschliff.ingest.stage import IngestError

    with pytest.raises(IngestError, match="gone.jsonl does not exist"):
        run_ingest(spec.feedback, tmp_path / "out")
