"""Secrets for live pulls and pseudonymization: environment variables or Prefect Secret blocks.

Credentials never come from a recipe or a flow parameter (Prefect shows parameters in plain text).
Lookup order for a name such as ``LANGFUSE_SECRET_KEY``:

1. the environment variable of that name;
2. a Prefect Secret block named in kebab case (``langfuse-secret-key``), only when Prefect is
   installed and a Prefect API is configured; the library never needs Prefect for anything else.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def lookup_secret(name: str) -> str | None:
    """The secret's value, or None when neither the environment nor Prefect holds it."""
    return _lookup(name)[0]


def require_secret(name: str, purpose: str) -> str:
    return require_sourced(name, purpose)[0]


def require_sourced(name: str, purpose: str) -> tuple[str, str]:
    """The secret's value and where it came from, for messages (never the value): a stale
    environment variable shadows a Prefect Secret block, and a refusal must show which."""
    value, problem = _lookup(name)
    if value is None:
        raise MissingCredentials(
            f"{purpose} needs {name}: set the environment variable or create a Prefect Secret "
            f"block '{_block(name)}' (never put credentials into a recipe)"
            + (f"; {problem}" if problem else "")
        )
    if os.environ.get(name):
        return value, f"environment variable {name}, read before any Prefect Secret block"
    return value, f"Prefect Secret block '{_block(name)}'"


class MissingCredentials(RuntimeError):
    """A live pull was configured but its credentials are not available."""


def _block(name: str) -> str:
    return name.lower().replace("_", "-")


def _lookup(name: str) -> tuple[str | None, str]:
    """The value and, when Prefect could not be asked, why (a down API is no missing block)."""
    value = os.environ.get(name)
    if value:
        return value, ""
    return _prefect_secret(_block(name))


def _prefect_secret(block: str) -> tuple[str | None, str]:
    # Without a configured API, Prefect would start a temporary server just to answer "no".
    if not (url := _prefect_api_url()):
        return None, ""
    try:
        from prefect.blocks.system import Secret
    except ImportError:
        return None, ""
    try:
        return str(Secret.load(block).get()), ""
    except ValueError as exc:  # no such block
        log.debug("no Prefect Secret block %r: %s", block, exc)
        return None, ""
    except Exception as exc:  # noqa: BLE001 - a down or refusing API: said, not taken for "none"
        log.debug("Prefect Secret block %r not readable: %s", block, exc)
        return None, (
            f"the Prefect API at {url} could not be asked for the block "
            f"({type(exc).__name__}: {exc or 'no detail'})"
        )


def _prefect_api_url() -> str | None:
    """The API URL Prefect itself would use: the environment's, else the active profile's
    (`prefect config set PREFECT_API_URL=...` writes the profile, not the environment)."""
    if url := os.environ.get("PREFECT_API_URL"):
        return url
    try:
        from prefect.settings import PREFECT_API_URL
    except ImportError:
        return None
    try:
        return PREFECT_API_URL.value() or None
    except Exception as exc:  # noqa: BLE001 - an unreadable profile: no Prefect, as before
        log.debug("no Prefect API URL: %s", exc)
        return None
