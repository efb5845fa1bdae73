"""Presidio starts without importing Hugging Face transformers (its transformers NLP engine is
never used: pattern recognizers only), and nothing else in the process loses transformers."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from feinschliff.pii_recognizers import _RefuseInThisThread

SCRUB = (
    "from feinschliff import pii\n"
    "text = 'Ruf an: 0151 23456789, max@example.de, IBAN DE89 3704 0044 0532 0130 00'\n"
    "print(pii.scrub_text(text, 'redact')[0])\n"
)
FOUND = "Ruf an: <PHONE_NUMBER>, <EMAIL_ADDRESS>, IBAN <IBAN_CODE>"


def _python(code: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    return out.stdout.strip().splitlines()


def test_scrubbing_does_not_import_transformers_and_a_later_import_works():
    lines = _python(
        "import sys\n" + SCRUB + "print('transformers' in sys.modules)\n"
        "print(any(type(f).__name__ == '_RefuseInThisThread' for f in sys.meta_path))\n"
        "from transformers import pipeline  # a training later in the same process\n"
        "print(callable(pipeline))\n"
    )
    assert lines == [FOUND, "False", "False", "True"]


def test_presidio_uses_transformers_imported_before_it():
    """A Prefect worker that trained before scrubbing: nothing is refused, findings equal."""
    assert _python("import transformers\n" + SCRUB) == [FOUND]


def test_only_the_importing_thread_is_refused():
    refuse = _RefuseInThisThread("transformers")
    with pytest.raises(ImportError):
        refuse.find_spec("transformers.pipelines", None)
    assert refuse.find_spec("transformers_extra", None) is None  # another package
    seen = []
    other = threading.Thread(target=lambda: seen.append(refuse.find_spec("transformers", None)))
    other.start()
    other.join()
    assert seen == [None]  # another thread's import goes on to the other finders
