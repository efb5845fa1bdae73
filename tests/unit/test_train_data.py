"""Training rows per method, KTO unpairing, eval split, replay mixing, chat templates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from feinschliff.train import data
from feinschliff.train.templates import (
    CHATML,
    SMOLLM2_TRAINING,
    TemplateError,
    apply_chat_template_choice,
    has_generation_markers,
)

U = [{"role": "user", "content": "Frage?"}]


def _pref(i: int) -> dict:
    return {
        "prompt": [{"role": "user", "content": f"Frage {i}?"}],
        "chosen": [{"role": "assistant", "content": f"Gut {i}."}],
        "rejected": [{"role": "assistant", "content": f"Schlecht {i}."}],
        "source": "argilla",
    }


def _write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_kto_rows_are_derived_from_preferences_when_ingest_wrote_none(tmp_path):
    _write(tmp_path / "preference.jsonl", [_pref(1), _pref(2)])
    rows = data.method_rows("kto", tmp_path)
    assert [r["label"] for r in rows] == [True, False, True, False]
    assert rows[1]["completion"][0]["content"] == "Schlecht 1."
    assert set(rows[0]) == {"prompt", "completion", "label"}


def test_ingests_kto_file_wins_over_derivation(tmp_path):
    _write(tmp_path / "preference.jsonl", [_pref(1)])
    kto = [
        {"prompt": U, "completion": [{"role": "assistant", "content": "a"}], "label": True},
        {"prompt": U, "completion": [{"role": "assistant", "content": "b"}], "label": False},
        {"prompt": U, "completion": [{"role": "assistant", "content": "c"}], "label": False},
    ]
    _write(tmp_path / "kto.jsonl", kto)
    assert data.method_rows("kto", tmp_path) == kto


def test_kto_needs_both_labels(tmp_path):
    _write(tmp_path / "kto.jsonl", [{"prompt": U, "completion": U, "label": True}])
    with pytest.raises(data.DataError, match="only one kind"):
        data.method_rows("kto", tmp_path)


def test_methods_take_only_their_columns_and_refuse_empty_data(tmp_path):
    _write(tmp_path / "preference.jsonl", [_pref(1)])
    assert set(data.method_rows("dpo", tmp_path)[0]) == {"prompt", "chosen", "rejected"}
    with pytest.raises(data.DataError, match="no training rows for method sft"):
        data.method_rows("sft", tmp_path)


def test_eval_split_is_seeded_and_never_takes_everything():
    rows = [{"i": i} for i in range(20)]
    train, evals = data.split_eval(rows, 0.1, seed=3)
    assert len(evals) == 2 and len(train) == 18
    assert data.split_eval(rows, 0.1, seed=3) == (train, evals)
    assert {r["i"] for r in train} | {r["i"] for r in evals} == set(range(20))
    assert data.split_eval(rows[:2], 0.4, seed=0)[0]  # one row stays for training
    assert data.split_eval(rows, 0.0, seed=0) == (rows, [])


def test_replay_mixes_the_requested_share_without_duplicates():
    new = [{"i": i} for i in range(30)]
    old = [{"i": i} for i in range(25, 100)]  # 25..29 are also new: not replayed twice
    mixed, n_old = data.mix_replay(new, old, 0.25, seed=1)
    assert n_old == 10 and len(mixed) == 40  # 10 / 40 = 25 %
    assert len({m["i"] for m in mixed}) == 40
    assert data.mix_replay(new, [], 0.5, seed=1) == (new, 0)


def test_snapshot_rows_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path))
    rows = [{"messages": U}]
    data.snapshot_rows("sft", rows, "abc")
    assert data.replay_rows("sft", "abc") == rows
    assert data.replay_rows("sft", "missing") == [] and data.replay_rows("sft", None) == []


def _Tok(template: str | None):
    """A real transformers tokenizer (a word-level vocabulary, no model files) with a template."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({"[UNK]": 0}, "[UNK]")))
    tok.chat_template = template
    return tok


SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def test_assistant_only_loss_swaps_in_the_marked_template_that_renders_identically():
    tok = _Tok(SMOLLM2)
    assert not has_generation_markers(tok.chat_template)
    assert apply_chat_template_choice(tok, "model", assistant_only_loss=True) == "smollm2-training"
    assert tok.chat_template == SMOLLM2_TRAINING and has_generation_markers(tok.chat_template)


