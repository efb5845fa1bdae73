"""The annotator of a Langfuse v3 score: flat (`authorUserId`, as FACTS 10.2.2 shows it) or
nested in the `annotation` field group that the pull asks for (`fields=...,annotation`; the
current API schema nests it there). Either way it is the vote's annotator, not the trace's
end user: annotator aggregation counts people, and one person's two votes are not two."""

from __future__ import annotations

import pytest

from feinschliff.ingest.langfuse_scores import score_vote

SCORE = {"id": "sc-1", "dataType": "BOOLEAN", "name": "thumbs", "value": 1, "timestamp": "t"}


@pytest.mark.parametrize(
    "fields",
    [{"authorUserId": "u-annot-1"}, {"annotation": {"authorUserId": "u-annot-1"}}],
    ids=["flat", "nested"],
)
def test_the_scores_author_is_the_annotator(fields):
    vote = score_vote({**SCORE, **fields}, end_user="user-42", thumbs={"thumbs"})
    assert vote is not None and vote.annotator == "u-annot-1"


def test_without_an_author_the_traces_end_user_voted():
    vote = score_vote({**SCORE, "annotation": None}, end_user="user-42", thumbs={"thumbs"})
    assert vote is not None and vote.annotator == "user-42"
