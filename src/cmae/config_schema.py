"""Values typed against a dataclass schema: YAML presets (with `base:`) and `key=value` overrides laid
onto nested dataclasses, each value converted to its field's annotation (`int`, `float`, `list[float]`,
`Literal` choices, unions) or refused with a ConfigError that names the key.

The machinery under `cmae.config`, on the same bottom floor: it knows no key of cmae's config and
imports nothing of cmae but the errors.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from cmae.errors import ConfigError


def check_value(key: str, value: Any, annotation: Any) -> Any:
    """Return `value` converted to `annotation` or raise ConfigError naming `key`."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(annotation):
            try:
                return check_value(key, value, option)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0])
    if annotation is type(None):
        if value is None:
            return None
    elif origin is list:
        (item_type,) = typing.get_args(annotation)
        if isinstance(value, (list, tuple)):
            return [check_value(f"{key}[{i}]", item, item_type) for i, item in enumerate(value)]
    elif origin is Literal:
        choices = typing.get_args(annotation)
        if isinstance(value, str) and value in choices:
            return value
        raise ConfigError(f"config key '{key}' must be one of {', '.join(choices)}, got {value!r}")
    elif annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    else:  # pragma: no cover - a schema type this checker does not know
        raise TypeError(f"unsupported config type {annotation} for {key}")
    name = getattr(annotation, "__name__", str(annotation))
    raise ConfigError(f"config key '{key}' expects {name}, got {value!r} ({type(value).__name__})")


def apply_values(section: Any, values: dict[str, Any], prefix: str) -> None:
    hints = typing.get_type_hints(type(section))
    for name, value in values.items():
        key = f"{prefix}{name}"
        if name not in hints:
            known = ", ".join(prefix + k for k in hints)
            close = difflib.get_close_matches(name, list(hints), n=1)
            hint = f"did you mean '{prefix}{close[0]}'? " if close else ""
            raise ConfigError(f"unknown config key '{key}' ({hint}known: {known})")
        current = getattr(section, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{key}' is a section and needs a mapping, got {value!r}")
            apply_values(current, value, key + ".")
        else:
            setattr(section, name, check_value(key, value, hints[name]))


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b=value` -> ("a.b", YAML-parsed value), so `2` is an int and `[0.5, 1]` a list."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        raise ConfigError(f"override {text!r}: cannot parse the value ({error})") from None
    return key.strip(), value


# the presets shipped inside the package (the repository's configs/ links here)
PRESETS = Path(__file__).resolve().parent / "configs"


def find_preset(path: str | Path) -> Path:
    """A file that exists, else a packaged preset by name: `demo/videomae`, `configs/demo/videomae.yaml`
    or `demo/videomae.yaml` all find PRESETS/demo/videomae.yaml, from any folder."""
    path = Path(path)
    if path.is_file() or path.is_absolute():
        return path
    name = path.as_posix().removeprefix("configs/")
    for candidate in (PRESETS / name, PRESETS / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    return path


def list_presets() -> list[tuple[str, str]]:
    """(name, the first comment line of the file) of every packaged preset."""
    found = []
    for path in sorted(PRESETS.rglob("*.yaml")):
        first = next((line for line in path.read_text().splitlines() if line.startswith("#")), "")
        found.append((path.relative_to(PRESETS).with_suffix("").as_posix(), first.lstrip("# ").strip()))
    return found


def read_preset(path: str | Path, _children: tuple[Path, ...] = ()) -> list[tuple[Path, dict[str, Any]]]:
    """The YAML mappings of `path` and of the presets it inherits (`base: other.yaml`, relative
    to its folder), root first: each is laid over the one before."""
    path = find_preset(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}" + (f" (the base of {_children[-1]})" if _children else "")
                          + ("" if _children else "; give a path, or a packaged preset's name (cmae presets lists them)"))
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    base = values.pop("base", None)
    if base is None:
        return [(path, values)]
    base_path = (path.parent / str(base)).resolve()
    if base_path in (*_children, path.resolve()):
        raise ConfigError(f"{path}: base {base!r} makes a cycle")
    return [*read_preset(base_path, (*_children, path.resolve())), (path, values)]


def reject_expanded_braces(parsed: list[tuple[str, Any]]) -> None:
    """An unquoted `data.train=DIR/shard-{000000..000099}.tar` reaches us as 100 overrides, one
    shard each, of which the last would silently win: refuse, and say to quote it."""
    shards: dict[str, list[str]] = {}
    for key, value in parsed:
        if isinstance(value, str) and value.endswith(".tar"):
            shards.setdefault(key, []).append(value)
    for key, values in shards.items():
        if len(values) > 1:
            raise ConfigError(f"{key} is given {len(values)} times ({values[0]}, {values[1]}, ...): the shell "
                              f"expanded a brace pattern; quote it: '{key}=DIR/shard-{{000000..000099}}.tar'")
