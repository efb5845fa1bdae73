"""Live pulls: Langfuse over its public REST API (cursor paging), Argilla through its SDK.

A Langfuse pull is incremental. Each source has a watermark in the cache dir
(``$FEINSCHLIFF_HOME/ingest/watermarks/<source>.json``): a scheduled run fetches only what is
newer, and appends it to the source's local mirror (``$FEINSCHLIFF_HOME/ingest/mirror/<source>/``),
which the ingest then reads in full, so the dataset always covers all feedback pulled so far.
The watermark of observations and that of scores are each saved once their kind was read to
the end; re-fetched rows are stored only when they changed, replacing their older copy
(``pull_versions``: one version per row, the newest). A kind's pages wait beside the mirror
(``.<source>.partial/``, never read) until it was read to its end, then move into the pull's
batch folder: a pull that fails part-way, or is killed, adds nothing that later ingests read;
the next pull of the source goes on from its last saved page (``pull_resume``) and removes
other leftovers (pulls of one source take turns, under an flock). The ingest reads a snapshot
of the mirror taken under that lock
(``pull_snapshot``; ``PullResult.release`` removes it): a later pull compacts the mirror in
place. A pull that finds nothing, into a mirror that holds nothing, fails naming the project
the keys read. A mirror deleted while its watermark stayed is pulled in full again. A Langfuse
mirror belongs to one project: the server URL is the same for every project of an instance
(Langfuse Cloud), only the keys choose one (``langfuse_http.project_identity``), and each
source names the secrets holding its keys (``public_key_secret`` / ``secret_key_secret``,
Argilla ``api_key_secret``), so use cases on one Prefect server can read their own projects.

- Langfuse: ``GET /api/public/v2/observations`` (``fromStartTime``) and
  ``GET /api/public/v3/scores`` (``fromTimestamp``), each from the watermark minus a lookback
  (Langfuse ingests asynchronously and stamps come from the clients), once a day the scores
  from a week before it (the API cannot filter by ``updatedAt``: an edited score keeps its
  ``timestamp``, a backfilled one has an old one), followed through ``meta.cursor``. A
  watermark never passes the time the pull started: one client with a clock ahead must not
  hide everyone else's newer rows. Edits and late rows older than those windows are missed.
  Langfuse Cloud and self-hosted v4 serve both APIs; where a self-hosted v3 lacks one (404 or
  501 on its first page), that kind is read through the route the v3 SDKs read, page by page
  (``pull_legacy``), with the same filters, watermarks and compaction.
- Argilla: a full snapshot on every pull: the records with at least one submitted response,
  with responses (status kept per response), as nested JSONL beside the dataset settings; the
  snapshot replaces the mirror's older ones once it is complete. Not incremental on purpose:
  Argilla's search index keeps a record's ``updated_at`` when a response is submitted, edited
  or discarded (the server updates only the ``responses`` of the indexed record), so an
  ``updated_at`` watermark lost every response given after the record's first pull, and an
  older copy in the mirror kept answers that were since discarded or deleted. Annotated
  datasets are human-sized; a snapshot costs one paged search per run. An empty snapshot
  where the last one had records is refused (the previous one is kept): a wrong workspace or
  a key that lost its permissions must not wipe the mirror. The newest record
  ``updated_at`` is still recorded as the watermark, for the manifest.

Credentials: environment variables or Prefect Secret blocks only (``credentials``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from feinschliff.artifacts import file_lock
from feinschliff.ingest.credentials import MissingCredentials, require_sourced
from feinschliff.ingest.langfuse_errors import api_missing
from feinschliff.ingest.langfuse_http import (
    EndpointMissing,
    KeysRefused,
    PullFailed,
    cursor_pages,
    project_identity,
)
from feinschliff.ingest.pull_legacy import kind_pages
from feinschliff.ingest.pull_resume import Resumes, forget_stopped, partial_dir
from feinschliff.ingest.pull_snapshot import Snapshot, take_snapshot
from feinschliff.ingest.pull_versions import (
    RESCANNED,
    Compacted,
    check_mirror,
    compact,
    describe_changes,
    drop_older,
    iso,
    scores_since,
)
from feinschliff.ingest.pull_versions import advance as _advance  # tests reach them here
from feinschliff.ingest.pull_versions import since as _since
from feinschliff.specs.feedback import ArgillaPull, FeedbackSource, LangfusePull

log = logging.getLogger(__name__)
OBS_FIELDS = "core,basic,time,io"  # what the ingest reads (no model lookup, no metadata)
SCORE_FIELDS = "details,annotation,subject"


@dataclass
class PullResult:
    mirror: Path  # what the ingest reads: a Langfuse mirror's snapshot, released after reading
    watermark_before: dict[str, str]
    watermark_after: dict[str, str]
    fetched: dict[str, int] = field(default_factory=dict)  # rows read from the API
    notes: list[str] = field(default_factory=list)
    stored: dict[str, dict[str, int]] = field(default_factory=dict)  # kind: new/unchanged/updated
    snapshot: Snapshot | None = None

    def release(self) -> None:  # once the ingest read the snapshot, or failed
        if self.snapshot is not None:
            self.snapshot.close()


class EmptySnapshot(RuntimeError):
    """An Argilla pull found nothing where the previous one found records (kept)."""


def state_dir() -> Path:
    """Mirrors, watermarks and pull locks. The mirrors hold raw, unscrubbed feedback (PII):
    the folder is the owner's only, whatever the umask (a shared home or mount)."""
    from feinschliff.models import feinschliff_home

    folder = feinschliff_home() / "ingest"
    with contextlib.suppress(OSError):  # read-only, or someone else's: theirs to protect
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o700)
    return folder


