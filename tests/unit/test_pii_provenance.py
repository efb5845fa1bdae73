"""PII outside the message texts: ids in every row's provenance, numbers and dict keys in
quarantined raw values.

A Langfuse ``userId`` is often the end user's e-mail address, and end-user thumbs take it as the
annotator: it must not reach any output, yet one person must keep one id across rows (the
poisoning scan groups rows by contributor). Presidio's engines take a few seconds to build once
per process (module fixture).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from feinschliff.ingest import run_ingest
from feinschliff.pii import restore_text, scrub_id, scrub_value
from feinschliff.recipe import FeedbackSpec
from tests.unit.test_pii import engines  # noqa: F401 - the module's Presidio set-up (autouse)

KEY = "feinschliff-test-key-32-bytes!!!"
MAX = "max.mustermann@example.de"
ERIKA = "erika.musterfrau@example.org"
PLAIN = "u-0e66d2"  # an opaque user id: no PII, kept as it is
TAX_ID = 86095742719
PHONE = 4930123456  # a bare digit run: a phone number only after a phone word (the key)


# --------------------------------------------------------------------------- provenance

# observation -> (end user, thumbs up?, prompt, answer); o1/o2 share a prompt (a preference pair)
THUMBS = {
    "o1": (MAX, True, "Wie ändere ich meine Bankverbindung bitte?", "Im Kundenportal, bitte."),
    "o2": (MAX, False, "Wie ändere ich meine Bankverbindung bitte?", "Das geht leider nicht."),
    "o3": (ERIKA, True, "Wann wird mein Abschlag angepasst?", "Nach der Jahresabrechnung."),
    "o4": (PLAIN, True, "Wo melde ich meinen Zählerstand?", "Online im Kundenportal."),
    "o5": (ERIKA, False, "Kann ich meinen Tarif wechseln?", "Dafür bin ich nicht zuständig."),
}
# with the default seed, o4's and o5's prompts go to training, the others to held-out


def _export(folder: Path) -> Path:
    folder.mkdir()
    obs, scores = [], []
    for i, (oid, (user, up, prompt, answer)) in enumerate(THUMBS.items()):
        obs.append(
            {
                "id": oid,
                "traceId": f"t{i}",
                "type": "GENERATION",
                "startTime": f"2026-10-20T11:0{i}:00.000Z",
                "userId": user,
                "input": json.dumps([{"role": "user", "content": prompt}]),
                "output": json.dumps({"role": "assistant", "content": answer}),
            }
        )
        scores.append(
            {
                "id": f"s{i}",
                "name": "user-feedback",
                "dataType": "BOOLEAN",
                "value": up,
                "timestamp": "2026-10-20T11:05:00.000Z",
                "subject": {"kind": "observation", "id": oid, "traceId": f"t{i}"},
            }
        )
    (folder / "obs.json").write_text(json.dumps({"data": obs, "meta": {}}))
    (folder / "scores.json").write_text(json.dumps({"data": scores, "meta": {}}))
    return folder


@pytest.fixture(scope="module")
def ingested(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("prov")
    export = _export(base / "export")
    outs = {}
    for mode in ("off", "redact", "pseudonymize"):
        spec = FeedbackSpec.model_validate(
            {
                "sources": [{"kind": "langfuse", "path": str(export)}],
                "pii": {"mode": mode},
                "heldout_fraction": 0.5,  # rows on both sides of the split
            }
        )
        mp = pytest.MonkeyPatch()
        mp.setenv("FEINSCHLIFF_PII_KEY", KEY)
        run_ingest(spec, base / mode)
        mp.undo()
        outs[mode] = base / mode
    return outs


def _rows(out: Path, name: str) -> list[dict]:
    """The rows of a training file and of its held-out twin."""
    paths = [p for p in (out / name, out / "heldout" / name) if p.exists()]
    return [json.loads(x) for p in paths for x in p.read_text("utf-8").splitlines() if x]


def _annotators_by_observation(out: Path) -> dict[str, list[str]]:
    return {
        r["provenance"]["source_id"]: r["provenance"]["annotators"] for r in _rows(out, "kto.jsonl")
    }


def test_the_e_mail_user_ids_are_there_without_scrubbing(ingested):
    assert _annotators_by_observation(ingested["off"]) == {
        oid: [user] for oid, (user, *_) in THUMBS.items()
    }


@pytest.mark.parametrize("mode", ["redact", "pseudonymize"])
def test_no_user_e_mail_in_any_output_file(ingested, mode):
    out = ingested[mode]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {"sft.jsonl", "kto.jsonl", "preference.jsonl", "manifest.json", "README.md"} <= {
        p.name for p in files
    }
    for path in files:
        data = path.read_bytes()
        for needle in ("mustermann", "musterfrau", "example.de", "example.org"):
            assert needle.encode() not in data, f"{needle} in {path}"
    manifest = json.loads((out / "manifest.json").read_text("utf-8"))
    # one finding per written row that names an e-mail user: kto o1-o3 and o5, sft o1 and o3,
    # the pair o1/o2; on both sides of the split
    assert manifest["pii"]["found"] == {"EMAIL_ADDRESS": 7}
    by_file = manifest["pii"]["by_file"]
    assert by_file["kto.jsonl"] == {"EMAIL_ADDRESS": 1}
    assert by_file["heldout/kto.jsonl"] == {"EMAIL_ADDRESS": 3}


@pytest.mark.parametrize("mode", ["redact", "pseudonymize"])
def test_one_user_keeps_one_stable_token_across_rows(ingested, mode):
    out = ingested[mode]
    who = _annotators_by_observation(out)
    (max1,), (max2,), (erika,), (plain,) = who["o1"], who["o2"], who["o3"], who["o4"]
    assert max1 == max2 and max1 != erika and who["o5"] == [erika]  # o5: training, o3: held out
    assert max1.startswith("<EMAIL_ADDRESS>-") and erika.startswith("<EMAIL_ADDRESS>-")
    assert len(max1) == len("<EMAIL_ADDRESS>-") + 12
    assert plain == PLAIN
    assert max1 == scrub_id(MAX, mode, KEY if mode == "pseudonymize" else None)[0]
    # the same token in the other files (the poisoning scan joins them by contributor)
    sft = {
        r["provenance"]["source_id"]: r["provenance"]["annotators"] for r in _rows(out, "sft.jsonl")
    }
    assert sft["o1"] == [max1] and sft["o3"] == [erika]
    (pair,) = _rows(out, "preference.jsonl")
    assert pair["provenance"]["annotators"] == [max1]


def test_tokens_are_keyed_in_pseudonymize_mode(ingested):
    redacted = _annotators_by_observation(ingested["redact"])["o1"]
    pseudonymized = _annotators_by_observation(ingested["pseudonymize"])["o1"]
    assert redacted != pseudonymized
    other_key = scrub_id(MAX, "pseudonymize", "another-key-of-exactly-32-bytes!")[0]
    assert other_key != pseudonymized[0]


def test_scrub_id_leaves_ids_without_pii_and_timestamps_alone():
    for value in (PLAIN, "8d998db4-e5b7-4f3f-b0b3-0b42a0f308d9", "2026-10-20T11:05:00.000Z", ""):
        assert scrub_id(value, "redact") == (value, Counter())
    assert scrub_id(MAX, "off") == (MAX, Counter())
    token, found = scrub_id(f"trace-{MAX}", "redact")
    assert token.startswith("<EMAIL_ADDRESS>-") and found == {"EMAIL_ADDRESS": 1}
    assert token != scrub_id(MAX, "redact")[0]  # the whole id is hashed: distinct ids differ


# --------------------------------------------------------------------------- quarantine values


def _raw() -> dict:
    return {
        "fields": {"prompt": "Hallo"},
        "metadata": {
            "steuer_id": TAX_ID,
            "telefon": PHONE,
            "rating": 3,
            "score": 0.75,
            "submitted": True,
            "nested": [{"kontakt": {MAX: {"telefon": PHONE}}}],
        },
        "responses": {MAX: [{"value": 3}], ERIKA: [{"value": 4}], PLAIN: [{"value": 5}]},
    }


def test_scrub_value_scrubs_numbers_and_dict_keys():
    counts: Counter[str] = Counter()
    out = scrub_value(_raw(), "redact", None, counts)
    text = json.dumps(out)
    for needle in (str(TAX_ID), str(PHONE), "mustermann", "musterfrau"):
        assert needle not in text, needle
    meta = out["metadata"]
    assert meta["steuer_id"] == "<DE_TAX_ID>" and meta["telefon"] == "<PHONE_NUMBER>"
    # booleans, floats and short numbers are no identifiers
    assert meta["rating"] == 3 and meta["score"] == 0.75 and meta["submitted"] is True
    # e-mail keys: stable tokens, distinct per person, the same as in provenance
    responses = out["responses"]
    assert len(responses) == 3 and responses[PLAIN] == [{"value": 5}]
    max_token, erika_token = scrub_id(MAX, "redact")[0], scrub_id(ERIKA, "redact")[0]
    assert responses[max_token] == [{"value": 3}] and responses[erika_token] == [{"value": 4}]
    assert meta["nested"] == [{"kontakt": {max_token: {"telefon": "<PHONE_NUMBER>"}}}]
    assert counts == {"DE_TAX_ID": 1, "PHONE_NUMBER": 2, "EMAIL_ADDRESS": 3}


def test_scrub_value_pseudonymizes_numbers_reversibly():
    counts: Counter[str] = Counter()
    out = scrub_value(_raw(), "pseudonymize", KEY, counts)
    meta = out["metadata"]
    assert meta["steuer_id"].startswith("<DE_TAX_ID:") and str(TAX_ID) not in json.dumps(out)
    assert restore_text(meta["steuer_id"], KEY) == str(TAX_ID)
    assert restore_text(meta["telefon"], KEY) == str(PHONE)
    assert scrub_id(MAX, "pseudonymize", KEY)[0] in out["responses"]
    assert scrub_value(_raw(), "off", None, Counter()) == _raw()
