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


def schema_types(schema: Any) -> frozenset[str]:
    """The JSON types a schema allows (empty when it names none)."""
    if not isinstance(schema, Mapping):
        return frozenset()
    types: set[str] = set()
    t = schema.get("type")
    if isinstance(t, str):
        types.add(t)
    elif isinstance(t, (list, tuple)):
        types.update(x for x in t if isinstance(x, str))
    for v in schema.get("enum") or ():
        types.add(json_type(v))
    if "const" in schema:
        types.add(json_type(schema["const"]))
    for key in ("anyOf", "oneOf", "allOf"):
        for sub in schema.get(key) or ():
            types |= schema_types(sub)
    if schema.get("nullable") is True:
        types.add("null")
    return frozenset(types)


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
