"""Typed, frozen configuration: YAML files plus repeatable `--set dotted.key=value` overrides.

The shared loader: each stage's schema lives with its stage (`<stage>/config.py`, subclasses of `Schema`); this
module loads YAML into them. Unknown keys, wrong types and missing values fail before any work with a message
that names the file (or the `--set` that caused it), the dotted key, and the nearest valid key. Relative paths in
a config are taken relative to the directory the command runs in.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from alpaca_ds.common.errors import UserError
from alpaca_ds.common.io import read_yaml_mapping


class Schema(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def load_config(
    schema: type[Schema],
    path: str | Path | None,
    overrides: tuple[str, ...] | list[str] = (),
    defaults: dict[str, Any] | None = None,
) -> Schema:
    """Load `path` (or only `defaults` when None), apply `--set` overrides, validate against `schema`."""
    data: dict[str, Any] = dict(defaults or {})
    source = "built-in defaults"
    if path is not None:
        source = str(path)
        loaded = read_yaml_mapping(path, "config")
        data = _deep_merge(data, loaded)
    from_set: dict[str, str] = {}
    for item in overrides:
        key, value = _parse_override(item)
        _set_dotted(data, key, value, item)
        from_set[key] = item
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        raise UserError(_explain(schema, e, source, from_set)) from None


def dump_config(config: Schema) -> str:
    """The resolved config as YAML, in schema order; loading it back gives an equal config."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {item!r}: expected dotted.key=value, e.g. --set max_length=1024")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    # Scalars stay text: the schema converts "1024" to an int where it wants one, and a hash such as
    # "0042" stays the string it is. YAML still gives lists, mappings and null.
    if isinstance(value, (bool, int, float)):
        value = raw
    return key.strip(), value


def _set_dotted(data: dict, key: str, value: Any, item: str) -> None:
    node = data
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"--set {item!r}: {'.'.join(parts[: i + 1])} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _fields_at(schema: type[BaseModel], loc: tuple) -> list[str]:
    """Valid keys of the (sub)schema that contains the key at `loc`."""
    model: Any = schema
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        annotation = getattr(field, "annotation", None)
        # an optional section (`lora: LoraConfig | None`) lists the keys of its schema
        annotation = next(
            (a for a in get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)), annotation
        )
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _explain(schema: type[Schema], error: ValidationError, source: str, from_set: dict[str, str]) -> str:
    lines = []
    for err in error.errors():
        loc = tuple(p for p in err["loc"])
        key = ".".join(str(p) for p in loc)
        where = f"--set {from_set[key]!r}" if key in from_set else source
        if err["type"] == "extra_forbidden":
            valid = _fields_at(schema, loc)
            near = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
            hint = f"; did you mean {'.'.join([*map(str, loc[:-1]), near[0]])!r}?" if near else ""
            lines.append(f"{where}: unknown key {key!r}{hint} (valid keys here: {', '.join(valid)})")
        elif err["type"] == "missing":
            lines.append(f"{where}: missing value for {key!r}; set it in the file or with --set {key}=...")
        else:
            lines.append(f"{where}: {key}: {err['msg']} (got {err.get('input')!r})")
    return f"invalid {schema.__name__} configuration:\n  " + "\n  ".join(lines)
