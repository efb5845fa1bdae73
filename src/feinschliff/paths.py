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
