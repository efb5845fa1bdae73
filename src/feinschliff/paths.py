"""Where the project's bundled assets (evals/, recipes/) live at run time."""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    """The checkout (or image) root that holds evals/ and recipes/.

    ``FEINSCHLIFF_PROJECT_ROOT`` wins; otherwise the directory two levels above the package
    (the src layout of a checkout or an editable install).
    """
    env = os.environ.get("FEINSCHLIFF_PROJECT_ROOT")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2]


def bundled_tasks_dir() -> Path:
    return project_root() / "evals" / "lm_eval_tasks"


def bundled_task_names() -> list[str]:
    """Names of the bundled lm-eval tasks (the ``task:`` line of each YAML; no YAML parser:
    recipe validation calls this)."""
    names = []
    for yml in sorted(bundled_tasks_dir().glob("*.yaml")):
        for line in yml.read_text(encoding="utf-8").splitlines():
            if line.startswith("task:"):
                names.append(line.partition(":")[2].strip().strip("'\""))
    return names


def judge_questions_file() -> Path:
    """The bundled judge questions (``evaluate.judge.questions``: bundled or both)."""
    return project_root() / "evals" / "judge" / "questions_de.jsonl"
