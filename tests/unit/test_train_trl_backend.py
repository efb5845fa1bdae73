"""TRL backend helpers that need no model: the pad token choice behind comparable token counts."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from feinschliff.train.trl_backend import set_pad_token


def _tok(pad, eos="<|im_end|>", unk="<|endoftext|>"):
    return SimpleNamespace(pad_token=pad, eos_token=eos, unk_token=unk)


@pytest.mark.parametrize(
    ("tok", "padding_free", "want"),
    [
        # SmolLM2: pad = eos. Padding-free batches count input_ids != pad, so pad must not be a
        # token every conversation contains; padded batches count by attention mask: unchanged.
        (_tok("<|im_end|>"), True, "<|endoftext|>"),
        (_tok("<|im_end|>"), False, "<|im_end|>"),
        (_tok(None), False, "<|im_end|>"),
        (_tok(None), True, "<|endoftext|>"),
        (_tok("<pad>"), True, "<pad>"),  # a real pad token stays
        (_tok(None, unk=None), True, "<|im_end|>"),  # nothing better to use
        (_tok(None, unk="<|im_end|>"), True, "<|im_end|>"),
    ],
)
def test_pad_token_is_distinct_from_eos_for_padding_free_batches(tok, padding_free, want):
    set_pad_token(tok, padding_free=padding_free)
    assert tok.pad_token == want
