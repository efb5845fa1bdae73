"""Ctrl-C (and SIGTERM) during `registry promote` while a vLLM replica loads the version (the registry's
locks held): exit 130 with one line, the aliases and the audit log as they were, the locks
free for the rerun, which converges."""

from __future__ import annotations

import os
import signal
import time

from feinschliff import cli, registry
from feinschliff.cli import INTERRUPTED, TERMINATED
from feinschliff.serving import deploy
from tests.cli_helpers import run_main
from tests.unit.test_serving_deploy import DEMO, _sets, live  # noqa: F401  (fixture)


def test_ctrl_c_while_a_replica_loads_changes_nothing_and_the_rerun_works(
    live,  # noqa: F811
    tmp_path,
    monkeypatch,
    capsys,
):
    root, (v1, v2, _), fake, spec, _ = live
    args = ["--recipe", str(DEMO), *_sets(tmp_path, spec, root)]
    assert run_main(monkeypatch, capsys, "registry", "promote", "s", v1, *args)[0] == 0
    aliases, audit = registry.read_aliases(root, "s"), registry.audit_log(root, "s")
    served = dict(fake.stored)
    answer = fake.handle

    def ctrl_c_during_load(request):
        if request.url.path == "/v1/load_lora_adapter":
            raise KeyboardInterrupt
        return answer(request)

    fake.handle = ctrl_c_during_load
    code, err = run_main(monkeypatch, capsys, "registry", "promote", "s", v2, *args)
    assert code == 130 and err.strip().splitlines()[-1] == INTERRUPTED, err
    assert "Traceback" not in err
    assert registry.read_aliases(root, "s") == aliases
    assert registry.audit_log(root, "s") == audit
    assert fake.stored == served  # production still served as before

    fake.handle = answer
    code, err = run_main(monkeypatch, capsys, "registry", "promote", "s", v2, *args)
    assert code in (0, None), err
    assert registry.read_aliases(root, "s")["production"] == v2
    assert fake.stored["s"]["path"] == deploy.stage_files(root, "s", v2, spec)


def test_sigterm_while_a_replica_loads_unwinds_like_ctrl_c(
    live,  # noqa: F811
    tmp_path,
    monkeypatch,
    capsys,
):
    """`docker stop` / Kubernetes send SIGTERM: the command cleans up as for Ctrl-C (nothing
    moved, production still served), says so in one line and exits 143; the handler is gone
    once main() returns."""
    root, (v1, v2, _), fake, spec, _ = live
    args = ["--recipe", str(DEMO), *_sets(tmp_path, spec, root)]
    assert run_main(monkeypatch, capsys, "registry", "promote", "s", v1, *args)[0] == 0
    aliases, served = registry.read_aliases(root, "s"), dict(fake.stored)
    answer = fake.handle

    def sigterm_during_load(request):
        if request.url.path == "/v1/load_lora_adapter":
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs before this returns
        return answer(request)

    fake.handle = sigterm_during_load
    before = signal.getsignal(signal.SIGTERM)
    code, err = run_main(monkeypatch, capsys, "registry", "promote", "s", v2, *args)
    assert code == 143 and err.strip().splitlines()[-1] == TERMINATED, err
    assert "Traceback" not in err
    assert registry.read_aliases(root, "s") == aliases
    assert fake.stored == served
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_forked_worker_still_ends_on_sigterm():
    """Worker processes forked from the command inherit the handler: they must end as
    before, not raise into the middle of their task."""
    pid = os.fork()
    if pid == 0:  # the child: a worker of some other main process
        try:
            cli._main_pid = os.getppid()
            signal.signal(signal.SIGTERM, cli._terminate)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        finally:
            os._exit(7)  # reached only if SIGTERM did not end it
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM
