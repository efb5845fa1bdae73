"""An adapter folder's files as a loader sees them: folder contents, safetensors headers, values.

:func:`check_files`: config and safetensors weights present; no pickle weights (``.bin``/``.pt``/...:
loading them runs arbitrary code); no symlink that leaves the folder, dangles, loops or names a
directory; no FIFOs or devices (a copy would hang or read a device); no oversized files or file
floods (the registry copies and hashes everything).

:func:`read_index`: the safetensors header, validated the way the ``safetensors`` loader will.
The preflight reads only the JSON header for shapes; a header that lies (duplicate names, offsets
that overlap, leave gaps or run past the file, a dtype whose size does not match the byte range,
trailing bytes) would make vLLM's loader fail *after* the adapter was registered, so the same
rules are checked here. :func:`nonfinite_tensors` scans the (small) adapter data for NaN/inf: a
diverged training run still saves a well-formed file, and vLLM would serve it.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".npy", ".npz", ".joblib")
# Beyond these an adapter is not a LoRA adapter but a disk or memory bomb: the registry would copy
# and hash it, the servers read it.
MAX_CONFIG_BYTES = 1024 * 1024
MAX_OTHER_FILE_BYTES = 64 * 1024 * 1024  # tokenizer files, README: megabytes at most
MAX_FILES = 256
MAX_HEADER = 100 * 1024 * 1024
DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}  # fmt: skip
# Float formats LoRA weights come in, with (unsigned view, exponent mask): all exponent bits set
# means inf or NaN.
FLOAT_EXPONENT = {
    "F16": ("<u2", 0x7C00),
    "BF16": ("<u2", 0x7F80),
    "F32": ("<u4", 0x7F800000),
    "F64": ("<u8", 0x7FF0000000000000),
}


def check_files(adapter_dir: Path) -> list[str]:
    """Presence of config and safetensors weights; no pickles, escaping or broken links, odd or
    oversized files."""
    if adapter_dir.is_symlink() or not adapter_dir.is_dir():
        return [f"{adapter_dir} is not a directory"]
    root = adapter_dir.resolve()
    problems = []
    entries = []
    for i, path in enumerate(adapter_dir.rglob("*")):
        if i >= MAX_FILES:
            return [f"more than {MAX_FILES} files: not a LoRA adapter"]
        entries.append(path)
    for path in sorted(entries):
        rel = path.relative_to(adapter_dir)
        if path.suffix.lower() in PICKLE_SUFFIXES:
            problems.append(f"{rel}: pickle-based weights are refused (safetensors only)")
            continue
        if path.is_symlink():
            try:
                target = path.resolve(strict=True)
            except (OSError, RuntimeError):  # RuntimeError: a symlink loop on Python 3.11
                problems.append(f"{rel} is a broken symlink (dangling or a loop)")
                continue
            if target != root and root not in target.parents:
                problems.append(f"{rel} is a symlink that leaves the adapter directory")
                continue
            if target.is_dir():
                # The registry's copy follows it, rglob (these checks) does not: its files would
                # go unchecked, and a link to the folder or one above it (`loop -> .`) recurses
                # until the copy crashes. File links are fine (copied as the file).
                problems.append(f"{rel} is a symlink to a directory (only file links are allowed)")
                continue
        try:
            info = path.stat()
        except OSError as exc:
            problems.append(f"{rel} cannot be read: {exc.strerror}")
            continue
        if path.is_dir():
            continue
        if not path.is_file():
            problems.append(f"{rel} is not a regular file")
        elif str(rel) != WEIGHTS and info.st_size > MAX_OTHER_FILE_BYTES:
            problems.append(f"{rel} has {info.st_size} bytes: too large for an adapter file")
    if not (adapter_dir / CONFIG).is_file():
        problems.append(f"no {CONFIG} (not a PEFT adapter)")
    if not (adapter_dir / WEIGHTS).is_file():
        problems.append(f"no {WEIGHTS}")
    return problems


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    start: int  # offsets relative to the data section, which begins at data_start
    end: int


@dataclass(frozen=True)
class SafetensorsIndex:
    path: Path
    data_start: int
    tensors: dict[str, TensorInfo]

    def shapes(self) -> dict[str, list[int]]:
        return {name: list(t.shape) for name, t in self.tensors.items()}


def read_index(path: Path, *, strict: bool = True) -> SafetensorsIndex:
    """The parsed header; raises ValueError for anything the safetensors loader would refuse.

    ``strict`` also requires a known dtype whose size matches each byte range, and byte ranges
    that tile the data section exactly (a base model in a newer dtype is read with strict=False).
    """
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path.name}: not a safetensors file (too short)")
        (length,) = struct.unpack("<Q", raw)
        if length < 2 or length > min(MAX_HEADER, size - 8):
            raise ValueError(f"{path.name}: not a safetensors file (header length {length})")
        text = f.read(length)
    try:
        header = json.loads(text.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{path.name}: corrupt safetensors header ({exc})") from exc
    if not isinstance(header, dict):
        raise ValueError(f"{path.name}: corrupt safetensors header (not a JSON object)")
    data_len = size - 8 - length
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict):
                raise ValueError(f"{path.name}: __metadata__ is not an object")
            continue
        tensors[name] = _tensor_info(path.name, name, info, data_len, strict)
    if strict:
        _check_tiling(path.name, tensors, data_len)
    return SafetensorsIndex(path=path, data_start=8 + length, tensors=tensors)


def read_safetensors_header(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape from a safetensors header, checked for sane offsets."""
    return read_index(path).shapes()


