"""Feedback ingestion: Argilla and Langfuse exports -> SFT, preference and KTO JSONL."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from feinschliff.ingest.stage import IngestError, run_ingest

__all__ = ["IngestError", "run_ingest"]


def __getattr__(name: str) -> Any:
    # Lazy, so that light submodules (credentials, jsonio) import without the whole stage.
    if name in __all__:
        from feinschliff.ingest import stage

        return getattr(stage, name)
    raise AttributeError(name)
