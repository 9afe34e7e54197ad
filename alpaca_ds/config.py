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
from omegaconf import OmegaConf
from pydantic import BaseModel, ConfigDict, ValidationError

from alpaca_ds.common.errors import UserError
from alpaca_ds.common.io import read_yaml_mapping


class Schema(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SectionError(ValueError):
    """Raised by a validator when a section of its config failed another schema (the quickstart's stage sections):
    explained like the outer config's own errors, with the section's dotted prefix and that schema's valid keys."""

    def __init__(self, prefix: str, schema: type[Schema], error: ValidationError):
        super().__init__(f"{prefix}: {error}")
        self.prefix, self.schema, self.error = prefix, schema, error


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
        data = merge(data, read_yaml_mapping(path, "config"))
    from_set: dict[str, str] = {}
    for item in overrides:
        key, value = _parse_override(item)
        data = _set_dotted(data, key, value, item)
        from_set[key] = item
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        raise UserError(_explain(schema, e, source, from_set)) from None


def dump_config(config: Schema) -> str:
    """The resolved config as YAML, in schema order; loading it back gives an equal config."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def merge(*mappings: dict) -> dict:
    """Deep merge, later mappings winning (OmegaConf's merge; strings are kept as written, `${...}` included)."""
    merged = OmegaConf.merge(*(OmegaConf.create(m) for m in mappings))
    return OmegaConf.to_container(merged, resolve=False)


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


def _set_dotted(data: dict, key: str, value: Any, item: str) -> dict:
    """`data` with the dotted `key` set (OmegaConf's update: a mapping value is merged into the section there)."""
    parts = key.split(".")
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        node = node.get(part) if isinstance(node, dict) else None
        if node is not None and not isinstance(node, dict):
            raise UserError(f"--set {item!r}: {'.'.join(parts[: i + 1])} is a value, not a section")
    config = OmegaConf.create(data)
    OmegaConf.update(config, key, value, merge=True)
    return OmegaConf.to_container(config, resolve=False)


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
    lines = "\n  ".join(_problems(schema, error, source, from_set, ()))
    return f"invalid {schema.__name__} configuration:\n  {lines}"


def _problems(schema, error: ValidationError, source: str, from_set: dict[str, str], prefix: tuple) -> list[str]:
    lines = []
    for err in error.errors():
        inner = err.get("ctx", {}).get("error")
        if isinstance(inner, SectionError):  # a section checked against its own schema: its keys, with its prefix
            section = (*prefix, *inner.prefix.split("."))
            lines += _problems(inner.schema, inner.error, source, from_set, section)
            continue
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in (*prefix, *loc))
        where = f"--set {from_set[key]!r}" if key in from_set else source
        if err["type"] == "extra_forbidden":
            valid = _fields_at(schema, loc)
            near = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
            hint = f"; did you mean {'.'.join([*map(str, (*prefix, *loc[:-1])), near[0]])!r}?" if near else ""
            lines.append(f"{where}: unknown key {key!r}{hint} (valid keys here: {', '.join(valid)})")
        elif err["type"] == "missing":
            lines.append(f"{where}: missing value for {key!r}; set it in the file or with --set {key}=...")
        elif not key:  # a check of the whole config: its message starts with the keys it is about
            message = err["msg"].removeprefix("Value error, ")
            named = [from_set[k] for k in message.partition(": ")[0].split(", ") if k in from_set]
            lines.append(f"{f'--set {named[0]!r}' if named else where}: {message}")
        else:
            lines.append(f"{where}: {key}: {err['msg']} (got {err.get('input')!r})")
    return lines
