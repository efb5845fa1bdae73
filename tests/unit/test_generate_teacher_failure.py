"""A teacher that fails for good (no API key, nothing listening) ends `feinschliff generate`
promptly with the ledger's message, and no process of the stage is left behind.

The first test runs the real CLI with the real distilabel child, three runs at once (~30 s): a
dead teacher URL, an unset API key, and a teacher whose every question is filtered out. Before
the fix all three hung: with no question left, the pipeline's `select` step sent an empty batch
on, distilabel never passed it to the answer step, and the child waited forever after "stage 2
loaded". The others exercise the stage's watchdog and process-group handling with a stand-in
child (one that hangs after the failure; a stage that is interrupted or killed), which is what
guarantees the end however distilabel behaves."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
import yaml

from feinschliff.generate import stage
from feinschliff.generate.ledger import Ledger
from feinschliff.specs.generate import GenerateSpec, PreferenceSpec
from tests.http_stub import StubHandler, base_url, serve

ROOT = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).parent / "feinschliff")
MARK = "FEINSCHLIFF_TEST_PROCESS_MARK"  # inherited by every process the command starts


def _free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes(mark: str) -> list[int]:
    """Live processes (zombies aside) whose environment carries ``MARK=mark``."""
    needle = f"{MARK}={mark}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except (OSError, IndexError):
            continue
    return found


def _no_processes_left(mark: str, within: float = 10.0) -> list[int]:
    deadline = time.monotonic() + within
    while (left := _processes(mark)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in left:  # do not leave them to the next test, then fail
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return left


def _recipe(tmp_path: Path, base_url: str) -> Path:
    data = yaml.safe_load((ROOT / "recipes" / "demo-de.yaml").read_text())
    for src in data["feedback"]["sources"]:
        src["path"] = str((ROOT / "recipes" / src["path"]).resolve())
    (tmp_path / "themen.txt").write_text("Tarifwechsel\nZählerstand melden\n", encoding="utf-8")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("Der Abschlag wird monatlich gezahlt.\n")
    data["generate"] = {
        "seeds": {"topics": "themen.txt", "documents": "docs", "pii": "off"},
        "num_instructions": 4,
        "instructions_per_seed": 2,
        "teacher": {
            "kind": "openai",
            "base_url": base_url,
            "model": "teacher",
            "api_key_env": "TEACHER_API_KEY",
        },
        "preference": {"num_generations": 2},
        "retries": 0,
        "backoff_s": 0.0,
        "concurrency": 2,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


class ShortQuestions(StubHandler):
    """A teacher that answers, but with questions too short to keep: nothing is left after
    `select`, with no teacher failure in the ledger (the same hang before the fix)."""

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        body = json.loads(self.read_body())
        reply = json.dumps({"anfragen": ["Wie?", "Was?"]})
        self.respond_completion(body, reply)


@pytest.fixture()
def short_questions_url():
    server = serve(ShortQuestions)
    yield base_url(server) + "/v1"
    server.shutdown()


# name: (API key in the environment, teacher URL (None: nothing listens there), what the
# ledger's failure says (None: it has none), what the error says). The runs go at once: each
# spends most of its ~20 s waiting on distilabel's start-up, not on the CPU.
CASES = {
    "dead-teacher-url": (
        "sk-test",
        None,
        "unavailable after 1 attempt(s): ConnectError",
        "teacher failure: {failed}",
    ),
    "every-question-filtered": ("sk-test", "stub", None, "no rows survived generation"),
}


@pytest.mark.timeout(300)
def test_a_failed_teacher_ends_the_run_promptly_with_the_ledgers_message(
    tmp_path, short_questions_url
):
    runs = {}
    for name, (key, url, _, _) in CASES.items():
        base, mark = tmp_path / name, uuid.uuid4().hex
        (base / "home").mkdir(parents=True)
        env = {k: v for k, v in os.environ.items() if k != "TEACHER_API_KEY"}
        env |= {"FEINSCHLIFF_HOME": str(base / "home"), "HF_HUB_OFFLINE": "1", MARK: mark}
        if key is not None:
            env["TEACHER_API_KEY"] = key
        url = short_questions_url if url else f"http://127.0.0.1:{_free_port()}/v1"
        recipe = _recipe(base, url)
        proc = subprocess.Popen(
            [CLI, "generate", str(recipe), "--out", str(base / "out")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # so that a hang can be cleaned up as a whole below
        )
        runs[name] = (proc, base / "out", mark)
    started = time.monotonic()
    for name, (proc, out, mark) in runs.items():
        try:
            _, stderr = proc.communicate(timeout=max(1.0, 150 - (time.monotonic() - started)))
        except subprocess.TimeoutExpired:
            for other, _, other_mark in runs.values():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(other.pid, signal.SIGKILL)
                other.communicate()
                _no_processes_left(other_mark, within=0)
            failed = Ledger(out / ".work" / "ledger.json", None, None).read()["failed"]
            pytest.fail(f"{name}: generate still ran after 150 s; the ledger said: {failed!r}")
        seconds = time.monotonic() - started
        _, _, expected_failure, expected_error = CASES[name]
        assert proc.returncode == 1, stderr[-3000:]
        ledger = out / ".work" / "ledger.json"
        failed = json.loads(ledger.read_text())["failed"] if ledger.exists() else None
        if expected_failure is None:
            assert failed is None
        else:
            assert expected_failure in failed
            assert "rerun" in stderr
        assert expected_error.format(failed=failed) in stderr
        assert not (out / ".complete").exists()
        assert seconds < 90, f"{name}: took {seconds:.0f} s"
        assert not _no_processes_left(mark), f"{name}: processes of the stage outlived it"


def test_an_unset_api_key_is_refused_before_anything_starts(tmp_path, monkeypatch, capsys):
    """The key's variable is checked before the output folder or distilabel's child exist:
    exit 2 naming the recipe field (it failed inside the child, after creating the output,
    as a 'teacher failure' that claimed a request had been sent)."""
    from tests.cli_helpers import run_main

    monkeypatch.delenv("TEACHER_API_KEY", raising=False)
    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))
    recipe = _recipe(tmp_path, f"http://127.0.0.1:{_free_port()}/v1")
    code, err = run_main(monkeypatch, capsys, "generate", str(recipe), "--out", str(tmp_path / "o"))
    assert code == 2, err
    assert "generate.teacher.api_key_env: environment variable TEACHER_API_KEY is not set" in err
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o*"))


def test_selects_placeholder_is_no_row_and_no_drop():
    """What `select` sends on when no question is left is skipped, not counted as a drop."""
    from feinschliff.generate.postprocess import rows_from_distiset
    from feinschliff.generate.select import PLACEHOLDER

    spec = GenerateSpec.model_validate(
        {
            "seeds": {"topics": "t.txt"},
            "teacher": {"kind": "openai", "base_url": "http://t/v1", "model": "t"},
        }
    )
    raw = [{"seed_id": "s1", "instructions": ["Wie?"]}]
    for leaf, pref in (("answers", None), ("preferences", {"num_generations": 2})):
        spec = spec.model_copy(update={"preference": pref and PreferenceSpec.model_validate(pref)})
        row = {**PLACEHOLDER, "generation": None, "generations": None, "chosen": None}
        result = rows_from_distiset({"instructions_raw": raw, leaf: [row]}, spec, "t", "t")
        assert (result.sft, result.preference) == ([], [])
        assert result.drops["sft"] == {} and result.drops["preference"] == {}
        assert result.drops["instructions"] == {"instruction_too_short": 1}


# --------------------------------------------------------------------------- stand-in child

# A child like the real one once the teacher has failed: leads its group, has started a
# worker, recorded the failure in the ledger, and then makes no progress.
HANGING_CHILD = textwrap.dedent(
    """
    import subprocess, sys, time
    from pathlib import Path
    from feinschliff.generate.child import _die_with_parent
    from feinschliff.generate.ledger import Ledger

    _die_with_parent(int(sys.argv[2]))
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    Path(sys.argv[1]).with_name("worker-started").touch()
    if sys.argv[3] == "fail":
        Ledger(Path(sys.argv[1]), None, None).fail("teacher t unavailable after 1 attempt(s)")
    time.sleep(600)
    """
)

# The stage: runs the stand-in child under the watchdog, prints what the watchdog returned.
STAGE = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    from feinschliff.generate.ledger import Ledger
    from feinschliff.generate.stage import _watch_child

    ledger = Ledger(Path(sys.argv[1]), None, None)
    ledger.reset()
    cmd = [sys.executable, "-c", sys.argv[2], sys.argv[1], str(os.getpid()), sys.argv[3]]
    with open(Path(sys.argv[1]).with_name("child.log"), "wb") as log:
        code, state = _watch_child(cmd, log, Path(log.name), ledger)
    print(json.dumps({"code": code, "failed": state and state["failed"]}), flush=True)
    """
)