def test_unknown_template_with_assistant_only_loss_is_refused_with_the_way_out():
    tok = _Tok("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}")
    with pytest.raises(TemplateError, match="chat_template: chatml"):
        apply_chat_template_choice(tok, "model", assistant_only_loss=True)
    assert apply_chat_template_choice(tok, "model", assistant_only_loss=False) is None


def test_chatml_choice_replaces_the_template_and_can_be_marked():
    tok = _Tok(None)
    assert apply_chat_template_choice(tok, "chatml", assistant_only_loss=True) == "chatml-training"
    out = tok.apply_chat_template(U + [{"role": "assistant", "content": "A"}], tokenize=False)
    assert out == "<|im_start|>user\nFrage?<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n"
    plain = _Tok(CHATML).apply_chat_template(
        U + [{"role": "assistant", "content": "A"}], tokenize=False
    )
    assert plain == out


def test_kto_is_derived_from_preferences_when_ingests_kto_file_is_empty(tmp_path):
    """Ingest always writes kto.jsonl; without thumbs verdicts it has no rows."""
    _write(tmp_path / "preference.jsonl", [_pref(1)])
    (tmp_path / "kto.jsonl").write_text("")
    assert [r["label"] for r in data.method_rows("kto", tmp_path)] == [True, False]


def test_replay_never_brings_eval_rows_back_into_training(tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"F{i}"}]} for i in range(20)]
    _write(tmp_path / "sft.jsonl", rows)
    prepared = data.prepare_rows(
        "sft", tmp_path, eval_fraction=0.2, seed=0, replay=rows, replay_fraction=0.5
    )
    evals = {json.dumps(r, sort_keys=True) for r in prepared["eval"]}
    assert len(evals) == 4
    assert not evals & {json.dumps(r, sort_keys=True) for r in prepared["train"]}


def _matched_kl_pairs(rows: list[dict], batch: int) -> float:
    """Share of TRL's KL pairs (completions rotated by one within each batch, sequential
    sampling) whose completion answers the same prompt after all."""
    matched = total = 0
    for i in range(0, len(rows) - batch + 1, batch):
        chunk = rows[i : i + batch]
        for j, row in enumerate(chunk):
            matched += row["prompt"] == chunk[j - 1]["prompt"]
            total += 1
    return matched / total


def test_kto_rows_are_shuffled_so_kl_pairs_rarely_share_a_prompt(tmp_path):
    _write(tmp_path / "preference.jsonl", [_pref(i) for i in range(40)])
    prepared = data.prepare_rows("kto", tmp_path, eval_fraction=0.0, seed=42)
    assert len(prepared["train"]) == 80
    assert _matched_kl_pairs(prepared["train"], batch=4) < 0.1  # in input order: 0.5
    again = data.prepare_rows("kto", tmp_path, eval_fraction=0.0, seed=42)
    assert again["train"] == prepared["train"]  # seeded


def test_two_trainings_snapshotting_one_dataset_at_once_both_succeed(tmp_path, monkeypatch):
    """Both wrote the same `<method>.tmp`; the second `replace` found it gone and crashed its
    training (two test workers, or two use cases trained on one dataset)."""
    import threading

    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path))
    both_written = threading.Barrier(2)
    real_write = data.write_jsonl

    def write_then_wait(path, rows):
        real_write(path, rows)
        both_written.wait(timeout=10)

    monkeypatch.setattr(data, "write_jsonl", write_then_wait)
    errors = []

    def snapshot():
        try:
            data.snapshot_rows("sft", [{"messages": []}], "d" * 64)
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=snapshot) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert errors == []
    assert data.replay_rows("sft", "d" * 64) == [{"messages": []}]


@pytest.mark.parametrize("seed", range(5))
def test_kto_eval_prompts_stay_out_of_training(tmp_path, seed):
    """KTO rows derived from preferences are pairs: with the eval split by row, the other
    answer to an eval prompt was trained on (and replay must not bring it back either)."""
    prefs = [_pref(i) for i in range(10)]
    _write(tmp_path / "preference.jsonl", prefs)
    replay = data.kto_from_preferences(prefs)
    prepared = data.prepare_rows(
        "kto", tmp_path, eval_fraction=0.2, seed=seed, replay=replay, replay_fraction=0.5
    )

    def prompts(rows):
        return {json.dumps(r["prompt"]) for r in rows}

    assert len(prepared["eval"]) == 4 and len(prompts(prepared["eval"])) == 2
    assert not prompts(prepared["eval"]) & prompts(prepared["train"])