# How a pull fetches, not what: changing one must not start a new mirror and a full re-pull.
TRANSPORT_FIELDS = frozenset({"page_limit", "timeout_s", "batch_size"})
# Which secrets hold the keys: what they read is the identity in the key (mirrors named before
# these fields existed keep their names).
KEY_NAME_FIELDS = frozenset({"public_key_secret", "secret_key_secret", "api_key_secret"})


def source_key(source: FeedbackSource, url: str, identity: str | None = None) -> str:
    """The mirror's name: the tool, the server, what is asked for (dataset, filters) and what
    the keys read: the Langfuse project (one URL serves every project of an instance), the
    Argilla dataset's id (without a workspace, the key's user picks it)."""
    assert source.pull is not None
    ident = [source.kind, url, source.pull.model_dump(exclude=TRANSPORT_FIELDS | KEY_NAME_FIELDS)]
    return _digest([*ident, identity] if identity else ident)


def _legacy_key(source: FeedbackSource, url: str) -> str:
    """The name mirrors had before transport settings left the key (moved on first use)."""
    assert source.pull is not None
    return _digest([source.kind, url, source.pull.model_dump(exclude=set(KEY_NAME_FIELDS))])


def _digest(ident: list[Any]) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def pull_source(source: FeedbackSource) -> PullResult:
    if isinstance(source.pull, LangfusePull):
        return _pull_langfuse(source, source.pull)
    assert isinstance(source.pull, ArgillaPull)
    from feinschliff.ingest.pull_argilla import pull_argilla

    return pull_argilla(source, source.pull)


def _paths(
    source: FeedbackSource, url: str, identity: str | None = None
) -> tuple[Path, Path, list[str]]:
    """The source's mirror and watermark, one pulled by an older feinschliff taken over, and
    the notes for the manifest (a Langfuse mirror taken over: ``TAKEN_OVER``)."""
    mirror, mark = _key_paths(source_key(source, url, identity))
    if mirror.exists() or mark.exists():
        return mirror, mark, []
    # A mirror named by an older key: before the identity was in it, before transport settings
    # left it. Taken over (renamed) unless its watermark names another identity.
    older = [source_key(source, url)] if identity else []
    for old_mirror, old_mark in map(_key_paths, [*older, _legacy_key(source, url)]):
        if old_mirror == mirror or not (old_mirror.exists() or old_mark.exists()):
            continue
        if _load_watermark(old_mark).get("identity", identity) != identity:
            continue
        if old_mirror.exists():
            old_mirror.rename(mirror)
        if old_mark.exists():
            old_mark.rename(mark)
        if source.kind == "langfuse" and "identity" not in _load_watermark(mark):
            note = TAKEN_OVER.format(mirror=mirror, mark=mark, project=identity)
            log.warning("%s", note)
            return mirror, mark, [note]
        break
    return mirror, mark, []


# A Langfuse mirror named before the project was in its name may hold other projects' feedback
# (their use cases pulled the same URL and filters into it); only a person can tell.
TAKEN_OVER = (
    "langfuse pull: the mirror {mirror} was pulled by an older feinschliff, which named it by the "
    "server and filters only, and is now this project's ({project}). If use cases with other "
    "projects' keys pulled the same URL and filters before, it holds their feedback too: delete "
    "{mirror} and {mark}, and the next pull fetches this project's feedback anew"
)


