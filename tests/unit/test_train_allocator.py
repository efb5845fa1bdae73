"""The train stage trains on CUDA with expandable segments unless the user set an allocator
variable: on an H100 the default caching allocator held 54.9 GiB for an ORPO training that
allocated 39.5 (above `feinschliff estimate`'s 50.3, which `run` checks the GPU against);
expandable segments held 44.8 (bench/results/h100-support-de-8b-orpo.json). No GPU here: CUDA
is reported available by a patched check, and the training backend records what it saw."""

from __future__ import annotations

import os

import pytest

from feinschliff.train import allocator
from tests.unit.test_train_review_fixes import DEMO, FAST, WORDS
from tests.unit.tiny_llama import train_until_the_backend

VARS = ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF")


@pytest.fixture
def no_alloc_vars(monkeypatch):
    for name in VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def applied(monkeypatch):
    """What the in-process allocator was told (the real call needs a CUDA build)."""
    import torch

    calls: list[str] = []
    monkeypatch.setattr(torch.cuda.memory, "_set_allocator_settings", calls.append)
    return calls


def _train_seeing_env(tmp_path, monkeypatch, *, cuda: bool) -> dict[str, str | None]:
    from feinschliff.train import stage

    seen: dict[str, str | None] = {}

    def backend(recipe, model_path, files, out, warm):
        seen.update({name: os.environ.get(name) for name in VARS})
        raise stage.TrainError("stop here")

    monkeypatch.setattr(stage, "_run_backend", backend)
    monkeypatch.setattr(stage, "_cuda_available", lambda: cuda)
    train_until_the_backend(tmp_path, WORDS, DEMO, FAST)
    return seen


def test_a_cuda_training_runs_with_expandable_segments_and_puts_the_variable_back(
    tmp_path, monkeypatch, home, no_alloc_vars, applied
):
    seen = _train_seeing_env(tmp_path, monkeypatch, cuda=True)
    assert seen["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"  # children inherit it
    assert applied == ["expandable_segments:True"]  # and this process's allocator
    # afterwards gone: vLLM, started later from the same process tree, refuses it
    assert all(name not in os.environ for name in VARS)


def test_a_cpu_training_sets_nothing(tmp_path, monkeypatch, home, no_alloc_vars, applied):
    seen = _train_seeing_env(tmp_path, monkeypatch, cuda=False)
    assert seen == dict.fromkeys(VARS) and applied == []


@pytest.mark.parametrize("name", VARS)
def test_an_allocator_variable_the_user_set_wins(tmp_path, monkeypatch, home, applied, name):
    for other in VARS:
        monkeypatch.delenv(other, raising=False)
    monkeypatch.setenv(name, "backend:cudaMallocAsync")
    seen = _train_seeing_env(tmp_path, monkeypatch, cuda=True)
    assert seen[name] == "backend:cudaMallocAsync" and applied == []
    assert sum(value is not None for value in seen.values()) == 1  # ours not added beside it
    assert os.environ[name] == "backend:cudaMallocAsync"  # and not removed afterwards


def test_an_allocator_that_refuses_the_setting_still_trains(monkeypatch, no_alloc_vars):
    """Another torch build without the run-time call: the variable alone (read when CUDA
    starts) is still set, and nothing raises."""
    import torch

    def refuse(_settings):
        raise RuntimeError("not supported")

    monkeypatch.setattr(torch.cuda.memory, "_set_allocator_settings", refuse)
    with allocator.expandable_segments(on_cuda=True) as used:
        assert used and os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    assert "PYTORCH_CUDA_ALLOC_CONF" not in os.environ


def test_an_empty_value_the_user_set_is_put_back(monkeypatch, applied):
    """An empty variable chooses nothing (set ours), but afterwards it is there again, empty,
    not removed."""
    monkeypatch.delenv("PYTORCH_ALLOC_CONF", raising=False)
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "")
    with allocator.expandable_segments(on_cuda=True) as used:
        assert used and os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == ""


def test_two_trainings_in_threads_share_the_setting_until_the_last_ends(no_alloc_vars, applied):
    """Two trainings in one process (threads): the second is inside ours (not the user's
    choice), and the first one's end does not take the variable from the second's children."""
    with allocator.expandable_segments(on_cuda=True) as first:
        with allocator.expandable_segments(on_cuda=True) as second:
            assert first and second
        assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    assert "PYTORCH_CUDA_ALLOC_CONF" not in os.environ
    assert applied == ["expandable_segments:True"]  # applied once


def test_a_users_setting_without_expandable_segments_is_warned_about(monkeypatch, caplog):
    monkeypatch.delenv("PYTORCH_ALLOC_CONF", raising=False)
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:512")
    with allocator.expandable_segments(on_cuda=True) as used:
        assert not used
    assert "has no expandable segments" in caplog.text
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "max_split_size_mb:512"