def nonfinite_tensors(index: SafetensorsIndex, chunk: int = 1 << 22) -> list[str]:
    """Names of float tensors holding NaN or +-inf (data read in chunks, never all at once)."""
    import numpy as np

    bad = []
    with index.path.open("rb") as f:
        for name, t in index.tensors.items():
            if t.dtype not in FLOAT_EXPONENT:
                continue
            view, mask = FLOAT_EXPONENT[t.dtype]
            step = chunk - chunk % DTYPE_SIZES[t.dtype]
            f.seek(index.data_start + t.start)
            remaining = t.end - t.start
            while remaining > 0:
                buf = f.read(min(step, remaining))
                if not buf:
                    break
                remaining -= len(buf)
                words = np.frombuffer(buf, dtype=view)
                if np.any((words & words.dtype.type(mask)) == mask):
                    bad.append(name)
                    break
    return bad


def check_dtypes_and_values(index: SafetensorsIndex) -> list[str]:
    """LoRA weights are floats (vLLM casts them to the LoRA dtype) and finite: a diverged run
    saves NaN/inf into a well-formed file that vLLM would load and serve."""
    problems = [
        f"{name[:120]}: dtype {t.dtype} is not a float type ({', '.join(FLOAT_EXPONENT)})"
        for name, t in index.tensors.items()
        if t.dtype not in FLOAT_EXPONENT
    ]
    bad = nonfinite_tensors(index)
    if bad:
        problems.append(f"NaN or inf in {len(bad)} tensors, e.g. {bad[0][:120]} (diverged?)")
    return problems


def base_model_shapes(model_dir: Path) -> dict[str, list[int]]:
    """Weight name -> shape for a local HF model folder (single or sharded safetensors)."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise ValueError(f"base model {model_dir} has no *.safetensors to compare shapes with")
    shapes: dict[str, list[int]] = {}
    for f in files:  # strict=False: a base model may use a dtype this module does not know
        shapes.update(read_index(f, strict=False).shapes())
    config_path = Path(model_dir) / "config.json"
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    if "lm_head.weight" not in shapes and config.get("tie_word_embeddings", True):
        embed = next((k for k in shapes if k.endswith("embed_tokens.weight")), None)
        if embed:  # tied output projection: same shape as the input embedding
            shapes["lm_head.weight"] = shapes[embed]
    return shapes


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"duplicate keys {dupes[:3]}")
    return dict(pairs)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _tensor_info(file: str, name: str, info: object, data_len: int, strict: bool) -> TensorInfo:
    what = f"{file}: tensor {name[:80]!r}"
    if not isinstance(info, dict):
        raise ValueError(f"{what} has no dtype/shape/data_offsets")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise ValueError(f"{what}: shape {str(shape)[:80]} is not a list of sizes")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_int, offsets))):
        raise ValueError(f"{what}: data_offsets {str(offsets)[:80]} are not two integers")
    start, end = offsets
    if not 0 <= start <= end <= data_len:
        raise ValueError(f"{what} lies outside the file (truncated?)")
    if strict:
        if dtype not in DTYPE_SIZES:
            raise ValueError(f"{what}: unknown dtype {str(dtype)[:40]!r}")
        if end - start != math.prod(shape) * DTYPE_SIZES[dtype]:
            raise ValueError(
                f"{what}: {end - start} bytes do not hold a {dtype} tensor of shape {shape}"
            )
    return TensorInfo(dtype=str(dtype), shape=tuple(shape), start=start, end=end)


def _check_tiling(file: str, tensors: dict[str, TensorInfo], data_len: int) -> None:
    """Byte ranges must follow each other without gap or overlap and end with the file."""
    pos = 0
    for name, t in sorted(tensors.items(), key=lambda kv: (kv[1].start, kv[1].end)):
        if t.start != pos:
            kind = "overlaps the previous tensor" if t.start < pos else "leaves a gap"
            raise ValueError(f"{file}: tensor {name[:80]!r} {kind} (corrupt offsets)")
        pos = t.end
    if pos != data_len:
        raise ValueError(
            f"{file}: {data_len - pos} bytes after the last tensor (corrupt or padded file)"
        )


def base_architectures(model_dir: Path) -> list[str]:
    """config.json's ``architectures`` (vLLM picks its model class by them); [] when absent."""
    config_path = Path(model_dir) / "config.json"
    if not config_path.exists():
        return []
    config = json.loads(config_path.read_text())
    archs = config.get("architectures") if isinstance(config, dict) else None
    return [a for a in archs if isinstance(a, str)] if isinstance(archs, list) else []