def _key_paths(key: str) -> tuple[Path, Path]:
    return state_dir() / "mirror" / key, state_dir() / "watermarks" / f"{key}.json"


def _load_watermark(path: Path) -> dict[str, str]:
    return json.loads(path.read_text()) if path.exists() else {}


def _save_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    text = json.dumps(data, ensure_ascii=False, indent=2) + "\n"
    try:
        raw = text.encode()
    except UnicodeEncodeError:  # a lone surrogate (legal JSON) stays an escape: its row is
        raw = (json.dumps(data, indent=2) + "\n").encode()  # quarantined when read, not the pull
    tmp.write_bytes(raw)
    tmp.replace(path)


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


# --------------------------------------------------------------------------- langfuse


def langfuse_url(pull: LangfusePull) -> str:
    url = pull.base_url or os.environ.get("LANGFUSE_BASE_URL") or os.environ.get("LANGFUSE_HOST")
    if not url:
        raise MissingCredentials(
            "Langfuse pull needs a server URL: feedback.sources[].pull.base_url or LANGFUSE_BASE_URL"
        )
    return url.rstrip("/")


def _langfuse_hint(pull: LangfusePull) -> str:
    """Where the server URL came from, for error messages (keys are named only on a 401/403:
    a down server or a 500 is no key problem)."""
    if pull.base_url:
        origin = "feedback.sources[].pull.base_url"
    else:
        origin = "LANGFUSE_BASE_URL" if os.environ.get("LANGFUSE_BASE_URL") else "LANGFUSE_HOST"
    return (
        f"Check the server URL (set by {origin}) and that Langfuse is up and reachable from "
        "here; the watermark is unchanged"
    )


def read_langfuse_keys(pull: LangfusePull) -> tuple[tuple[str, str], str]:
    """The key pair the recipe names and, for messages, where each came from (never a value)."""
    public, public_from = require_sourced(pull.public_key_secret, "Langfuse pull")
    secret, secret_from = require_sourced(pull.secret_key_secret, "Langfuse pull")
    return (public, secret), f"public key: {public_from}; secret key: {secret_from}"


def _pull_langfuse(source: FeedbackSource, pull: LangfusePull) -> PullResult:
    import httpx

    url = langfuse_url(pull)
    hint = _langfuse_hint(pull)
    auth, keys = read_langfuse_keys(pull)
    try:
        client = httpx.Client(base_url=url, auth=auth, timeout=pull.timeout_s)
    except httpx.InvalidURL as exc:
        raise PullFailed(f"Langfuse pull: {url!r} is no valid URL ({exc}). {hint}") from exc
    try:
        with client:
            project = project_identity(client, auth[0], hint)
            mirror, mark_file, taken = _paths(source, url, project)
            # one pull of a source at a time (a scheduled and a manual run): each would remove
            # the other's pages as a killed pull's; the flock dies with its holder
            with file_lock(state_dir() / "locks" / f"{mirror.name}.lock"):
                before, notes = check_mirror(mirror, _load_watermark(mark_file))
                if notes:  # the mirror was deleted (an erasure?): so are a stopped pull's pages
                    forget_stopped(partial_dir(mirror))
                notes = [*taken, *notes]
                after = {**before, "identity": project}
                fetched, stored, changes = _fetch_langfuse(
                    client, pull, mirror, before, after, hint, mark_file
                )
                notes = [*notes, *changes]
                empty = not any(fetched.values()) and not _has_rows(mirror)
                snapshot = None if empty else take_snapshot(mirror, state_dir() / "reading")
    except KeysRefused as exc:
        raise MissingCredentials(
            f"{exc}: check the project's API keys ({keys}), named by "
            "feedback.sources[].pull.public_key_secret / secret_key_secret"
        ) from exc
    if snapshot is None:
        raise PullFailed(_describe_empty_project(url, project, keys, pull))
    log.info("langfuse pull %s: %s (watermark %s -> %s)", url, fetched, before, after)
    return PullResult(snapshot.path, before, after, fetched, notes, stored, snapshot)


def _describe_empty_project(url: str, project: str, keys: str, pull: LangfusePull) -> str:
    which = f"project {project.removeprefix('project:')}"
    if project.startswith("key:"):  # a server without GET /api/public/projects
        which = f"the project of the public key (digest {project.removeprefix('key:')})"
    asked = ", ".join(
        f"{k} {v!r}"
        for k, v in (("name", pull.name), ("environment", pull.environment))
        if v is not None
    )
    return (
        f"Langfuse pull: {url} answered, but the keys read {which}, which holds no "
        f"{pull.observation_type} observations{f' with {asked}' if asked else ''} and no "
        f"scores ({keys}): are these the keys of this use case's project (Langfuse: Settings, "
        "API Keys)? Else check feedback.sources[].pull.observation_type, .name and .environment"
    )


