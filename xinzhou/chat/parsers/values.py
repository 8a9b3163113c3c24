"""Typed tool-call parameter values: M2 writes strings raw and everything else as JSON, so the tool's JSON schema
decides how the text between `<parameter>` tags is read back.

Rules (each fixes a bug seen in other parsers, see shared/reference/interleaved.md §6.4):
- a parameter whose allowed types include "string" keeps its text verbatim unless another allowed type reads it
  exactly: `["string", "null"]` gives None only for the literal `null`; "none", "02134", "true" stay strings
  when the schema says string only;
- order of attempts: null, boolean, integer, number, object/array (JSON), then string;
- types come from `type` (a name or a list), `enum`/`const` values, `anyOf`/`oneOf`/`allOf`, `nullable: true`;
- no schema, or a schema that names no type, means string (M2's convention);
- a value that fits none of the allowed types is returned as parsed JSON if it is JSON, else the raw text,
  with a problem description for the caller to report.

Schemas come from clients and are often sloppy, and the streaming parser must never raise because of one, so
reading a schema is best effort and never fails:
- type names are matched case-insensitively, and common aliases are understood (`str`/`text` -> string,
  `int`/`long` -> integer, `float`/`double` -> number, `bool` -> boolean, `dict` -> object, `list` -> array);
  other unknown names are ignored;
- a bare type name or list of names where a schema should be (`"properties": {"n": "integer"}`) is read as `type`,
  and a single schema object where `anyOf`/`oneOf`/`allOf` want an array as a one-element array;
- anything else malformed (a tool schema that is not an object, `properties` that is not an object, `enum` or
  `anyOf` that is neither, non-string entries in a `type` list, `$ref`s, cycles) contributes no type; a
  parameter left with no type keeps its raw string, with no problem reported.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

_INT_RE = re.compile(r"-?(?:0|[1-9][0-9]*)")
_NUMBER_RE = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|NaN|-?Infinity")


def json_type(value: Any) -> str:
    """The JSON schema type name of a Python value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    return "object"


_KNOWN_TYPES = frozenset({"string", "integer", "number", "boolean", "null", "object", "array"})
_TYPE_ALIASES = {"str": "string", "text": "string", "int": "integer", "long": "integer", "float": "number",
                 "double": "number", "bool": "boolean", "dict": "object", "list": "array"}
_MAX_SCHEMAS = 1000  # sub-schemas read per schema; a larger (hostile) one contributes no more types


def _type_name(name: Any) -> str | None:
    """The JSON type a `type` entry names, or None for anything unknown or not a string."""
    if not isinstance(name, str):
        return None
    name = name.strip().lower()
    name = _TYPE_ALIASES.get(name, name)
    return name if name in _KNOWN_TYPES else None


def _items(value: Any) -> tuple[Any, ...]:
    """The entries of a JSON array (a mapping counts as a one-element array); () for anything else."""
    if isinstance(value, Mapping):
        return (value,)
    return tuple(value) if isinstance(value, (list, tuple)) else ()


def schema_types(schema: Any) -> frozenset[str]:
    """The JSON types a schema allows (empty when it names none). Never raises: malformed parts are skipped (see
    the module docstring)."""
    types: set[str] = set()
    stack, seen = [schema], set()
    while stack and len(seen) < _MAX_SCHEMAS:  # iterative: deep nesting cannot overflow the Python stack
        s = stack.pop()
        if isinstance(s, (str, list, tuple)):  # a type name (or names) given in place of a schema
            s = {"type": s}
        if not isinstance(s, Mapping) or id(s) in seen:
            continue
        seen.add(id(s))  # each sub-schema is read once: cycles and shared sub-schemas cost nothing more
        t = s.get("type")
        types.update(n for n in map(_type_name, t if isinstance(t, (list, tuple)) else (t,)) if n is not None)
        enum = s.get("enum")
        if isinstance(enum, (list, tuple)):
            types.update(json_type(v) for v in enum)
        if "const" in s:
            types.add(json_type(s["const"]))
        for key in ("anyOf", "oneOf", "allOf"):
            stack.extend(_items(s.get(key)))
        if s.get("nullable") is True:
            types.add("null")
    return frozenset(types)


def parameter_schema(parameters: Any, name: str) -> Any:
    """The schema of parameter `name` in a tool's `parameters` schema; None when there is none or the tool
    schema is malformed (not an object, `properties` missing or not an object)."""
    if not isinstance(parameters, Mapping):
        return None
    props = parameters.get("properties")
    return props.get(name) if isinstance(props, Mapping) else None


def _loads(text: str) -> tuple[bool, Any]:
    try:
        return True, json.loads(text)
    except (ValueError, RecursionError):  # ValueError covers JSONDecodeError and over-long integers
        return False, None


def convert_value(raw: str, schema: Any) -> tuple[Any, str | None]:
    """`(value, problem)`: the typed value of parameter text `raw` under `schema`; problem is None when it fits."""
    types = schema_types(schema) or frozenset({"string"})
    s = raw.strip()
    if "null" in types and s == "null":
        return None, None
    if "boolean" in types and s in ("true", "false"):
        return s == "true", None
    if ("integer" in types or "number" in types) and _NUMBER_RE.fullmatch(s):
        ok, v = _loads(s)
        if ok and "integer" in types and _INT_RE.fullmatch(s):
            return v, None
        if ok and "number" in types:
            return v, None
        if ok and isinstance(v, float) and v.is_integer():  # integer schema, "3.0"
            return int(v), None
    if "object" in types or "array" in types:
        ok, v = _loads(s)
        if ok and (isinstance(v, dict) and "object" in types or isinstance(v, list) and "array" in types):
            return v, None
    if "string" in types:
        return raw, None
    ok, v = _loads(s)
    problem = f"{s[:60]!r} is not of type {' | '.join(sorted(types))}"
    return (v if ok else raw), problem
