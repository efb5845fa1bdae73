"""Evaluation prompts an adapter with the chat template it was trained with."""

from __future__ import annotations

from types import SimpleNamespace

from feinschliff.evaluate.inference import use_adapter_template

CHATML = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"


def test_the_adapters_own_template_replaces_the_base_models(tmp_path):
    """`train.chat_template: chatml` trained the adapter without the base model's default system
    turn; evaluating it with the base template measured it in a format it never saw."""
    (tmp_path / "chat_template.jinja").write_text(CHATML, encoding="utf-8")
    tok = SimpleNamespace(chat_template="base template")
    use_adapter_template(tok, str(tmp_path))
    assert tok.chat_template == CHATML


def test_an_adapter_without_a_template_keeps_the_tokenizers(tmp_path):
    tok = SimpleNamespace(chat_template="base template")
    use_adapter_template(tok, str(tmp_path))
    assert tok.chat_template == "base template"
