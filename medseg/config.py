"""Configuration: typed dataclasses, loaded from YAML, overridden from the command line with ``--set key=value``.

Every configurable step of medseg (training recipes, inference, pipelines) describes its settings as a dataclass.
A YAML file gives values for some fields; ``--set`` overrides use dotted keys into nested dataclasses
(``--set optimizer.lr=0.003``) and YAML syntax for values (``--set "patch_size=[96, 96, 96]"``). Loading checks
every key and converts every value to the field's type, so a typo fails early with a one-line
:class:`~medseg.errors.ConfigError` naming the file and key. The resolved configuration is written back as YAML into
each run folder.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import yaml

from medseg.errors import ConfigError, quote

T = TypeVar("T")

#: Most values a YAML document may expand to through its aliases (``*name``); a "billion laughs" bomb of a few
#: hundred bytes expands to billions and is refused before it is built.
MAX_YAML_VALUES = 100_000


def _expanded_size(root: yaml.Node) -> int:
    """Number of values the node graph expands to, each alias counted as a full copy (iterative, memoised)."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            sizes[id(node)] = 1
            continue
        if children_done:
            sizes[id(node)] = min(1 + sum(sizes[id(c)] for c in children), MAX_YAML_VALUES + 1)
        else:
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)
    return sizes[id(root)]


def safe_yaml(text: str, where: str | Path) -> Any:
    """Parse YAML with the safe loader (no Python tags), refusing alias bombs and absurd nesting.

    Raises:
        ConfigError: Invalid YAML (with line and column), aliases expanding beyond :data:`MAX_YAML_VALUES` values,
            or nesting too deep for the parser.
    """
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None and _expanded_size(node) > MAX_YAML_VALUES:
            raise ConfigError(f"the YAML expands to more than {MAX_YAML_VALUES} values through its aliases "
                              "(an alias bomb?)", where)
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"invalid YAML{at}: {getattr(exc, 'problem', None) or exc}", where) from None
    except RecursionError:
        raise ConfigError("the YAML nests too deeply to read", where) from None


def _convert(value: Any, hint: Any, key: str, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, key, where)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {quote(value)} fits none of {hint}", where)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: {quote(value)} is not one of {', '.join(map(repr, args))}", where)
        return value
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping of {hint.__name__} fields, got {quote(value)}", where)
        return from_dict(hint, value, where=where, prefix=f"{key}.")
    if origin in (list, tuple) or hint in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {quote(value)}", where)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}", where)
            return tuple(_convert(v, a, f"{key}[{i}]", where) for i, (v, a) in enumerate(zip(value, args, strict=True)))
        item = args[0] if args else Any
        converted = [_convert(v, item, f"{key}[{i}]", where) for i, v in enumerate(value)]
        return tuple(converted) if (origin or hint) is tuple else converted
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {quote(value)}", where)
        kt, vt = args if args else (Any, Any)
        return {_convert(k, kt, key, where): _convert(v, vt, f"{key}.{k}", where) for k, v in value.items()}
    if isinstance(hint, type) and issubclass(hint, Enum):
        try:
            return hint(value)
        except ValueError as exc:
            choices = ", ".join(str(m.value) for m in hint)
            raise ConfigError(f"{key}: {quote(value)} is not one of {choices}", where) from exc
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {quote(value)}", where)
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {quote(value)}", where)
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as text
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {quote(value)}", where)
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected text, got {quote(value)}", where)
    if hint is Path:
        if isinstance(value, str | Path):
            return Path(value)
        raise ConfigError(f"{key}: expected a path, got {quote(value)}", where)
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], *, where: str = "config", prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, converting values to the field types and rejecting unknown keys.

    Args:
        cls: The dataclass type.
        data: Field values; missing fields keep their defaults.
        where: Where the values came from (file name), for error messages.
        prefix: Dotted key prefix of nested dataclasses, for error messages.

    Raises:
        ConfigError: An unknown key, a value of the wrong type, or a required field without a value.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields))
        raise ConfigError(f"unknown key {prefix}{unknown[0]} (known keys: {known})", where)
    values = {}
    for name in fields:
        if name in data:
            values[name] = _convert(data[name], hints[name], f"{prefix}{name}", where)
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {exc}", where) from exc
    except ValueError as exc:  # __post_init__ validation
        raise ConfigError(str(exc), where) from exc


def to_dict(obj: Any) -> Any:
    """Plain YAML/JSON-friendly data of a dataclass (paths and enums as strings, tuples as lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, Enum):
        return obj.value
    return obj


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=[1, 2]"]`` into a nested mapping; values are parsed as YAML."""
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {quote(item)} is not of the form key=value", "--set")
        value = safe_yaml(raw, f"--set {key}") if raw.strip() else ""
        target = nested
        parts = key.split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ConfigError(f"override {quote(item)} conflicts with another override", "--set")
        target[parts[-1]] = value
    return nested


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dictionary merge: ``update`` wins; nested mappings merge key by key."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, raising :class:`ConfigError` with the file and line on any problem."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except (OSError, MemoryError) as exc:
        from medseg.utils.files import os_problem

        raise ConfigError(f"cannot read: {os_problem(exc)}", path) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text (byte {exc.start})", path) from None
    data = safe_yaml(text, path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping of settings, got {type(data).__name__}", path)
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: Iterable[str] = ()) -> T:
    """Defaults of ``cls``, then the YAML file at ``path`` (if any), then ``key=value`` overrides."""
    data = read_yaml(path) if path is not None else {}
    overrides = list(overrides)
    if overrides:
        data = merge(data, parse_overrides(overrides))
    where = str(path) if path is not None else "--set"
    return from_dict(cls, data, where=where)


def save_config(obj: Any, path: str | Path) -> Path:
    """Write a dataclass (or mapping) as YAML, keys in field order, atomically."""
    from medseg.utils.files import atomic_text

    return atomic_text(path, yaml.safe_dump(to_dict(obj), sort_keys=False))
