"""Dangerous calls, checked over the source (AST, not grep): no pickle, torch.load only with
weights_only=True, no yaml.load, no trust_remote_code=True, no shell=True, no eval/exec, and
secret-holding fields typed as SecretStr."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FILES = sorted([*(ROOT / "src").rglob("*.py"), *(ROOT / "flows").rglob("*.py")])
SECRET_NAME = re.compile(
    r"(^|_)(api_key|password|passphrase|token|secret_key|private_key|credentials)$|^secret$"
)


def _kw(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def findings(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out = []
    rel = path.relative_to(ROOT)
    for node in ast.walk(tree):
        where = f"{rel}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            if any(n.split(".")[0] in ("pickle", "dill", "cloudpickle", "marshal") for n in names):
                out.append(f"{where}: imports a pickle module")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name == "torch.load":
            wo = _kw(node, "weights_only")
            if not (isinstance(wo, ast.Constant) and wo.value is True):
                out.append(f"{where}: torch.load without weights_only=True")
        if name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load"):
            out.append(f"{where}: {name} (use yaml.safe_load)")
        if name in ("eval", "exec"):
            out.append(f"{where}: builtin {name}()")
        for flag in ("trust_remote_code", "shell"):
            value = _kw(node, flag)
            if isinstance(value, ast.Constant) and value.value is True:
                out.append(f"{where}: {flag}=True")
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for stmt in node.body:
                if (
                    isinstance(stmt, ast.AnnAssign)
                    and isinstance(stmt.target, ast.Name)
                    and SECRET_NAME.search(stmt.target.id)
                    and "SecretStr" not in ast.unparse(stmt.annotation)
                ):
                    out.append(f"{rel}:{stmt.lineno}: field {stmt.target.id} is not a SecretStr")
    return out


def test_no_dangerous_calls_in_the_source(reliability):
    problems = [p for f in FILES for p in findings(f)]
    reliability(trials=len(FILES), figure=f"{len(FILES)} files, {len(problems)} findings")
    assert not problems, "\n".join(problems)


def test_the_scanner_catches_what_it_claims(tmp_path, reliability):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import pickle\nimport torch, yaml, subprocess\n"
        "torch.load('x')\ntorch.load('x', weights_only=False)\nyaml.load(s)\n"
        "AutoModel.from_pretrained('m', trust_remote_code=True)\n"
        "subprocess.run('ls', shell=True)\neval('1')\n"
        "class S:\n    api_key: str\n    api_key_env: str\n"
    )
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        found = findings(bad)
    finally:
        ROOT = saved
    reliability(trials=8, figure=f"{len(found)}/8 planted problems found")
    assert len(found) == 8, found
