"""Our own inference for evaluation: greedy answers and answer log-probabilities.

Used for held-out feedback metrics and for the answers the judge grades. Runs the base model
with or without a PEFT adapter through transformers; small batches, left padding, greedy.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

Messages = list[dict[str, str]]


def load_model(
    model_path: str, dtype: str, adapter: str | None = None, revision: str | None = None
) -> tuple[Any, Any]:
    """The model (on lm-eval's device: the GPU when there is one) and its tokenizer, of a hub
    model at ``revision`` (``base_model.revision``: the one the adapter was trained on)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from feinschliff.evaluate.harness import device

    tok = AutoTokenizer.from_pretrained(model_path, revision=revision)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(
        model_path, dtype=getattr(torch, dtype), revision=revision
    )
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
        use_adapter_template(tok, adapter)
    model.to(device())
    model.eval()
    return model, tok


def use_adapter_template(tok: Any, adapter: str) -> None:
    """Prompt with the chat template the adapter was trained with (``chat_template.jinja``, see
    ``train.chat_template``), which may not be the base model's: answers are then judged in the
    format the adapter learned. An adapter without the file keeps the tokenizer's template."""
    template = Path(adapter) / "chat_template.jinja"
    if template.is_file():
        tok.chat_template = template.read_text(encoding="utf-8")


def _prompt_text(tok: Any, messages: Messages) -> str:
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@torch.inference_mode()
def generate_answers(
    model: Any, tok: Any, prompts: Sequence[Messages], *, max_new_tokens: int, batch_size: int
) -> list[str]:
    answers: list[str] = []
    for i in range(0, len(prompts), batch_size):
        texts = [_prompt_text(tok, p) for p in prompts[i : i + batch_size]]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = enc.to(model.device)
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
        )
        for row in out[:, enc["input_ids"].shape[1] :]:
            answers.append(tok.decode(row, skip_special_tokens=True).strip())
    return answers


@torch.inference_mode()
def answer_logprob(model: Any, tok: Any, prompt: Messages, answer: str) -> float:
    """Mean log-probability per token of ``answer`` after the chat-templated ``prompt``.

    Per token, not summed: a sum favours short answers, and a curt rejected answer ("Geht
    nicht.") would beat every helpful chosen one whatever the model learned. Only the answer's
    own tokens count: the template's closing tokens (``<|im_end|>``, a newline) are nearly
    certain and would pull short answers' means up.
    """
    full = tok.apply_chat_template(
        [*prompt, {"role": "assistant", "content": answer}], tokenize=False
    )
    head = _prompt_text(tok, prompt)
    try:
        enc = tok(full, return_tensors="pt", add_special_tokens=False, return_offsets_mapping=True)
    except (NotImplementedError, ValueError, TypeError):  # no offsets (a slow tokenizer)
        enc = None
    if enc is None:
        # everything after the prompt's tokens, the template's closing tokens included
        ids = tok(full, return_tensors="pt", add_special_tokens=False)["input_ids"]
        keep = list(range(len(tok(head, add_special_tokens=False)["input_ids"]), ids.shape[1]))
    else:
        ids = enc["input_ids"]
        start, end = _answer_span(tok, prompt, full, head, answer)
        # the answer's tokens: those overlapping its characters (never the first token, which
        # has no prediction)
        keep = [
            i
            for i, (s, e) in enumerate(enc["offset_mapping"][0].tolist())
            if i > 0 and e > s and s < end and e > start
        ]
    keep = [i for i in keep if i > 0]
    if not keep:
        raise ValueError(f"nothing of the answer {answer[:40]!r} is left to score")
    ids = ids.to(model.device)
    logits = model(input_ids=ids).logits[0, :-1].float()
    logp = torch.log_softmax(logits, dim=-1)
    targets = ids[0, 1:]
    picked = logp.gather(1, targets.unsqueeze(1)).squeeze(1)
    return float(picked[[i - 1 for i in keep]].mean())


# Stands in for the answer when the template is rendered to find where the answer goes;
# invisible separators around a name no real answer contains.
_PLACEHOLDER = "\u2063feinschliff-answer\u2063"


def _answer_span(tok: Any, prompt: Messages, full: str, head: str, answer: str) -> tuple[int, int]:
    """Where ``answer`` sits in the templated conversation ``full``: what the template renders
    around a placeholder answer is what surrounds the real one (also when it trims the answer
    or renders earlier turns differently once an assistant turn follows). Failing that (a
    template that rewrites the answer), the answer's text searched after the prompt's, else
    everything after the prompt."""
    marked = tok.apply_chat_template(
        [*prompt, {"role": "assistant", "content": _PLACEHOLDER}], tokenize=False
    )
    at = marked.find(_PLACEHOLDER)
    if at >= 0:
        before, after = marked[:at], marked[at + len(_PLACEHOLDER) :]
        end = len(full) - len(after)
        if full.startswith(before) and full.endswith(after) and end > len(before):
            return len(before), end
    after_prompt = len(os.path.commonprefix([full, head]))
    text = answer if answer in full[after_prompt:] else answer.strip()
    start = full.find(text, after_prompt) if text else -1
    if start < 0:
        return after_prompt, len(full)
    return start, start + len(text)
