"""Load recipes from YAML, apply ``--set`` overrides, and report errors by YAML path.

Errors are collected, never raised one at a time: ``RecipeError.lines`` holds one
``<file>: <dotted.path>: <message>`` line per problem, which is what ``feinschliff validate``
prints. Overrides are merged into the raw YAML mapping *before* validation, so an override is
validated exactly like the file it changes.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from feinschliff.recipe import Recipe

SCHEMA_HEADER = "# yaml-language-server: $schema=./recipe.schema.json"


class RecipeError(ValueError):
    """A recipe that cannot be used; ``lines`` are ready to print."""

    def __init__(self, lines: list[str]):
        super().__init__("\n".join(lines))
        self.lines = lines


class _RecipeYaml(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false. YAML 1.1's yes/no/on/off turned documented string
    values into booleans (`pii: {mode: off}` failed with "got False"); a boolean field still
    accepts them, as pydantic reads "off" as False there."""


_RecipeYaml.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_RecipeYaml.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def parse_yaml(text: str) -> Any:
    """A recipe's YAML (or a ``--set`` value), with YAML 1.2 booleans."""
    # what yaml.safe_load does, with the SafeLoader subclass above (yaml.load is banned here)
    loader = _RecipeYaml(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Read, override and validate a recipe file.

    Raises:
        RecipeError: with one line per problem, each naming the file and the dotted path.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        # e.g. a use case's name where a command takes its recipe (`registry reconcile NAME`)
        hint = "" if path.suffix in (".yaml", ".yml") else " (give the recipe's YAML file)"
        raise RecipeError([f"{path}: no such recipe file{hint}"]) from None
    except OSError as exc:
        raise RecipeError([f"{path}: cannot read: {exc.strerror}"]) from exc
    except UnicodeDecodeError as exc:
        raise RecipeError([f"{path}: cannot read: {_not_utf8(exc)}"]) from None
    try:
        data = parse_yaml(text)
        lines_by_path, duplicates = _line_numbers(text)
    except yaml.YAMLError as exc:
        raise RecipeError([f"{path}: (yaml): {_yaml_problem(exc)}"]) from exc
    if duplicates:  # the YAML parser keeps the last one: a whole section could vanish unseen
        raise RecipeError(
            [f"{path}: {d}: duplicate key (line {n}; first at line {f})" for d, n, f in duplicates]
        )
    if not isinstance(data, dict):
        raise RecipeError([f"{path}: (root): a recipe must be a YAML mapping"])
    errors = []
    if overrides:  # a YAML alias is the same object: --set on one place would change all of them
        data = _unshare(data)
    for item in overrides:
        try:
            apply_override(data, item)
        except ValueError as exc:
            errors.append(f"{path}: --set {item}: {exc}")
        # an overridden value has no line in the file: say where it came from instead
        key = item.split("=", 1)[0].strip()
        for dotted in [d for d in lines_by_path if d == key or d.startswith(key + ".")]:
            del lines_by_path[dotted]
        lines_by_path[key] = 0
    if errors:
        raise RecipeError(errors)
    try:
        return Recipe.model_validate(data, context={"base_dir": path.parent.resolve()})
    except ValidationError as exc:
        raise RecipeError(list(format_errors(path, exc, data, lines_by_path))) from None


def apply_override(data: dict[str, Any], item: str) -> None:
    """Apply one ``dotted.path=value`` override in place; the value is parsed as YAML."""
    if "=" not in item:
        raise ValueError("expected dotted.path=value")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ValueError(f"bad path {key!r}")
    try:
        value = parse_yaml(raw) if raw.strip() else ""
        duplicates = _line_numbers(raw)[1] if raw.strip() else []
    except yaml.YAMLError as exc:
        raise ValueError(f"invalid YAML value: {_one_line(str(exc))}") from None
    if duplicates:
        raise ValueError(f"duplicate key {duplicates[0][0]!r} in the value")
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        nxt = _child(node, part)
        if nxt is None:
            nxt = {}
            _set_child(node, part, nxt, ".".join(parts[: i + 1]))
        node = nxt
    _set_child(node, parts[-1], value, key)


def _unshare(node: Any) -> Any:
    """A copy in which no mapping or list appears twice (``copy.deepcopy`` keeps aliases)."""
    if isinstance(node, dict):
        return {k: _unshare(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_unshare(v) for v in node]
    return node


def _child(node: Any, part: str) -> Any:
    if isinstance(node, list):
        idx = int(part) if part.isdigit() else None
        return node[idx] if idx is not None and idx < len(node) else None
    if isinstance(node, dict):
        return node.get(part)
    return None


def _set_child(node: Any, part: str, value: Any, where: str) -> None:
    if isinstance(node, dict):
        node[part] = value
    elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
        node[int(part)] = value
    elif isinstance(node, list) and part.isdigit() and int(part) == len(node):
        node.append(value)  # `gate.rules.<len>=...` adds a rule
    elif isinstance(node, list):
        raise ValueError(
            f"cannot set {where!r}: {part!r} is not an index of a list of {len(node)} "
            f"(0-{len(node) - 1} replace an item, {len(node)} appends one)"
        )
    else:
        raise ValueError(f"cannot set {where!r}: its parent is not a mapping or list")


def format_errors(
    path: Path | str, exc: ValidationError, data: Any, lines: dict[str, int], prefix: str = ""
) -> Iterable[str]:
    """One line per error: ``path: yaml.path: message (line N)``; ``prefix`` is the path of
    ``data`` inside a recipe (e.g. ``feedback`` when only that section was validated)."""
    said = set()  # the members of a union often report the same error
    for err in exc.errors(include_url=False):
        dotted = ".".join(p for p in (prefix, yaml_path(err["loc"], data, err["type"])) if p)
        msg = err["msg"]
        if err["type"] == "union_tag_invalid":  # name the discriminator key itself
            dotted = ".".join(p for p in (dotted, str(err["ctx"]["discriminator"]).strip("'")) if p)
        if err["type"] == "extra_forbidden":
            msg = "unknown key (typo? see `feinschliff schema`)"
        elif err["type"] == "union_tag_invalid":
            msg = _one_line(msg)
        elif (
            "input" in err
            and err["type"] not in ("missing",)
            and not isinstance(err["input"], dict)
        ):
            msg = f"{msg} (got {err['input']!r})"
        msg = msg.removeprefix("Value error, ")
        if named := _CROSS_FIELD.match(msg):  # a cross-field rule's path, below the model's
            dotted = ".".join(p for p in (dotted, named["path"]) if p)
            msg = named["msg"]
        line = lines.get(dotted)
        if line is None and any(lines.get(a) == 0 for a in _ancestors(dotted)):
            line = 0  # inside a value that --set replaced
        if line is None and any(v == 0 and k.startswith(f"{dotted}.") for k, v in lines.items()):
            line = 0  # above a key --set made (`--set nosuch.key=1`: `nosuch` is unknown)
        where = f" (line {line})" if line else " (from --set)" if line == 0 else ""
        line = f"{path}: {dotted or '(recipe)'}: {_one_line(msg)}{where}"
        if line not in said:
            said.add(line)
            yield line


_NAMES_A_KEY = ("missing", "extra_forbidden", "union_tag_invalid", "union_tag_not_found")
# "Value error, gate.rules.0.metric: ..." raised by a Recipe-level validator
_CROSS_FIELD = re.compile(
    r"^(?:Value error, )?(?P<path>[a-z_]+(?:\.[a-z0-9_]+)+): (?P<msg>.*)", re.S
)


def _ancestors(dotted: str) -> list[str]:
    parts = dotted.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def yaml_path(loc: Sequence[int | str], data: Any, kind: str = "missing") -> str:
    """Map a pydantic error location onto the user's YAML path.

    Discriminated unions insert the tag (``train.sft.learning_rate``) and validators may insert
    function or type labels (``literal['all-linear']``); none is a key the user wrote, so
    location parts that do not exist in the data are dropped. The last one is kept when the
    error ``kind`` says it names a key: a missing or an unknown one.
    """
    parts: list[str] = []
    node = data
    for i, item in enumerate(loc):
        last = i == len(loc) - 1
        if (
            isinstance(node, list)
            and isinstance(item, int)
            and item < len(node)
            or isinstance(node, dict)
            and item in node
        ):
            parts.append(str(item))
            node = node[item]
        elif last and kind in _NAMES_A_KEY:
            parts.append(str(item))
    return ".".join(parts)


def _line_numbers(text: str) -> tuple[dict[str, int], list[tuple[str, int, int]]]:
    """Dotted path -> 1-based line number, from the YAML node tree; and the keys given twice
    in one mapping as (dotted path, line, first line). A key next to a merge (``<<:``)
    overrides the merged one, as YAML means it: not a duplicate."""
    out: dict[str, int] = {}
    duplicates: list[tuple[str, int, int]] = []
    # the recipe's own resolvers (YAML 1.2 booleans), and keys compared by their loaded value:
    # `1:` and `01:`, `~:` and `null:` are one key to the loader, so the last one would win
    loader = _RecipeYaml(text)
    try:
        root = loader.get_single_node()
    finally:
        loader.dispose()

    def identity(key: Any) -> Any:
        try:
            value = loader.construct_object(key, deep=True)
            hash(value)
        except Exception:  # an unhashable or odd key: its tag and text
            return (key.tag, key.value)
        return (type(value).__name__, value)

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key, val in node.value:
                name = f"{prefix}.{key.value}" if prefix else str(key.value)
                line = key.start_mark.line + 1
                if key.tag != "tag:yaml.org,2002:merge" and isinstance(key, yaml.ScalarNode):
                    ident = identity(key)
                    if ident in seen:
                        duplicates.append((name, line, seen[ident]))
                    else:
                        seen[ident] = line
                out[name] = line
                walk(val, name)
        elif isinstance(node, yaml.SequenceNode):
            for i, val in enumerate(node.value):
                name = f"{prefix}.{i}" if prefix else str(i)
                out[name] = val.start_mark.line + 1
                walk(val, name)

    if root is not None:
        walk(root, "")
    return out, duplicates


def _not_utf8(exc: UnicodeDecodeError) -> str:
    where = exc.start
    line = exc.object[:where].count(b"\n") + 1
    return (
        f"not UTF-8 (byte 0x{exc.object[where]:02x} at offset {where}, line {line}): "
        "save the recipe as UTF-8"
    )


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """``line L, column C: problem (context)`` in the file's terms, without PyYAML's
    ``in "<unicode string>"`` and echoed source snippets."""
    mark = getattr(exc, "problem_mark", None)
    if mark is None:
        return _one_line(str(exc))
    problem = getattr(exc, "problem", None) or "invalid YAML"
    context, at = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    where = f" at line {at.line + 1}" if at is not None and at.line != mark.line else ""
    said = f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    said += f" ({context}{where})" if context else ""
    return said + ("; indent with spaces, not tabs" if "'\\t'" in problem else "")


def dump_resolved(recipe: Recipe) -> str:
    """The fully resolved recipe (defaults filled in) as YAML, as the flow stores it."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def section_hash(recipe: Recipe, *sections: str) -> str:
    """Content hash of some recipe sections: the cache key part a stage depends on."""
    payload = {s: recipe.model_dump(mode="json").get(s) for s in sections}
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()


def recipe_hash(recipe: Recipe) -> str:
    return section_hash(recipe, *Recipe.model_fields)


def recipe_json_schema() -> dict[str, Any]:
    schema = Recipe.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "feinschliff recipe"
    return schema
