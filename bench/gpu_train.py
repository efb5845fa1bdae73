"""Benchmark: a recipe's real training on a GPU against `feinschliff estimate`.

Trains a few steps of a recipe (default ``recipes/support-de-8b.yaml``) through the real train
stage (``run_train``: TRL SFTTrainer, PEFT LoRA, the recipe's dtype, checkpointing and batch
shape), each configuration in a fresh process, and prints side by side:

- peak GPU memory (``torch.cuda.max_memory_allocated``, what metrics.json records; plus the
  allocator's reserved peak and the device memory in use at the end, CUDA context included)
  against the estimate's training total for the same micro-batch;
- the memory slope between two micro-batch sizes against the estimate's (activations + logits
  per sequence), which checks the activation model apart from the weights;
- tokens/s (real tokens of ``trainer.train()``, from metrics.json, and steady-state from the
  step timestamps without the first step) against the estimator's cost model (dense bf16 peak x
  the default MFU / FLOPs per token), and the MFU that the measurement implies.

No model hub is reachable where this was written, so ``--random-weights CONFIG`` (default
``bench/configs/llama-3.1-8b.json``, the published Llama-3.1-8B config) builds the base model
with random weights of exactly that shape directly on the GPU instead of loading a checkpoint:
speed and memory of a training step do not depend on the weights' values (the loss does, and
is meaningless here). ``--tokenizer DIR`` gives the tokenizer (any chat tokenizer; rows are
sized in its tokens). Everything else is the stage as a user runs it. Point ``--random-weights
none`` at a recipe whose base model is available to train the real weights instead. With
``--set train.qlora=true`` the random weights are first saved as a 16-bit checkpoint, which the
stage's own ``load_model`` then loads and quantizes (4-bit NF4), as for a user.

    python bench/gpu_train.py --tokenizer DIR [--recipe R] [--steps 8] [--batch 4 16] \
        [--sample-data INGEST_DIR] [--results FILE.json]

``--sample-data`` adds a run on real ingest output at the recipe's own batch shape (short
conversations: what a weekly support-feedback training really trains on). Writes only under a
temp dir (and ``--results``).
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
RECIPE = ROOT / "recipes" / "support-de-8b.yaml"
LLAMA_8B = ROOT / "bench" / "configs" / "llama-3.1-8b.json"
# Everything the runs write (model folder, rows, outputs, FEINSCHLIFF_HOME); removed at the end.
WORK = Path(tempfile.mkdtemp(prefix="fs-gpu-bench-"))
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
# Dense bf16 peaks (TFLOP/s) of cards whose name torch reports; others come from --peak-tflops
# or configs/hardware.yaml. H100 SXM and H200 share the H100 SXM tensor cores.
PEAK_BF16 = {"H100 80GB HBM3": 989.0, "H200": 989.0, "H100 PCIe": 756.0, "A100": 312.0}
WORDS = [
    "Kunde",
    "Rechnung",
    "Vertrag",
    "Lieferung",
    "Bestellung",
    "Rückerstattung",
    "Kündigung",
    "Tarif",
    "Zahlung",
    "Konto",
    "Adresse",
    "Frist",
    "Gutschrift",
    "Mahnung",
    "Störung",
    "Router",
    "Anschluss",
    "Techniker",
    "Termin",
    "Versand",
    "Paket",
    "bitte",
    "prüfen",
    "wir",
    "Ihnen",
    "gerne",
    "schnell",
    "leider",
    "bereits",
    "erneut",
    "innerhalb",
    "Werktage",
    "zusätzlich",
    "Ihre",
    "unsere",
    "neue",
    "alte",
    "monatlich",
    "jährlich",
    "sofort",
    "außerdem",
    "danach",
    "anschließend",
    "jedoch",
]


# --------------------------------------------------------------------------- child


def run_child(args: argparse.Namespace) -> None:
    """One training in this process; writes ``<out>/bench.json``."""
    import logging

    import torch
    import transformers
    import trl

    from feinschliff.artifacts import DatasetRef
    from feinschliff.recipe_loader import load_recipe
    from feinschliff.train import trl_backend
    from feinschliff.train.stage import run_train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out = Path(args.out)
    overrides = [f"base_model.name={args.model}", *args.set]
    recipe = load_recipe(args.recipe, overrides=overrides)
    steps: list[dict] = []

    class StepTimer(trl_backend._Progress):
        def on_step_end(self, a, state, control, **kw):  # noqa: D102
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            steps.append(
                {
                    "step": state.global_step,
                    "t": time.perf_counter(),
                    "tokens": int(state.num_input_tokens_seen or 0),
                }
            )

    trl_backend._Progress = StepTimer  # bench: per-step timestamps; training unchanged
    if args.random_weights:

        def random_model(recipe, model_path):
            from transformers import AutoConfig, AutoModelForCausalLM

            config = AutoConfig.from_pretrained(model_path)
            device = "cuda" if torch.cuda.is_available() else "cpu"
            with torch.device(device):
                return AutoModelForCausalLM.from_config(
                    config, dtype=getattr(torch, recipe.base_model.dtype)
                )

        trl_backend.load_model = random_model
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    run_train(recipe, DatasetRef(path=args.data, sha256="bench"), out / "train")
    wall = time.perf_counter() - start
    metrics = json.loads((out / "train" / "metrics.json").read_text())
    result = {
        "wall_seconds": round(wall, 1),
        "metrics": {k: metrics.get(k) for k in METRIC_KEYS},
        "steps": steps,
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "trl": trl.__version__,
        },
    }
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        result["gpu"] = {
            "name": torch.cuda.get_device_name(),
            "max_allocated_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1),
            "max_reserved_mb": round(torch.cuda.max_memory_reserved() / 2**20, 1),
            "device_used_at_end_mb": round((total - free) / 2**20, 1),
            "total_mb": round(total / 2**20, 1),
        }
    (out / "bench.json").write_text(json.dumps(result, indent=1))


METRIC_KEYS = (
    "global_step",
    "trained_tokens",
    "tokens_per_second",
    "wall_seconds",
    "peak_gpu_memory_mb",
    "peak_rss_mb",
    "trainable_parameters",
    "train_rows",
)


# --------------------------------------------------------------------------- parent


def build_model_dir(config: Path | None, tokenizer: Path, dest: Path) -> Path:
    """A model folder: ``config`` (random weights are built from it) + the tokenizer files."""
    dest.mkdir(parents=True)
    if config is not None:
        shutil.copy(config, dest / "config.json")
    else:  # the tokenizer folder is the model
        return tokenizer
    for name in TOKENIZER_FILES:
        if (tokenizer / name).exists():
            shutil.copy(tokenizer / name, dest / name)
    return dest


def write_random_checkpoint(model_dir: Path, dtype: str, timeout: int) -> None:
    """Random weights of ``model_dir/config.json``'s shape saved there as a checkpoint (in a
    child process, so the parent holds no GPU memory)."""
    print(f"writing a random {dtype} checkpoint to {model_dir}", flush=True)
    start = time.perf_counter()
    cmd = [sys.executable, __file__, "--write-checkpoint", str(model_dir), "--dtype", dtype]
    subprocess.run(cmd, env=_env(), timeout=timeout, check=True)
    print(f"  {time.perf_counter() - start:.0f} s", flush=True)


def run_write_checkpoint(model_dir: Path, dtype: str) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.save_pretrained(model_dir)


def long_rows(tokenizer: Path, n: int, min_tokens: int, seed: int = 0) -> list[dict]:
    """``n`` SFT conversations of at least ``min_tokens`` tokens with the chat template applied,
    almost all of them in the answer (the trained part): the estimate's worst case, every
    sequence at max_length."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer))
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = [rng.choice(WORDS) for _ in range(min_tokens)]
        messages = [
            {"role": "user", "content": f"Anfrage {i}: " + " ".join(words[:30])},
            {"role": "assistant", "content": " ".join(words)},
        ]
        while len(tok.apply_chat_template(messages, tokenize=True)["input_ids"]) < min_tokens:
            messages[1]["content"] += " " + " ".join(rng.choice(WORDS) for _ in range(200))
        rows.append({"messages": messages})
    return rows


