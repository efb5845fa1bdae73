"""A PEFT ``adapter_config.json`` whose bytes depend on the training only, not the process.

PEFT keeps ``target_modules`` (and ``exclude_modules``; ``all-linear`` expanded) as Python
sets and writes them as ``list(set)``: the order follows string hashing, which differs per
process (``PYTHONHASHSEED``). Two trainings with byte-identical weights then got different
adapter hashes, and the registry added a second version of the same adapter. The order means
nothing to PEFT or vLLM (names are matched, not indexed), so every list of module names is
written sorted, in PEFT's own JSON layout.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

CONFIG_NAME = "adapter_config.json"


def _is_name_list(key: str, value: object) -> bool:
    """A list of module or parameter names: ``target_modules``, ``exclude_modules``,
    ``modules_to_save``, ``target_parameters`` and their variants (``*_modules``)."""
    named = key.endswith("_modules") or key in ("modules_to_save", "target_parameters")
    return named and isinstance(value, list) and all(isinstance(v, str) for v in value)


def sort_adapter_config(folder: Path) -> None:
    """Rewrite ``folder/adapter_config.json`` with its module-name lists sorted (nothing when
    there is no such file). Written to a temp file and renamed: a kill leaves either file."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        return
    text = path.read_text(encoding="utf-8")
    config = json.loads(text)
    for key, value in config.items():
        if _is_name_list(key, value):
            config[key] = sorted(value)
    # PEFT's layout (PeftConfig.save_pretrained): indent 2, sorted keys, no final newline
    new = json.dumps(config, indent=2, sort_keys=True)
    if new == text:
        return
    tmp = path.with_name(f".{CONFIG_NAME}.{os.getpid()}.tmp")
    try:
        tmp.write_text(new, encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
