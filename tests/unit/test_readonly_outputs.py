"""Read-only mounts (a container's recipes, evals, exports and model mounted read-only): an
output the OS does not let us write is a wrong output path, exit 2 with one line naming it,
for every stage alike (README "The CLI": "an output path the OS cannot create or an existing
output folder it does not let us write").

Tests run as root, where a chmod does not stop writes: the read-only disk is simulated where
the OS would answer EROFS."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

from tests.cli_helpers import run_main
from tests.unit.test_generate_out_overlap import _recipe


def _read_only_parent(monkeypatch) -> None:
    import feinschliff.pipeline as pipeline

    def run_lock(folder, name=".run.lock"):
        raise OSError(errno.EROFS, "Read-only file system", str(Path(folder) / name))

    monkeypatch.setattr(pipeline, "run_lock", run_lock)


def test_generate_out_under_a_read_only_parent_exits_2(tmp_path, monkeypatch, capsys):
    """It exited 1 ("cannot create the lock ...") where ingest and train exit 2."""
    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))
    recipe = _recipe(tmp_path)
    _read_only_parent(monkeypatch)
    out = tmp_path / "ro" / "gen"
    code, err = run_main(monkeypatch, capsys, "generate", str(recipe), "--out", str(out))
    assert code == 2, err
    assert f"cannot create the lock {out.parent}" in err and "Read-only file system" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


DEMO = Path(__file__).resolve().parents[2] / "recipes" / "demo-de.yaml"


def _trained(tmp_path: Path) -> tuple[Path, list[str]]:
    """A finished train output on a tiny base, and the --set lines that make the demo recipe
    use that base and a registry of its own."""
    from tests.unit.adapter_factory import make_base, make_train_output

    base = make_base(tmp_path / "base")
    make_train_output(tmp_path / "adapter", str(base))
    sets = [f"base_model.name={base}", f"register.registry={tmp_path / 'reg'}"]
    return tmp_path / "adapter", [a for s in sets for a in ("--set", s)]


def test_evaluate_out_on_a_read_only_mount_exits_2(tmp_path, monkeypatch, capsys):
    """An existing --out on a read-only mount exited 1 (`error: Read-only file system:
    OUT/.complete`), where README promises 2 for an output folder the OS does not let us write;
    a full disk (ENOSPC) stays a failure, exit 1."""
    import feinschliff.evaluate

    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))
    adapter, sets = _trained(tmp_path)
    out = tmp_path / "ro"
    out.mkdir()

    def refuse(errno_: int):
        def run_evaluate(recipe, ref, out_dir, **kw):
            raise OSError(errno_, os.strerror(errno_), str(out_dir / ".complete"))

        monkeypatch.setattr(feinschliff.evaluate, "run_evaluate", run_evaluate)

    args = ["evaluate", str(DEMO), "--adapter", str(adapter), "--out", str(out), *sets]
    refuse(errno.EROFS)
    code, err = run_main(monkeypatch, capsys, *args)
    assert code == 2, err
    assert err.strip() == (
        f"--out {out}: Read-only file system: {out}/.complete: choose another folder"
    )
    refuse(errno.ENOSPC)
    code, err = run_main(monkeypatch, capsys, *args)
    assert (code, err.strip()) == (1, f"error: No space left on device: {out}/.complete")


def test_a_read_only_hf_cache_is_named_as_hf_home(tmp_path, monkeypatch, capsys):
    """Training and lm-eval cache datasets under HF_HOME (the home folder by default, read-only
    in many containers): the one line says which setting to change."""
    from huggingface_hub import constants

    import feinschliff.evaluate

    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path / "hf"))
    adapter, sets = _trained(tmp_path)
    hf_file = tmp_path / "hf" / "datasets" / "json"

    def run_evaluate(recipe, ref, out_dir, **kw):
        raise OSError(errno.EROFS, "Read-only file system", str(hf_file))

    monkeypatch.setattr(feinschliff.evaluate, "run_evaluate", run_evaluate)
    out = tmp_path / "eval"
    args = ["evaluate", str(DEMO), "--adapter", str(adapter), "--out", str(out), *sets]
    code, err = run_main(monkeypatch, capsys, *args)
    assert (code, err.strip()) == (
        1,
        f"error: Read-only file system: {hf_file} (the Hugging Face cache, "
        f"HF_HOME={tmp_path / 'hf'}: set HF_HOME to a writable folder)",
    )


def test_gate_of_a_report_on_a_read_only_mount_exits_2_before_deciding(
    tmp_path, monkeypatch, capsys
):
    """gate printed every rule, then `error: Read-only file system: .../decision.json.tmp`,
    exit 1: a decision on screen that decision.json never recorded."""
    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))
    folder = tmp_path / "eval"
    folder.mkdir()
    report = folder / "report.json"
    metric = {"value": 0.5, "n": 60}
    metrics = {
        "base": {"de_wissen_mc/acc_norm": metric},
        "candidate": {"de_wissen_mc/acc_norm": metric},
    }
    report.write_text(json.dumps({"use_case": "support-de-demo", "metrics": metrics}))
    real_access = os.access

    def access(path, mode, **kw):  # the folder on a read-only mount (root ignores chmod)
        return False if Path(path) == folder and mode & os.W_OK else real_access(path, mode, **kw)

    monkeypatch.setattr(os, "access", access)
    code, err = run_main(monkeypatch, capsys, "gate", str(DEMO), "--report", str(report))
    assert code == 2, err
    assert f"--report {report}: its folder is not writable" in err
    assert "PASS" not in capsys.readouterr().out and not (folder / "decision.json").exists()
