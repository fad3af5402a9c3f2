"""The base of every kind's spec model: only values that PostgreSQL can store and every client can read back.

Each field's value is walked (iteratively, so no input can exhaust the stack): every string, key or value,
must be UTF-8 without lone surrogates and without NUL; numbers finite; objects and arrays hold only JSON
(as YAML could put dates in them), nest at most MAX_JSON_DEPTH levels and serialize to at most MAX_JSON_BYTES.
The database enforces the JSON limits too (models.base.json_limits); checking here first names the field,
before anything is written.
"""

from __future__ import annotations

import json
import math
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

from models.base import MAX_JSON_BYTES, MAX_JSON_DEPTH

JSON_SCALARS = (str, int, float, bool, type(None))


def problem(value: Any) -> str | None:
    """What makes `value` unfit to store, in words, or None."""
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if depth and not isinstance(item, (*JSON_SCALARS, dict, list)):
            return f"values must be JSON (text, numbers, true/false, null, objects, arrays), not {type(item).__name__}"
        if isinstance(item, float) and not math.isfinite(item):
            return f"numbers must be finite, not {item}"
        if isinstance(item, dict) and not all(isinstance(key, str) for key in item):
            return "keys must be text"
        if isinstance(item, str):
            if "\x00" in item:
                return "text must not contain NUL (\\u0000)"
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return "text must be valid Unicode: a lone surrogate such as \\ud800 is not"
        elif isinstance(item, dict | list):
            if depth + 1 > MAX_JSON_DEPTH:
                return f"objects and arrays may nest at most {MAX_JSON_DEPTH} levels deep"
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)
    if isinstance(value, dict | list) and len(json.dumps(value).encode()) > MAX_JSON_BYTES:
        return f"at most {MAX_JSON_BYTES // 1024} KiB of JSON"
    return None


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def storable(cls, value: Any, info: ValidationInfo) -> Any:
        said = problem(value)
        if said:
            raise ValueError(said)
        return value