def _stage(tmp_path: Path, mark: str, fail: bool) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            STAGE,
            str(tmp_path / "ledger.json"),
            HANGING_CHILD,
            "fail" if fail else "run",
        ],
        cwd=ROOT,
        env={**os.environ, MARK: mark},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_as_from_a_terminal,
    )


def _as_from_a_terminal() -> None:
    """The stage as a user starts it: Ctrl-C interrupts it. A test runner's worker (or a CI job
    started in the background) may pass SIGINT on ignored or blocked; the child would inherit
    that and never see the signal this test sends."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _wait_for(path: Path, proc: subprocess.Popen[str], within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.1)


@pytest.mark.timeout(120)
def test_a_child_that_hangs_after_a_teacher_failure_is_stopped_with_its_workers(tmp_path):
    mark = uuid.uuid4().hex
    started = time.monotonic()
    proc = _stage(tmp_path, mark, fail=True)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    result = json.loads(stdout)
    assert result["failed"] == "teacher t unavailable after 1 attempt(s)"
    assert result["code"] != 0
    assert time.monotonic() - started < stage.FAILED_QUIET_S + 20
    assert not _no_processes_left(mark), "the child or its worker outlived the stage"


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name
)
def test_an_interrupted_or_killed_stage_leaves_no_child_behind(tmp_path, sig):
    """SIGINT: KeyboardInterrupt in the stage, which stops the group; SIGTERM and SIGKILL:
    the stage dies at once, and the child ends its own group (parent-death signal)."""
    mark = uuid.uuid4().hex
    proc = _stage(tmp_path, mark, fail=False)
    _wait_for(tmp_path / "worker-started", proc)
    assert len(_processes(mark)) == 3  # stage, child, worker
    proc.send_signal(sig)
    proc.communicate(timeout=30)
    assert proc.returncode != 0
    assert not _no_processes_left(mark), "the child or its worker outlived the stage"