def as_preferences(rows: list[dict], seed: int = 1) -> list[dict]:
    """Preference rows (dpo, orpo, kto) from long conversations: the answer as chosen, the
    answer's words shuffled as rejected, both as long as the chosen one."""
    rng = random.Random(seed)
    out = []
    for row in rows:
        user, answer = row["messages"]
        words = answer["content"].split()
        rng.shuffle(words)
        rejected = {"role": "assistant", "content": " ".join(words)}
        out.append({"prompt": [user], "chosen": [answer], "rejected": [rejected]})
    return out


def sample_rows(ingest: Path, repeat: int, dest: Path) -> Path:
    """The ingest output's SFT rows, ``repeat`` times over, as a training data folder."""
    dest.mkdir()
    text = (ingest / "sft.jsonl").read_text(encoding="utf-8")
    (dest / "sft.jsonl").write_text(text * repeat, encoding="utf-8")
    return dest


def estimate_for(recipe_path: Path, model: str, sets: list[str], batch: int) -> dict:
    from feinschliff.estimate import GIB, estimate_recipe, recipe_flops_per_token
    from feinschliff.recipe_loader import load_recipe

    recipe = load_recipe(recipe_path, overrides=[f"base_model.name={model}", *sets])
    est = estimate_recipe(recipe, batch_size=batch)
    return {
        "training_gib": round(est.training / GIB, 2),
        "rows_gib": {k: round(v / GIB, 3) for k, v in est.rows.items()},
        "flops_per_token": recipe_flops_per_token(recipe),
        "max_length": recipe.train.hyperparameters.max_length,
    }


