"""Chat templates for training: ChatML, and ChatML variants with ``{% generation %}`` markers.

``assistant_only_loss`` needs a template that marks assistant turns with ``{% generation %}``;
SmolLM2's own template has none and TRL 1.16 cannot patch it (FACTS 4). We ship marked versions
of the ChatML templates we know and use one only if it renders *exactly* like the model's own
template on probe conversations, so training sees the same text serving will send.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


# Where an adapter keeps the template it was trained with (transformers' save_pretrained name).
CHAT_TEMPLATE_FILE = "chat_template.jinja"


class TemplateError(ValueError):
    """The chat template cannot do what the recipe asks (assistant-only loss)."""


# Plain ChatML (no default system prompt), for `chat_template: chatml` on template-less models.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_ASSISTANT_MARKED = (
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endif %}"
)

CHATML_TRAINING = (
    "{% for message in messages %}" + _ASSISTANT_MARKED + "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# SmolLM2-Instruct: ChatML with a default system prompt when the conversation has none.
SMOLLM2_TRAINING = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\\n' }}"
    "{% endif %}" + _ASSISTANT_MARKED + "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

TRAINING_TEMPLATES = {"chatml": CHATML_TRAINING, "smollm2": SMOLLM2_TRAINING}

_PROBES = [
    [
        {"role": "user", "content": "Hallo?"},
        {"role": "assistant", "content": "Guten Tag."},
        {"role": "user", "content": "Wie geht es?"},
        {"role": "assistant", "content": "Gut, danke."},
    ],
    [
        {"role": "system", "content": "Sei knapp."},
        {"role": "user", "content": "Frage"},
        {"role": "assistant", "content": "Antwort"},
    ],
]


def has_generation_markers(template: str | None) -> bool:
    return bool(template) and "{% generation %}" in template.replace("{%-", "{%").replace(
        "-%}", "%}"
    )


def renders_like(tokenizer, candidate: str) -> bool:
    """True when ``candidate`` renders every probe exactly like the tokenizer's own template."""
    if not tokenizer.chat_template:
        return False
    for probe in _PROBES:
        for prompt_only in (False, True):
            msgs = probe[:-1] if prompt_only else probe
            kwargs = {"tokenize": False, "add_generation_prompt": prompt_only}
            try:
                own = tokenizer.apply_chat_template(msgs, **kwargs)
                new = tokenizer.apply_chat_template(msgs, chat_template=candidate, **kwargs)
            except Exception:  # a template that rejects a probe (e.g. no system role) differs
                return False
            if own != new:
                return False
    return True


def apply_chat_template_choice(tokenizer, choice: str, *, assistant_only_loss: bool) -> str | None:
    """Set the tokenizer's template for training; returns the name of a template we swapped in.

    Raises:
        TemplateError: assistant_only_loss with a template we cannot mark, with the reason.
    """
    swapped = None
    if choice == "chatml":
        tokenizer.chat_template = CHATML
        swapped = "chatml"
    if not assistant_only_loss or has_generation_markers(tokenizer.chat_template):
        return swapped
    for name, candidate in TRAINING_TEMPLATES.items():
        if renders_like(tokenizer, candidate):
            tokenizer.chat_template = candidate
            log.info("assistant_only_loss: using the %s template with generation markers", name)
            return f"{name}-training"
    raise TemplateError(
        "assistant_only_loss needs a chat template with {% generation %} markers; the model's "
        "template has none and is not a ChatML variant feinschliff ships a marked copy of "
        f"({', '.join(TRAINING_TEMPLATES)}). Set assistant_only_loss: false or chat_template: chatml."
    )
