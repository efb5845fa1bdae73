"""Where the project's bundled assets (evals/, recipes/) live at run time."""

from __future__ import annotations

import os
from pathlib import Path


class ProjectRootMissing(RuntimeError):
    """The bundled evals/, configs/ and scripts/ are not where the package looks for them."""


def project_root() -> Path:
    """The checkout (or image) root that holds evals/, recipes/, configs/ and scripts/.

    ``FEINSCHLIFF_PROJECT_ROOT`` wins; otherwise the directory two levels above the package
    (the src layout of a checkout or an editable install). The wheel carries the library only:
    a plain ``pip install`` outside a checkout finds no bundled tasks, which would surface as
    misleading errors much later (a gate metric "has no eval data"), so it fails here instead.
    """
    env = os.environ.get("FEINSCHLIFF_PROJECT_ROOT")
    root = Path(env) if env else Path(__file__).resolve().parents[2]
    if not (root / "evals").is_dir():
        where = "FEINSCHLIFF_PROJECT_ROOT" if env else "the package's checkout"
        raise ProjectRootMissing(
            f"no evals/ folder in {root} ({where}): feinschliff runs from a checkout of its "
            "repository (or the Docker image); install it there with `make install` or "
            "`pip install -e .`, or set FEINSCHLIFF_PROJECT_ROOT to the checkout"
        )
    return root


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
