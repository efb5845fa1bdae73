"""Ctrl-C during `registry promote` while a vLLM replica loads the version (the registry's
locks held): exit 130 with one line, the aliases and the audit log as they were, the locks
free for the rerun, which converges."""

from __future__ import annotations

from feinschliff import registry
from feinschliff.cli import INTERRUPTED
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
