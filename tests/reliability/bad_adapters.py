"""Bad LoRA adapters generated from one valid adapter, for the bad-adapter fuzz (reliability row 5).

:func:`bad_adapter_cases` yields ``(label, build)``; ``build(dest)`` writes one bad adapter folder
at ``dest``. Every case must be refused: corrupt safetensors (truncated, garbage, lying header
length, broken header JSON, offsets that overlap, leave gaps or run past the file, wrong dtypes,
NaN/inf), configs vLLM refuses or that break its parser (rank too high, DoRA, bias,
modules_to_save, wrong target modules, invalid JSON), tensors of another base model, pickle
weights, symlinks (out of the folder, loops, dangling), FIFOs, oversized (sparse) files and hostile
tensor names. ``long=True`` adds more random truncation points, garbage seeds and NaN positions.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

Build = Callable[[Path], None]
CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
GB = 1 << 30


def bad_adapter_cases(good: Path, *, long: bool = False) -> Iterator[tuple[str, Build]]:
    rng = random.Random(5)
    raw = (good / WEIGHTS).read_bytes()
    (hlen,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + hlen])
    data = raw[8 + hlen :]
    config = json.loads((good / CONFIG).read_text())
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    first = sorted(tensors)[0]

    def weights_bytes(blob: bytes) -> Build:
        def build(dest: Path) -> None:
            _copy(good, dest)
            (dest / WEIGHTS).write_bytes(blob)

        return build

    def with_header(hdr: object, body: bytes = data, length: int | None = None) -> Build:
        text = json.dumps(hdr).encode() if not isinstance(hdr, bytes) else hdr
        text += b" " * (-len(text) % 8)
        n = len(text) if length is None else length
        return weights_bytes(struct.pack("<Q", n) + text + body)

    def with_config(cfg: object, text: bytes | None = None) -> Build:
        def build(dest: Path) -> None:
            _copy(good, dest)
            (dest / CONFIG).write_bytes(text if text is not None else json.dumps(cfg).encode())

        return build

    def with_tensors(arrays: dict[str, np.ndarray], cfg: dict | None = None) -> Build:
        def build(dest: Path) -> None:
            _copy(good, dest)
            save_file(arrays, str(dest / WEIGHTS))
            if cfg is not None:
                (dest / CONFIG).write_text(json.dumps(cfg))

        return build

    def with_files(make: Callable[[Path], None]) -> Build:
        def build(dest: Path) -> None:
            _copy(good, dest)
            make(dest)

        return build

    good_arrays = _load(good / WEIGHTS)

    # --- corrupt safetensors: truncation, garbage, lying header length
    points = [0, 1, 7, 8, 9, 8 + hlen // 2, 8 + hlen - 1, 8 + hlen, 8 + hlen + 1, len(raw) // 2]
    points += [len(raw) - 4, len(raw) - 1]
    points += rng.sample(range(len(raw)), 60 if long else 12)
    for cut in points:
        yield f"truncated at byte {cut}", weights_bytes(raw[:cut])
    for seed in range(40 if long else 8):
        junk = random.Random(seed).randbytes(rng.choice([16, 4096, len(raw)]))
        yield f"garbage file #{seed}", weights_bytes(junk)
    for seed in range(20 if long else 4):
        junk = random.Random(100 + seed).randbytes(hlen)
        yield f"garbage header #{seed}", weights_bytes(raw[:8] + junk + data)
    for n in [0, 1, 2, hlen - 1, hlen + 1, hlen + 8, len(raw) - 7, 2**32, 2**63, 2**64 - 1]:
        yield f"header length {n} (really {hlen})", weights_bytes(struct.pack("<Q", n) + raw[8:])
    yield "header length 101 MB", weights_bytes(struct.pack("<Q", 101 << 20) + b" " * (101 << 20))

    # --- header JSON that parses but lies
    for label, hdr in [
        ("header is a list", []),
        ("header is a string", "weights"),
        ("header is a number", 1),
        ("header is null", None),
        ("tensor info is a number", {first: 1}),
        ("tensor info empty", {first: {}}),
        ("no tensors", {}),
        ("metadata only", {"__metadata__": {"format": "pt"}}),
        ("metadata is a list", {"__metadata__": [], **tensors}),
    ]:
        yield label, with_header(hdr, data if hdr else b"")
    for label, field, value in [
        ("shape is a string", "shape", "8x576"),
        ("shape negative", "shape", [-8, 576]),
        ("shape of floats", "shape", [8.0, 576.0]),
        ("shape of bools", "shape", [True, 576]),
        ("offsets reversed", "data_offsets", "reverse"),
        ("offsets as strings", "data_offsets", "strings"),
        ("offsets one number", "data_offsets", "one"),
        ("offsets past the end", "data_offsets", "past"),
        ("offsets overlap", "data_offsets", "overlap"),
        ("offsets leave a gap", "data_offsets", "gap"),
        ("dtype I8", "dtype", "I8"),
        ("dtype I32 (same size)", "dtype", "I32"),
        ("dtype BOOL", "dtype", "BOOL"),
        ("dtype F8_E4M3", "dtype", "F8_E4M3"),
        ("dtype F64 (size lies)", "dtype", "F64"),
        ("dtype F16 (size lies)", "dtype", "F16"),
        ("dtype unknown", "dtype", "Q4_K"),
        ("dtype missing", "dtype", None),
    ]:
        yield label, with_header(_mutate(tensors, first, field, value, len(data)))
    dup = json.dumps(tensors)[:-1] + ", " + json.dumps({first: tensors[first]})[1:]
    yield "duplicate tensor name", with_header(dup.encode())
    yield "deeply nested header", with_header(b"[" * 100_000 + b"]" * 100_000)
    yield "invalid UTF-8 header", with_header(b'{"\xff\xfe": 1}')
    yield "NaN in header", with_header(b'{"x": NaN}')
    yield "trailing bytes", weights_bytes(raw + b"\0" * 64)
    yield "sparse 4 GB tail", with_files(lambda d: _grow(d / WEIGHTS, 4 * GB))

    # --- dtype and values
    ints = {k: v.view(np.int32) for k, v in good_arrays.items()}
    yield "int32 weights (same bytes)", with_tensors(ints)
    yield "uint8 weights", with_tensors({k: v.astype(np.uint8) for k, v in good_arrays.items()})
    names = sorted(good_arrays)
    positions = rng.sample(range(len(names)), min(len(names), 24 if long else 6))
    for i, pos in enumerate(positions):
        bad = dict(good_arrays)
        arr = bad[names[pos]].copy()
        value = [np.nan, np.inf, -np.inf][i % 3]
        arr.flat[rng.randrange(arr.size)] = value
        bad[names[pos]] = arr
        yield f"{value} in {names[pos]}", with_tensors(bad)
    yield (
        "NaN in float16 weights",
        with_tensors(
            {
                k: (v * np.nan if k == first else v).astype(np.float16)
                for k, v in good_arrays.items()
            }
        ),
    )

    # --- config rules (FACTS 10.3.4) and types
    for label, over in _config_overrides():
        cfg = {**config, **over}
        if over.get("__drop__"):
            cfg = {k: v for k, v in config.items() if k != over["__drop__"]}
        yield f"config {label}", with_config(cfg)
    for label, text in [
        ("empty", b""),
        ("truncated", json.dumps(config).encode()[:40]),
        ("not JSON", b"r = 8\nlora_alpha = 16\n"),
        ("a list", b"[]"),
        ("null", b"null"),
        ("a number", b"8"),
        ("invalid UTF-8", b'{"r": 8, "\xff": 1}'),
        ("UTF-16", json.dumps(config).encode("utf-16")),
        ("deeply nested", b"[" * 100_000 + b"]" * 100_000),
        ("trailing garbage", json.dumps(config).encode() + b"}}"),
        ("2 MB", json.dumps({**config, "pad": "x" * (2 << 20)}).encode()),
    ]:
        yield f"config file {label}", with_config(None, text)

    # --- tensors that do not fit this base model
    def rescaled(fn: Callable[[str, np.ndarray], np.ndarray | None]) -> dict[str, np.ndarray]:
        out = {}
        for k, v in good_arrays.items():
            new = fn(k, v)
            if new is not None:
                out[k] = new
        return out

    rank = int(config["r"])
    for label, fn in [
        ("hidden 64 (another model)", lambda k, v: _resize(v, k, 64)),
        ("hidden 1024 (another model)", lambda k, v: _resize(v, k, 1024)),
        ("A and B transposed", lambda k, v: v.T.copy()),
        ("B out dim + 1", lambda k, v: np.zeros((v.shape[0] + 1, v.shape[1]), v.dtype) if "lora_B" in k else v),
        ("3-D tensors", lambda k, v: v[None]),
        ("1-D tensors", lambda k, v: v.reshape(-1)),
        ("A/B ranks differ", lambda k, v: np.zeros((v.shape[0], 4), v.dtype) if "lora_B" in k else v),
        ("lora_B missing", lambda k, v: None if "lora_B" in k else v),
        ("lora_A missing", lambda k, v: None if "lora_A" in k else v),
        ("layer 0 only, q_proj missing", lambda k, v: None if "q_proj" in k else v),
    ]:  # fmt: skip
        yield f"tensors: {label}", with_tensors(rescaled(fn))
    for label, extra in [
        ("layer 30 (the model has 30)", "base_model.model.model.layers.30.self_attn.q_proj"),
        ("gpt2 module names", "base_model.model.transformer.h.0.attn.c_attn"),
        ("lm_head LoRA untargeted", "base_model.model.lm_head"),
    ]:
        arrays = dict(good_arrays)
        arrays[f"{extra}.lora_A.weight"] = np.zeros((rank, 576), np.float32)
        arrays[f"{extra}.lora_B.weight"] = np.zeros((576, rank), np.float32)
        yield f"tensors: {label}", with_tensors(arrays)
    for label, name in [
        ("full weight", "base_model.model.model.layers.0.self_attn.q_proj.weight"),
        ("modules_to_save copy", "base_model.model.lm_head.modules_to_save.default.weight"),
        ("embed_tokens full", "base_model.model.model.embed_tokens.weight"),
        ("path traversal name", "../../etc/passwd"),
        ("empty name", ""),
        ("RTL override name", "base_model.model.\u202eq_proj.lora_A.weight"),
        ("10k-char name", "x" * 10_000 + ".lora_A.weight"),
        ("NUL in name", "base_model.model.model.layers.0.self_attn.q_proj\x00.lora_A.weight"),
        ("DoRA magnitude", "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"),
        ("LoRA bias", "base_model.model.model.layers.0.self_attn.q_proj.lora_B.bias"),
    ]:  # fmt: skip
        arrays = {**good_arrays, name: np.zeros((576,), np.float32)}
        yield f"extra tensor: {label}", with_tensors(arrays)
    yield "no tensors at all", with_tensors({})
    # rank 32 everywhere (above the server's max) and rank 16 under a config that says 8
    yield (
        "tensors and config rank 32",
        with_tensors(rescaled(lambda k, v: _rerank(v, k, 32)), {**config, "r": 32}),
    )
    yield "tensors rank 16, config r=8", with_tensors(rescaled(lambda k, v: _rerank(v, k, 16)))
    yield "tensors rank 8, config r=4", with_config({**config, "r": 4})
    yield (
        "tensors rank 8, rank_pattern q_proj=16",
        with_config({**config, "rank_pattern": {"q_proj": 16}}),
    )

    # --- files: missing, pickles, symlinks, FIFOs, oversized, not a folder
    yield "no adapter_config.json", with_files(lambda d: (d / CONFIG).unlink())
    yield "no safetensors", with_files(lambda d: (d / WEIGHTS).unlink())
    yield "no files", with_files(lambda d: [p.unlink() for p in d.iterdir()])
    yield "adapter folder missing", lambda dest: None
    yield "adapter is a file", lambda dest: dest.write_bytes(raw)
    yield (
        "adapter is a symlink",
        lambda dest: (_copy(good, dest.with_name("real")), dest.symlink_to(dest.with_name("real"))),
    )  # noqa: E501
    yield "config is a folder", with_files(lambda d: ((d / CONFIG).unlink(), (d / CONFIG).mkdir()))
    yield (
        "weights is a folder",
        with_files(lambda d: ((d / WEIGHTS).unlink(), (d / WEIGHTS).mkdir())),
    )
    yield (
        "weights is a FIFO",
        with_files(lambda d: ((d / WEIGHTS).unlink(), os.mkfifo(d / WEIGHTS))),
    )
    yield "config is a FIFO", with_files(lambda d: ((d / CONFIG).unlink(), os.mkfifo(d / CONFIG)))
    yield "extra FIFO", with_files(lambda d: os.mkfifo(d / "stream"))
    # pickle protocol 4 of {"lora_A": [0.5, 1.0]}: written as bytes, never loaded (a pickle
    # load runs code; the preflight must refuse the file by its name alone)
    payload = (
        b"\x80\x04\x95#\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x06lora_A\x94]\x94(G?\xe0"
        b"\x00\x00\x00\x00\x00\x00G?\xf0\x00\x00\x00\x00\x00\x00es."
    )
    for label, name, keep in [
        ("adapter_model.bin instead", "adapter_model.bin", False),
        ("adapter_model.bin and safetensors", "adapter_model.bin", True),
        (".pt", "adapter_model.pt", True),
        (".pth", "adapter_model.pth", False),
        (".pkl", "weights.pkl", True),
        (".ckpt", "last.ckpt", True),
        (".BIN uppercase", "ADAPTER_MODEL.BIN", True),
        ("training_args.bin", "training_args.bin", True),
        ("nested .bin", "sub/adapter_model.bin", True),
        (".npy", "extra.npy", True),
        (".joblib", "model.joblib", True),
        ("symlink named .bin", "adapter_model.bin->link", True),
    ]:
        yield (
            f"pickle {label}",
            with_files(lambda d, name=name, keep=keep: _pickle(d, name, keep, payload)),
        )  # noqa: E501
    for label, link, to in [
        ("weights -> outside (absolute)", WEIGHTS, "{outside}"),
        ("weights -> outside (relative)", WEIGHTS, "../../outside.safetensors"),
        ("config -> /etc/passwd", CONFIG, "/etc/passwd"),
        ("extra -> /proc/self/root", "root", "/proc/self/root"),
        ("extra -> /dev/zero", "zero", "/dev/zero"),
        ("folder -> /", "sub", "/"),
        ("folder -> ..", "up", ".."),
        ("loop a <-> b", "a", "b"),
        ("self loop", "self", "self"),
        ("dangling", "gone", "nowhere"),
        ("chain inside -> outside", "hop", "hop2"),
    ]:
        yield f"symlink {label}", with_files(lambda d, link=link, to=to: _symlink(d, link, to))
    for label, name, size in [
        ("README 100 MB", "README.md", 100 << 20),
        ("tokenizer 1 GB", "tokenizer.json", GB),
        ("notes 64 GB", "notes.txt", 64 * GB),
        ("nested 2 GB", "sub/blob.dat", 2 * GB),
    ]:
        yield (
            f"oversized {label} (sparse)",
            with_files(lambda d, name=name, size=size: _sparse(d / name, size)),
        )  # noqa: E501
    yield "300 files", with_files(lambda d: [(d / f"f{i}.txt").touch() for i in range(300)])
    yield "base_model smaller-model shapes", with_tensors(rescaled(lambda k, v: _resize(v, k, 288)))


def _config_overrides() -> list[tuple[str, dict]]:
    over: list[tuple[str, dict]] = []
    over += [(f"r={r!r}", {"r": r}) for r in (17, 24, 32, 64, 128, 512, 4096, 2**31, 10**30)]
    over += [(f"r={r!r}", {"r": r}) for r in (0, -1, -8, "8", 8.0, True, None, [8], {"r": 8})]
    over += [
        ("rank_pattern q_proj=64", {"rank_pattern": {"q_proj": 64}}),
        ("rank_pattern is a list", {"rank_pattern": [["q_proj", 8]]}),
        ("rank_pattern rank '8'", {"rank_pattern": {"q_proj": "8"}}),
        ("lora_alpha missing", {"__drop__": "lora_alpha"}),
        ("lora_alpha null", {"lora_alpha": None}),
        ("lora_alpha a string", {"lora_alpha": "16"}),
        ("lora_alpha a list", {"lora_alpha": [16]}),
        ("alpha_pattern is a list", {"alpha_pattern": [1]}),
        ("r missing", {"__drop__": "r"}),
        ("target_modules missing", {"__drop__": "target_modules"}),
    ]
    over += [
        (f"peft_type {p!r}", {"peft_type": p})
        for p in ("IA3", "LOHA", "LOKR", "PREFIX_TUNING", "lora", None, 1)
    ]  # noqa: E501
    over += [
        ("use_dora", {"use_dora": True}),
        ("bias all", {"bias": "all"}),
        ("bias lora_only", {"bias": "lora_only"}),
        ("bias null", {"bias": None}),
        ("lora_bias", {"lora_bias": True}),
    ]
    over += [
        (f"modules_to_save {m!r}", {"modules_to_save": m})
        for m in (
            ["embed_tokens"],
            ["lm_head"],
            ["embed_tokens", "lm_head"],
            ["classifier"],
            "lm_head",
            5,
            {"a": 1},
            [None],
        )  # noqa: E501
    ]
    over += [
        (f"init {i}", {"init_lora_weights": i})
        for i in ("pissa", "pissa_niter_16", "olora", "corda", "loftq")
    ]  # noqa: E501
    over += [
        ("aLoRA", {"alora_invocation_tokens": [1, 2]}),
        ("layer_replication", {"layer_replication": [[0, 4]]}),
        ("BD-LoRA", {"use_bdlora": True}),
        ("QALoRA", {"use_qalora": True}),
    ]
    over += [
        (f"target_modules {t!r}", {"target_modules": t})
        for t in (
            ["c_attn"],
            ["q_proj"],
            ["q_proj", "v_proj", "k_proj"],
            [],
            5,
            "c_attn",
            "([",
            ["embed_tokens"],
            [1, 2],
            {"q_proj": 1},
        )  # noqa: E501
    ]
    over += [
        (f"base model {b!r}", {"base_model_name_or_path": b})
        for b in (
            "meta-llama/Llama-3.1-8B-Instruct",
            "",
            "gpt2",
            5,
            ["x"],
            "../../../etc/passwd",
            None,
            "smollm2\x00",
        )  # noqa: E501
    ]
    over += [("base model missing", {"__drop__": "base_model_name_or_path"})]
    return over


def _copy(good: Path, dest: Path) -> None:
    shutil.copytree(good, dest)


def _load(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))


def _mutate(tensors: dict, name: str, field: str, value: object, data_len: int) -> dict:
    out = {k: dict(v) for k, v in tensors.items()}
    start, end = out[name]["data_offsets"]
    if field != "data_offsets":
        if value is None:
            out[name].pop(field)
        else:
            out[name][field] = value
        return out
    other = next(k for k in sorted(out) if k != name and out[k]["data_offsets"][0] == end)
    out[name]["data_offsets"] = {
        "reverse": [end, start],
        "strings": [str(start), str(end)],
        "one": [end],
        "past": [start, data_len + 4],
        "overlap": [start, end],  # the next tensor starts 4 bytes early: two tensors share them
        "gap": [start, end],
    }[value]
    o_start, o_end = out[other]["data_offsets"]
    if value == "overlap":
        out[other]["data_offsets"] = [o_start - 4, o_end - 4]
    if value == "gap":
        out[name]["data_offsets"] = [start + 4, end + 4]
        out[other]["data_offsets"] = [o_start + 4, o_end + 4]
    return out


def _resize(v: np.ndarray, name: str, hidden: int) -> np.ndarray:
    """The same LoRA for a model with another hidden size (every 576 dim becomes ``hidden``)."""
    shape = tuple(hidden if d == 576 else d for d in v.shape)
    return np.zeros(shape, v.dtype) + 0.01


def _rerank(v: np.ndarray, name: str, rank: int) -> np.ndarray:
    shape = (rank, v.shape[1]) if "lora_A" in name else (v.shape[0], rank)
    return np.zeros(shape, v.dtype) + 0.01


def _grow(path: Path, size: int) -> None:
    with path.open("r+b") as f:
        f.truncate(size)


def _sparse(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.truncate(size)


def _pickle(d: Path, name: str, keep: bool, payload: bytes) -> None:
    if not keep:
        (d / WEIGHTS).unlink()
    if name.endswith("->link"):
        (d / "data.txt").write_bytes(payload)
        (d / name.removesuffix("->link")).symlink_to("data.txt")
        return
    (d / name).parent.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(payload)


def _symlink(d: Path, link: str, to: str) -> None:
    outside = d.parent.parent / "outside.safetensors"
    if not outside.exists():
        shutil.copy(d / WEIGHTS, outside)
    if link in (WEIGHTS, CONFIG):
        (d / link).unlink()
    if link == "hop":
        (d / "hop2").symlink_to(outside)
    (d / link).symlink_to(to.format(outside=outside))