def steady_tokens_per_second(steps: list[dict]) -> float | None:
    """Tokens/s from the end of the first optimizer step to the end of the last (warm-up,
    allocator growth and the first kernels' tuning excluded)."""
    if len(steps) < 3:
        return None
    first, last = steps[0], steps[-1]
    return (last["tokens"] - first["tokens"]) / (last["t"] - first["t"])


def peak_tflops(name: str, override: float | None) -> float | None:
    if override:
        return override
    for key, value in PEAK_BF16.items():
        if key in name:
            return value
    return None


def run_config(
    label: str, args: argparse.Namespace, model: str, data: Path, sets: list[str], work: Path
) -> dict:
    out = work / label
    cmd = [sys.executable, __file__, "--child", "--recipe", str(args.recipe), "--model", model]
    cmd += ["--data", str(data), "--out", str(out)]
    cmd += [a for s in sets for a in ("--set", s)]
    if args.random_weights:
        cmd.append("--random-weights-child")
    print(f"\n== {label}: {' '.join(sets)}", flush=True)
    proc = subprocess.run(cmd, env=_env(), timeout=args.timeout)
    if proc.returncode != 0:
        return {"label": label, "error": f"exit {proc.returncode}"}
    return {"label": label, "sets": sets, **json.loads((out / "bench.json").read_text())}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    env.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("FEINSCHLIFF_HOME", str(WORK / "home"))  # the replay snapshots, etc.
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p
    )
    return env