def _has_rows(mirror: Path) -> bool:
    for page in mirror.glob("*/*-page-*.json"):
        try:
            if json.loads(page.read_bytes()).get("data"):
                return True
        except (OSError, ValueError, AttributeError):
            return True  # not ours to judge: the reader quarantines it and says so
    return False


def _fetch_langfuse(
    client: Any,
    pull: LangfusePull,
    mirror: Path,
    before: dict[str, str],
    after: dict[str, str],
    hint: str,
    mark_file: Path,
) -> tuple[dict[str, int], dict[str, dict[str, int]], list[str]]:
    """Fetch observations, then scores, into a new batch folder of ``mirror``; each kind's
    pages are written beside the mirror and moved into the batch once that kind was read to its
    end, then its watermark is saved, so a pull that fails on the scores (a rate limit) keeps
    the observations and the next run goes on from there, and a failed kind leaves nothing for
    later ingests to read (each retry of a failing pull added its partial pages before)."""
    started, stamp = datetime.now(UTC), _stamp()
    batch, who = mirror / stamp, f"{client.base_url} ({after['identity']})"
    resumes = Resumes(partial_dir(mirror), started, _save_json, who)  # a stopped pull's kinds
    fetched = {"observations": 0, "scores": 0}
    obs_params: dict[str, Any] = {"fields": OBS_FIELDS, "limit": pull.page_limit}
    obs_params["type"] = pull.observation_type
    score_params: dict[str, Any] = {"fields": SCORE_FIELDS, "limit": min(pull.page_limit, 100)}
    for params in (obs_params, score_params):
        if pull.environment:
            params["environment"] = pull.environment
    if pull.name:
        obs_params["name"] = pull.name
    if obs_since := _since(before.get("observations")):
        obs_params["fromStartTime"] = obs_since
    scores_from, rescan = scores_since(before, resumes.started("scores"))
    if scores_from:
        score_params["fromTimestamp"] = scores_from
    changed: dict[str, Compacted] = {}
    routes: list[str] = []  # a v3 server's page-based routes, when they served (pull_legacy)
    for kind, path, params, stamp_key in (
        ("observations", "/api/public/v2/observations", obs_params, "startTime"),
        ("scores", "/api/public/v3/scores", score_params, "timestamp"),
    ):
        run, done = resumes.run(kind, path, params, stamp, before.get(kind)), False
        try:
            via = {"client": client, "path": path, "params": params, "hint": hint}
            read = partial(kind_pages, **via, notes=routes, project=after["identity"])
            for n, page in run.pages(read, cursor_pages):
                rows = page.get("data") or []
                run.rows += len(rows)
                stamps = [r.get(stamp_key) for r in rows if isinstance(r, dict)]
                run.mark = _advance(run.mark, stamps, run.started)  # the original start
                _save_json(run.folder / f"{kind}-page-{n}.json", page)
                run.saved(n, page)  # where a stopped pull goes on
            fetched[kind] = run.rows
            after.update({kind: run.mark} if run.mark else {})  # none where no row had a stamp
            changed[kind] = compact(run.folder, mirror, kind, _save_json)
            if any(run.folder.glob("*.json")):  # pages with new or changed rows only
                _place(run.folder, batch)
            drop_older(changed[kind].removed, _save_json)  # after: never no copy
            done = True
        except EndpointMissing as exc:  # a wrong base URL, or a Langfuse without that API
            failure = None if run.read_now else api_missing(client, kind, exc, after["identity"])
            if failure:  # a 404 after pages came (a proxy mid-deploy) is said as it is
                raise failure from exc
            raise
        finally:
            run.close(done)  # a kind stopped on the cursor API keeps its pages to resume
        if kind == "scores" and rescan:
            after[RESCANNED] = iso(run.started)
        _save_json(mark_file, after)
    stored = {kind: c.counts() for kind, c in changed.items()}
    return fetched, stored, [*resumes.notes, *routes, *describe_changes(changed)]


def _place(partial: Path, batch: Path) -> None:
    """Move a kind's complete pages into the mirror's batch folder (the first kind's folder
    becomes the batch at once; the next kind's pages join it)."""
    if not batch.exists():
        batch.parent.mkdir(parents=True, exist_ok=True)
        partial.replace(batch)
        return
    for page in sorted(partial.iterdir()):
        page.replace(batch / page.name)
