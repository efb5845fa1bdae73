"""Feedback ingestion: Argilla and Langfuse exports -> SFT and preference JSONL."""

from feinschliff.ingest.stage import run_ingest

__all__ = ["run_ingest"]