def report(results: list[dict], args: argparse.Namespace) -> None:
    from feinschliff.estimate import DEFAULT_MFU as mfu_model

    print(
        "\n| run | est. GiB | peak alloc GiB | ratio | reserved GiB | device used GiB |"
        f" tokens/s | steady tokens/s | model tokens/s (MFU {mfu_model:.0%}) | implied MFU |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['label']} | failed: {r['error']} |")
            continue
        est, gpu, m = r["estimate"], r.get("gpu", {}), r["metrics"]
        alloc = gpu.get("max_allocated_mb", 0) / 1024
        steady = steady_tokens_per_second(r["steps"])
        peak = peak_tflops(gpu.get("name", ""), args.peak_tflops)
        model_tps = peak * 1e12 * mfu_model / est["flops_per_token"] if peak else None
        mfu = steady * est["flops_per_token"] / (peak * 1e12) if peak and steady else None
        r["summary"] = {
            "estimate_gib": est["training_gib"],
            "peak_allocated_gib": round(alloc, 2),
            "measured_over_estimate": round(alloc / est["training_gib"], 3) if alloc else None,
            "steady_tokens_per_second": round(steady, 1) if steady else None,
            "model_tokens_per_second": round(model_tps, 1) if model_tps else None,
            "implied_mfu": round(mfu, 3) if mfu else None,
            "peak_tflops": peak,
        }
        s = r["summary"]
        print(
            f"| {r['label']} | {est['training_gib']:.2f} | {alloc:.2f} | "
            f"{s['measured_over_estimate']} | {gpu.get('max_reserved_mb', 0) / 1024:.2f} | "
            f"{gpu.get('device_used_at_end_mb', 0) / 1024:.2f} | {m.get('tokens_per_second')} | "
            f"{s['steady_tokens_per_second']} | {s['model_tokens_per_second']} | "
            f"{s['implied_mfu']} |"
        )
    by_label = {r["label"]: r for r in results if "summary" in r}
    if {"sample-rows", "sample-rows-packed"} <= by_label.keys():
        plain, packed = by_label["sample-rows"], by_label["sample-rows-packed"]
        wall = packed["metrics"]["tokens_per_second"] / plain["metrics"]["tokens_per_second"]
        line = f"\npacking / no packing, real tokens/s: whole run {wall:.2f}"
        a = plain["summary"]["steady_tokens_per_second"]
        b = packed["summary"]["steady_tokens_per_second"]
        if a and b:
            line += f", steady {b / a:.2f}"
        print(line)
    sweep = [r for r in results if r.get("sweep") and "gpu" in r]
    if len(sweep) >= 2:  # the smallest and the largest micro-batch
        a, *_, b = sorted(sweep, key=lambda r: r["batch"])
        db = b["batch"] - a["batch"]
        measured = (b["gpu"]["max_allocated_mb"] - a["gpu"]["max_allocated_mb"]) / 1024 / db
        predicted = (b["estimate"]["training_gib"] - a["estimate"]["training_gib"]) / db
        paired = any(f"train.method={m}" in a["sets"] for m in ("dpo", "orpo"))
        unit = "pair (2 sequences)" if paired else "sequence"
        print(
            f"\nmemory per extra {unit} of {a['estimate']['max_length']} tokens: measured "
            f"{measured:.3f} GiB, estimated {predicted:.3f} GiB (ratio {measured / predicted:.2f})"
        )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--recipe", type=Path, default=RECIPE)
    p.add_argument("--tokenizer", type=Path, help="folder with tokenizer.json (+ chat template)")
    p.add_argument(
        "--random-weights",
        default=str(LLAMA_8B),
        help="config.json to build random weights from; 'none': the recipe's model",
    )
    p.add_argument("--steps", type=int, default=8)
    p.add_argument(
        "--batch",
        type=int,
        nargs="*",
        default=[4, 16],
        help="micro-batch sizes of the long-row runs (the first at the recipe's "
        "accumulation; the others keep the tokens per step)",
    )
    p.add_argument("--max-length", type=int, help="override the recipe's max_length")
    p.add_argument("--sample-data", type=Path, help="an ingest output for a run on real rows")
    p.add_argument(
        "--repeat-rows",
        type=int,
        default=1,
        help="repeat the sample rows N times (small samples: enough rows for several packed "
        "optimizer steps per epoch; lengths, not contents, set the speed)",
    )
    p.add_argument(
        "--packing", action="store_true", help="also run the sample rows with train.packing"
    )
    p.add_argument("--peak-tflops", type=float, help="dense bf16 peak of the card")
    p.add_argument("--timeout", type=int, default=600, help="seconds per run")
    p.add_argument("--results", type=Path, help="write all numbers to this JSON file")
    # internal: one run in a child process
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--random-weights-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument(
        "--set", action="append", default=[], help="recipe override for every run (KEY=VALUE)"
    )
    p.add_argument("--write-checkpoint", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="bfloat16", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.write_checkpoint:
        return run_write_checkpoint(args.write_checkpoint, args.dtype)
    if args.child:
        args.random_weights = args.random_weights_child
        return run_child(args)
    args.random_weights = None if args.random_weights == "none" else args.random_weights
    if args.tokenizer is None:
        p.error("--tokenizer DIR is needed (the recipe's model folder with --random-weights none)")
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    from feinschliff.recipe_loader import load_recipe

    base = load_recipe(args.recipe, overrides=args.set)
    hp = base.train.hyperparameters
    max_length = args.max_length or hp.max_length
    work = WORK
    model = str(
        build_model_dir(
            Path(args.random_weights) if args.random_weights else None,
            args.tokenizer,
            work / "model",
        )
    )
    if args.random_weights and base.train.qlora:
        # QLoRA quantizes while loading: the children load (the stage's own load_model) a
        # checkpoint of random weights instead of building them in memory
        write_random_checkpoint(Path(model), base.base_model.dtype, args.timeout)
        args.random_weights = None
    common = [
        f"train.hyperparameters.max_steps={args.steps}",
        f"train.hyperparameters.max_length={max_length}",
        f"train.hyperparameters.save_steps={args.steps + 1000}",  # no mid-run checkpoint
        "train.hyperparameters.eval_fraction=0",
        "train.hyperparameters.warmup_ratio=0",
    ]
    seqs_per_step = hp.batch_size * hp.gradient_accumulation_steps
    device = f"cuda: {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "no GPU"
    print(device, flush=True)
    long_dir = work / "long-data"
    if args.batch:
        long_dir.mkdir()
        need = max(seqs_per_step, *args.batch) * args.steps + 8
        rows = long_rows(Path(model), need, max_length + 16)
        name = "sft.jsonl"
        if base.train.method != "sft":
            rows, name = as_preferences(rows), "preference.jsonl"
        (long_dir / name).write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
        )
        print(f"{len(rows)} rows of >= {max_length} tokens", flush=True)
    results = []
    for i, b in enumerate(args.batch):
        ga = hp.gradient_accumulation_steps if i == 0 else max(1, seqs_per_step // b)
        sets = [
            *common,
            *args.set,
            f"train.hyperparameters.batch_size={b}",
            f"train.hyperparameters.gradient_accumulation_steps={ga}",
        ]
        r = run_config(f"long-b{b}-ga{ga}", args, model, long_dir, sets, work)
        r |= {"batch": b, "sweep": True, "estimate": estimate_for(args.recipe, model, sets, b)}
        results.append(r)
        _save(results, args)
    if args.sample_data:
        data = sample_rows(args.sample_data, args.repeat_rows, work / "sample-data")
        sets = [*common[:1], *common[2:], *args.set]
        if args.max_length:
            sets.append(f"train.hyperparameters.max_length={args.max_length}")
        variants = [("sample-rows", sets)]
        if args.packing:
            variants.append(("sample-rows-packed", [*sets, "train.packing=true"]))
        for label, v_sets in variants:
            r = run_config(label, args, model, data, v_sets, work)
            r["estimate"] = estimate_for(args.recipe, model, v_sets, hp.batch_size)
            results.append(r)
            _save(results, args)
    report(results, args)
    _save(results, args)


def _save(results: list[dict], args: argparse.Namespace) -> None:
    if args.results:
        args.results.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    try:
        main()
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
