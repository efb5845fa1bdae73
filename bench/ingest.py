"""Benchmark: `feinschliff ingest` vs a naive json.load + pandas ingest of Langfuse exports.

    .venv/bin/python bench/ingest.py                    # 100k and 1M observations
    .venv/bin/python bench/ingest.py --sizes 10000      # quick look
    .venv/bin/python bench/ingest.py --workdir /big/disk --keep

For each size N it generates N GENERATION observations as ``GET /api/public/v2/observations``
pages (1000 rows, the API's maximum; input/output as JSON strings like the real v2 API) and their
scores as ``GET /api/public/v3/scores`` pages (100 rows): ~35 % get a thumbs up/down (BOOLEAN),
~5 % a CORRECTION, ~30 % a NUMERIC judge score; the texts are German support dialogues drawn
from templates with random details, ~2 % exact repeats. Then, each in a fresh process, one
after the other on the same machine:

- ``feinschliff``: ``feinschliff ingest --source langfuse:DIR --pii off --out OUT`` (streaming;
  default dedup incl. MinHash near-dups, decontamination against the bundled eval sets, worker
  processes for derivation/hashing/scrubbing: one per core);
- ``naive``: ``json.load`` every page into lists, ``pandas.DataFrame``, decode input/output,
  merge scores, derive SFT rows (correction, else thumbs-up answer) and KTO rows, exact
  ``drop_duplicates``, ``to_json(lines=True)``: what a first script usually looks like. The
  issue's throughput goal (>= 3x) is measured against this one;
- ``naive-same-job`` (``--pii off`` only): the same script doing the rest of the stage's job the
  first-script way, for comparison: preference rows (correction vs answer), near-duplicates
  with datasketch ``MinHash`` + ``MinHashLSH`` per output (the stage's defaults: 5-word
  shingles, 64 permutations, threshold 0.85) and the bundled eval sets' 13-grams in a set.

``--pii redact`` runs both with Presidio (the naive one on every output text, sequentially);
use it with small sizes only. Peak RSS comes from ``os.wait4`` (the child's own maximum resident set); records/s is N over the
wall time of the process. Printed: a table per run and the ratios the ingest issue asks for
(RSS at the largest N within 1.2x of the smallest; throughput >= 3x the naive baseline).
Not run in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SYSTEM = (
    "Du bist der digitale Kundenservice der Stadtwerke Feinschliff. Antworte freundlich, korrekt "
    "und auf Deutsch in höchstens drei Sätzen."
)
TOPICS = [
    ("meinen Abschlag ändern", "im Kundenportal unter „Verträge“ › „Abschlag anpassen“"),
    ("meinen Zählerstand melden", "in der Feinschliff-App unter „Zählerstand melden“"),
    ("meine Bankverbindung ändern", "im Kundenportal unter „Zahlungsweise“"),
    ("meinen Vertrag kündigen", "schriftlich oder im Kundenportal unter „Verträge“"),
    ("einen Umzug melden", "im Kundenportal unter „Umzug melden“"),
    ("eine Rechnung erklärt bekommen", "telefonisch oder im Chat"),
    ("Ökostrom bestellen", "im Kundenportal unter „Tarif wechseln“"),
    ("eine Störung melden", "rund um die Uhr bei der Störungsnummer"),
]
OPENERS = ["Hallo,", "Guten Tag,", "Moin,", "Servus,", "Liebes Team,", ""]
DETAILS = [
    "zum {d}. {m}",
    "ab nächstem Monat",
    "für die Wohnung in der {s}",
    "für Kundennummer {n}",
    "wegen meiner Nachzahlung von {e} Euro",
    "nach dem Umzug nach {c}",
]
STREETS = ["Lindenstraße", "Hauptstraße", "Bahnhofstraße", "Gartenweg", "Schulstraße", "Am Markt"]
CITIES = ["Leipzig", "Köln", "Hamburg", "Freiburg", "Kassel", "Rostock", "Passau"]
MONTHS = ["Januar", "Februar", "März", "April", "Mai", "Juni", "Juli", "August"]
EXTRAS = [
    "Die Änderung gilt ab dem nächsten Fälligkeitstermin.",
    "Sie erhalten eine Bestätigung per Post.",
    "Halten Sie bitte Ihre Kundennummer bereit.",
    "Das dauert etwa {n} Werktage.",
    "Bei Fragen erreichen Sie uns von 8 bis {h} Uhr.",
    "Ihr Abschlag bleibt bis dahin unverändert.",
]


# --------------------------------------------------------------------------- data


def _texts(rng: random.Random) -> tuple[str, str, str]:
    topic, where = rng.choice(TOPICS)
    detail = rng.choice(DETAILS).format(
        d=rng.randint(1, 28),
        m=rng.choice(MONTHS),
        s=rng.choice(STREETS),
        n=rng.randint(10**6, 10**7),
        e=rng.randint(5, 900),
        c=rng.choice(CITIES),
    )
    prompt = f"{rng.choice(OPENERS)} ich möchte {topic} {detail}. Wie geht das?".strip()
    extras = " ".join(
        e.format(n=rng.randint(2, 14), h=rng.randint(16, 20)) for e in rng.sample(EXTRAS, 2)
    )
    good = f"Gerne helfe ich Ihnen: Das geht {where}. {extras}"
    bad = rng.choice(["Keine Ahnung.", "Please contact support.", f"Das geht nicht {detail}."])
    return prompt, good, bad


def generate(folder: Path, n: int, seed: int = 7) -> None:
    import orjson

    rng = random.Random(seed)
    folder.mkdir(parents=True)
    obs_page, score_page, pages, spages = [], [], 0, 0
    repeat: list[tuple[str, str, str]] = []
    for i in range(n):
        if repeat and rng.random() < 0.02:
            prompt, good, bad = rng.choice(repeat)
        else:
            prompt, good, bad = _texts(rng)
            if len(repeat) < 1000:
                repeat.append((prompt, good, bad))
        up = rng.random() < 0.6
        oid, tid = f"{i:016x}", f"{i:032x}"
        start = f"2026-10-{1 + i % 28:02d}T{(i // 3600) % 24:02d}:{(i // 60) % 60:02d}:{i % 60:02d}.000Z"
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]
        obs_page.append(
            {
                "id": oid,
                "traceId": tid,
                "startTime": start,
                "endTime": start,
                "projectId": "p1",
                "parentObservationId": None,
                "type": "GENERATION",
                "name": "support-answer",
                "level": "DEFAULT",
                "statusMessage": None,
                "version": None,
                "environment": "production",
                "input": json.dumps(messages),
                "output": json.dumps({"role": "assistant", "content": good if up else bad}),
                "metadata": {"channel": "kundenportal-chat"},
                "model": "support-de-lora-v3",
                "modelParameters": {"temperature": 0.3},
                "usageDetails": {"input": 55, "output": 40, "total": 95},
                "userId": f"u-{rng.randint(0, n // 5):06x}",
                "sessionId": f"s-{i // 3:x}",
                "traceName": "support-chat",
                "tags": ["kundenservice", "de"],
                "latency": 1.5,
            }
        )
        r = rng.random()
        if r < 0.35:
            score_page.append(_score(f"b{i}", oid, tid, "user-feedback", "BOOLEAN", up, start))
        elif r < 0.40:
            score_page.append(_score(f"c{i}", oid, tid, "output", "CORRECTION", good, start))
        if rng.random() < 0.3:
            score_page.append(
                _score(f"n{i}", oid, tid, "helpfulness", "NUMERIC", round(rng.random(), 2), start)
            )
        if len(obs_page) == 1000 or i == n - 1:
            pages += 1
            (folder / f"observations-page-{pages:05d}.json").write_bytes(
                orjson.dumps({"data": obs_page, "meta": {}})
            )
            obs_page = []
        while len(score_page) >= 100 or (i == n - 1 and score_page):
            spages += 1
            chunk, score_page = score_page[:100], score_page[100:]
            (folder / f"scores-page-{spages:05d}.json").write_bytes(
                orjson.dumps({"data": chunk, "meta": {"limit": 100}})
            )


def _score(sid, oid, tid, name, dtype, value, when) -> dict:
    return {
        "id": sid,
        "projectId": "p1",
        "name": name,
        "dataType": dtype,
        "value": value,
        "source": "API",
        "timestamp": when,
        "environment": "production",
        "createdAt": when,
        "updatedAt": when,
        "comment": None,
        "configId": None,
        "metadata": {},
        "authorUserId": None,
        "queueId": None,
        "subject": {"kind": "observation", "id": oid, "traceId": tid},
    }


# --------------------------------------------------------------------------- the naive baseline


def naive(folder: Path, out: Path, pii: str = "off", same_job: bool = False) -> None:
    import pandas as pd

    observations, scores = [], []
    for f in sorted(folder.glob("observations-page-*.json")):
        with f.open() as fh:
            observations += json.load(fh)["data"]
    for f in sorted(folder.glob("scores-page-*.json")):
        with f.open() as fh:
            scores += json.load(fh)["data"]
    obs = pd.DataFrame(observations)
    sc = pd.DataFrame(scores)
    sc["obs"] = sc["subject"].map(lambda s: s["id"])
    obs = obs[obs["type"] == "GENERATION"].copy()
    obs["prompt"] = obs["input"].map(json.loads)
    obs["answer"] = obs["output"].map(lambda s: json.loads(s)["content"])
    thumbs = sc[sc["dataType"] == "BOOLEAN"][["obs", "value"]].rename(columns={"value": "up"})
    fixes = sc[sc["dataType"] == "CORRECTION"][["obs", "value"]].rename(columns={"value": "fix"})
    df = obs.merge(thumbs, left_on="id", right_on="obs", how="left").merge(
        fixes, left_on="id", right_on="obs", how="left"
    )
    target = df["fix"].where(df["fix"].notna(), df["answer"].where(df["up"] == True))  # noqa: E712
    sft = df[target.notna()].assign(target=target[target.notna()])
    sft_rows = pd.DataFrame(
        {
            "messages": [
                p + [{"role": "assistant", "content": t}]
                for p, t in zip(sft["prompt"], sft["target"], strict=True)
            ]
        }
    )
    sft_rows["key"] = sft_rows["messages"].map(json.dumps)
    sft_rows = sft_rows.drop_duplicates("key").drop(columns="key")
    kto = df[df["up"].notna()]
    kto_rows = pd.DataFrame(
        {
            "prompt": kto["prompt"],
            "completion": kto["answer"].map(lambda a: [{"role": "assistant", "content": a}]),
            "label": kto["up"].astype(bool),
        }
    )
    kto_rows["key"] = kto_rows.apply(
        lambda r: json.dumps([r["prompt"], r["completion"], r["label"]]), axis=1
    )
    kto_rows = kto_rows.drop_duplicates("key").drop(columns="key")
    if pii != "off":  # Presidio on every message text of every output row, one after the other
        scrub = _presidio(pii)
        sft_rows["messages"] = sft_rows["messages"].map(
            lambda ms: [{**m, "content": scrub(m["content"])} for m in ms]
        )
        for col in ("prompt", "completion"):
            kto_rows[col] = kto_rows[col].map(
                lambda ms: [{**m, "content": scrub(m["content"])} for m in ms]
            )
    out.mkdir(parents=True, exist_ok=True)
    if same_job:
        pref = df[df["fix"].notna()]
        pref_rows = pd.DataFrame(
            {
                "prompt": pref["prompt"],
                "chosen": pref["fix"].map(lambda a: [{"role": "assistant", "content": a}]),
                "rejected": pref["answer"].map(lambda a: [{"role": "assistant", "content": a}]),
            }
        )
        keep = _near_dedup_and_decontaminate([sft_rows, kto_rows, pref_rows])
        sft_rows, kto_rows, pref_rows = (
            rows[k] for rows, k in zip([sft_rows, kto_rows, pref_rows], keep, strict=True)
        )
        pref_rows.to_json(out / "preference.jsonl", orient="records", lines=True, force_ascii=False)
    sft_rows.to_json(out / "sft.jsonl", orient="records", lines=True, force_ascii=False)
    kto_rows.to_json(out / "kto.jsonl", orient="records", lines=True, force_ascii=False)


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def _near_dedup_and_decontaminate(frames: list) -> list[list[bool]]:
    """The same-job baseline's rest, the way a first script does it: datasketch MinHash +
    MinHashLSH over 5-word shingles (the stage's defaults: 64 permutations, threshold 0.85) and
    a set of the bundled eval sets' 13-grams, one row after the other."""
    from datasketch import MinHash, MinHashLSH

    grams: set[tuple[str, ...]] = set()
    for f in sorted((ROOT / "evals" / "lm_eval_tasks").glob("*.jsonl")):
        for line in f.read_text().splitlines():
            for key, value in json.loads(line).items():
                if isinstance(value, str) and key != "id":
                    words = value.lower().split()
                    grams.update(_ngrams(words, 13))
    masks, n = [], 0
    for frame in frames:  # near-dups within each output, as the stage counts them
        lsh, mask = MinHashLSH(threshold=0.85, num_perm=64), []
        for row in frame.to_dict("records"):
            msgs = row.get("messages") or row["prompt"] + (row.get("completion") or []) + (
                row.get("chosen") or []
            ) + (row.get("rejected") or [])
            words = "\n".join(m["content"] for m in msgs if m["role"] != "system").lower().split()
            if any(g in grams for g in _ngrams(words, 13)):
                mask.append(False)
                continue
            m = MinHash(num_perm=64)
            m.update_batch([" ".join(g).encode() for g in _ngrams(words, 5)])
            if lsh.query(m):
                mask.append(False)
                continue
            lsh.insert(str(n), m)
            n += 1
            mask.append(True)
        masks.append(mask)
    return masks


def _presidio(mode: str):
    """The same Presidio engines feinschliff builds, called on every text (no pre-filter)."""
    from feinschliff.pii import _engines

    analyzer, anonymizer = _engines()

    def scrub(text: str) -> str:
        found = analyzer.analyze(text=text, language="de", score_threshold=0.4)
        return anonymizer.anonymize(text=text, analyzer_results=found).text if found else text

    return scrub


# --------------------------------------------------------------------------- measuring


def measure(cmd: list[str], env: dict[str, str]) -> tuple[float, float, float]:
    """(wall seconds, peak RSS MiB, CPU seconds) of one child process; CPU includes its worker
    processes (``wait4`` adds the descendants the child waited for)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cmd[:4]} failed: {err[-2000:]}")
    return wall, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep generated data and outputs")
    parser.add_argument(
        "--pii",
        choices=["off", "redact"],
        default="off",
        help="PII mode for both (redact: Presidio; slow, use small sizes)",
    )
    parser.add_argument(
        "--skip-naive-above",
        type=int,
        default=None,
        help="skip the naive baselines above this size (they hold everything in memory)",
    )
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="feinschliff-bench-"))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "FEINSCHLIFF_HOME": str(work / "home"),
        "HF_HUB_OFFLINE": "1",
        "FEINSCHLIFF_LOG_LEVEL": "WARNING",
        # compiled bytecode in a private cache, warmed once: imports cost the same for both
        "PYTHONPYCACHEPREFIX": str(work / "pycache"),
    }
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    warm = "import feinschliff.cli, feinschliff.ingest.stage, datasketch, pandas, orjson"
    subprocess.run([sys.executable, "-c", warm], env=env, check=True)
    results = []
    try:
        for n in args.sizes:
            data = work / f"langfuse-{n}"
            t = time.perf_counter()
            generate(data, n)
            size = sum(p.stat().st_size for p in data.iterdir()) / 2**20
            print(
                f"generated {n:,} observations ({size:,.0f} MiB) in {time.perf_counter() - t:.0f} s",
                flush=True,
            )
            ours = [
                sys.executable,
                "-m",
                "feinschliff.cli",
                "ingest",
                "--source",
                f"langfuse:{data}",
                "--pii",
                args.pii,
                "--out",
                str(work / f"out-{n}"),
            ]
            wall, rss, cpu = measure(ours, env)
            results.append(("feinschliff", n, wall, rss, cpu))
            print(
                f"  feinschliff:   {wall:6.1f} s  {n / wall:10,.0f} records/s  peak RSS {rss:8,.0f} MiB"
                f"  CPU {cpu:6.1f} s",
                flush=True,
            )
            baselines = [("naive", "subset")]
            if args.pii == "off":
                baselines.append(("naive-same-job", "same-job"))
            for tool, job in baselines:
                if args.skip_naive_above is not None and n > args.skip_naive_above:
                    break
                base = [sys.executable, __file__, "--naive", str(data), str(work / f"{tool}-{n}")]
                wall, rss, cpu = measure([*base, args.pii, job], env)
                results.append((tool, n, wall, rss, cpu))
                print(
                    f"  {tool + ':':15s}{wall:6.1f} s  {n / wall:10,.0f} records/s  peak RSS"
                    f" {rss:8,.0f} MiB  CPU {cpu:6.1f} s",
                    flush=True,
                )
            if not args.keep:
                shutil.rmtree(data)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    report(results)


def report(results: list[tuple[str, int, float, float, float]]) -> None:
    by = {(tool, n): (wall, rss, cpu) for tool, n, wall, rss, cpu in results}
    sizes = sorted({n for _, n, _, _, _ in results})
    print("\n| tool | N | seconds | records/s | peak RSS MiB | CPU s |\n|---|---|---|---|---|---|")
    for tool, n, wall, rss, cpu in results:
        print(f"| {tool} | {n:,} | {wall:.1f} | {n / wall:,.0f} | {rss:,.0f} | {cpu:.1f} |")
    for n in sizes:
        if ("naive", n) in by:
            ratio = by[("naive", n)][0] / by[("feinschliff", n)][0]
            cpu = by[("naive", n)][2] / by[("feinschliff", n)][2]
            print(
                f"throughput feinschliff / naive at {n:,}: {ratio:.2f}x (goal >= 3x); "
                f"CPU-time ratio naive / feinschliff: {cpu:.2f}x"
            )
        if ("naive-same-job", n) in by:
            ratio = by[("naive-same-job", n)][0] / by[("feinschliff", n)][0]
            print(
                f"throughput feinschliff / naive-same-job at {n:,}: {ratio:.2f}x "
                "(for comparison only: the goal is against the naive baseline above)"
            )
    if len(sizes) > 1:
        lo, hi = sizes[0], sizes[-1]
        ratio = by[("feinschliff", hi)][1] / by[("feinschliff", lo)][1]
        print(f"peak RSS feinschliff {hi:,} / {lo:,}: {ratio:.2f}x (goal <= 1.2x)")
        if ("naive", hi) in by:
            print(
                f"peak RSS naive {hi:,} / {lo:,}: {by[('naive', hi)][1] / by[('naive', lo)][1]:.2f}x"
            )
    print(
        json.dumps(
            {
                "results": [
                    dict(
                        zip(("tool", "n", "seconds", "peak_rss_mib", "cpu_seconds"), r, strict=True)
                    )
                    for r in results
                ]
            }
        )
    )


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--naive":
        naive(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4], same_job=sys.argv[5] == "same-job")
    else:
        main()
