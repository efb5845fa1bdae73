"""A registry version's lineage is read from UTF-8 files whatever the locale."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from feinschliff.artifacts import write_json

SCRIPT = """
import json, sys
from feinschliff.artifacts import DatasetRef
from feinschliff.pipeline import dataset_lineage
got = dataset_lineage(DatasetRef(path=sys.argv[1], sha256="d" * 64))
print(json.dumps(got["sources"][0]["path"]))
"""


def test_lineage_of_a_dataset_with_a_german_source_path_in_a_c_locale(tmp_path):
    """write_json writes UTF-8, but lineage read manifest.json in the locale's encoding: in a
    C locale (minimal images) a source path like /data/Rückmeldungen failed the register step
    with UnicodeDecodeError after the gate had passed."""
    data = tmp_path / "ingest"
    source = {"kind": "argilla", "path": "/data/R\u00fcckmeldungen", "inputs": {}}
    write_json(data / "manifest.json", {"counts": {}, "sha256": {}, "sources": [source]})
    env = {**os.environ, "PYTHONCOERCECLOCALE": "0", "LC_ALL": "C", "LANG": "C"}
    env.pop("PYTHONUTF8", None)
    run = subprocess.run(
        [sys.executable, "-X", "utf8=0", "-c", SCRIPT, str(data)],
        env=env,
        capture_output=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert run.returncode == 0, run.stderr.decode(errors="replace")[-500:]
    assert json.loads(run.stdout) == "/data/R\u00fcckmeldungen"
