"""Benchmark: feinschliff's training overhead over plain TRL, and what packing buys.

Runs, one after another, each as a fresh process on the demo model and the demo recipe's ingest
output, with the same arguments (SFT, LoRA r=16 all-linear, batch 4, max length 256, fp32):

1. ``feinschliff train`` (no packing)  vs  2. a plain TRL script (SFTTrainer, same config)
   -> wall-time ratio of the two processes, start-up included (goal <= 1.05);
3. ``feinschliff train`` with ``train.packing=true``
   -> tokens/s with packing / tokens/s without (goal >= 1.5 on the demo data).

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 .venv/bin/python bench/train_overhead.py
    ... --steps 10          # default; more steps dilute start-up costs

Prints the three timings and both ratios; writes nothing outside a temp dir. One run each: on a
shared machine, repeat it before trusting a difference of a few percent.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "demo-de.yaml"

PLAIN_TRL = r"""
import json, sys, time, torch
from datasets import load_dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

model_path, data, out, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
tok = AutoTokenizer.from_pretrained(model_path)
tok.pad_token = tok.pad_token or tok.eos_token
model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
ds = load_dataset("json", data_files=data, split="train").select_columns(["messages"])
args = SFTConfig(
    output_dir=out, learning_rate=3e-4, max_steps=steps, per_device_train_batch_size=4,
    max_length=256, logging_steps=1, save_strategy="steps", save_steps=10, save_total_limit=2,
    report_to="none", use_cpu=True, disable_tqdm=True, dataloader_num_workers=0, seed=42,
    include_num_input_tokens_seen="non_padding",
)
peft = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                  bias="none", task_type="CAUSAL_LM")
trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                     peft_config=peft)
start = time.perf_counter()
trainer.train()
wall = time.perf_counter() - start
trainer.model.save_pretrained(out + "/adapter")
print(json.dumps({"tokens": trainer.state.num_input_tokens_seen, "train_wall": wall}))
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    )
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _timed(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env())
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return wall, proc.stdout


def feinschliff_train(data: Path, out: Path, steps: int, packing: bool) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "feinschliff.cli", "train", str(RECIPE), "--data", str(data)]
    cmd += ["--out", str(out)]
    for s in (
        f"train.hyperparameters.max_steps={steps}",
        "train.hyperparameters.batch_size=4",
        "train.hyperparameters.max_length=256",
        f"train.packing={str(packing).lower()}",
    ):
        cmd += ["--set", s]
    wall, _ = _timed(cmd)
    return wall, json.loads((out / "metrics.json").read_text())


def padding_bound(model_path: str, data: Path, batch: int = 4, max_length: int = 256) -> float:
    """Padded / real tokens of random unpacked micro-batches: the padding packing removes (on CPU,
    where time follows tokens, most of packing's gain; fewer, fuller steps add a little)."""
    import random

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    rows = [json.loads(line) for line in (data / "sft.jsonl").open()]
    lengths = [
        min(len(tok.apply_chat_template(r["messages"], tokenize=True)["input_ids"]), max_length)
        for r in rows
    ]
    rng, padded, real = random.Random(0), 0, 0
    for _ in range(200):
        rng.shuffle(lengths)
        for i in range(0, len(lengths) - batch + 1, batch):
            chunk = lengths[i : i + batch]
            padded += max(chunk) * batch
            real += sum(chunk)
    return padded / real


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per run")
    args = parser.parse_args()
    from feinschliff.ingest import run_ingest
    from feinschliff.models import resolve_model
    from feinschliff.recipe_loader import load_recipe

    recipe = load_recipe(RECIPE)
    model_path = resolve_model(recipe.base_model.name)
    with tempfile.TemporaryDirectory(prefix="fs-bench-") as tmp:
        work = Path(tmp)
        data = run_ingest(recipe.feedback, work / "ingest").dir
        fs_wall, fs_metrics = feinschliff_train(data, work / "fs", args.steps, packing=False)
        plain_cmd = [sys.executable, "-c", PLAIN_TRL, model_path, str(data / "sft.jsonl")]
        plain_wall, out = _timed([*plain_cmd, str(work / "plain"), str(args.steps)])
        plain = json.loads(out.strip().splitlines()[-1])
        pk_wall, pk_metrics = feinschliff_train(data, work / "packed", args.steps, packing=True)
        bound = padding_bound(model_path, data)

    ratio = fs_wall / plain_wall
    fs_tps = fs_metrics["tokens_per_second"]
    pk_tps = pk_metrics["tokens_per_second"]
    print(f"steps per run: {args.steps} (SFT, LoRA r=16, batch 4, max length 256, fp32, CPU)")
    print(f"feinschliff train      {fs_wall:7.1f} s  (training {fs_metrics['wall_seconds']:.1f} s)")
    print(f"plain TRL script       {plain_wall:7.1f} s  (training {plain['train_wall']:.1f} s)")
    print(f"feinschliff + packing  {pk_wall:7.1f} s  (training {pk_metrics['wall_seconds']:.1f} s)")
    print(f"wall-time ratio feinschliff / plain TRL: {ratio:.3f}  (goal <= 1.05)")
    print(
        f"tokens/s packing / no packing: {pk_tps:.1f} / {fs_tps:.1f} = {pk_tps / fs_tps:.2f}"
        "  (goal >= 1.5)"
    )
    print(f"  padded / real tokens in unpacked batches of this data: {bound:.2f}")


if __name__ == "__main__":
    main()
