"""Options given as JSON text, read into values or models with errors in the user's terms.

pydantic reports a bad option as "1 validation error for tagged-union[FilesSource,...]
Invalid JSON: key must be a string at line 1 column 2". The user typed ``--source``; the
answer names that option, says what is wrong in its words, and shows a valid example.
Every error here is a ``RequestError`` (a refusal: one line, no traceback, no retry).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import TypeAdapter, ValidationError

from tasks.errors import RequestError

__all__ = ["loads_json", "validate", "validation_message"]

_SOURCE_KINDS = frozenset({"files", "zarr", "icechunk", "python", "synthetic"})
_JSON_RULES = "JSON needs double quotes around every key and string, and no trailing commas"


def loads_json(name: str, text: str, example: str, *, expect_object: bool = True) -> Any:
    """``text`` parsed as JSON; ``name`` is how the user gave it (``--source``, ``source``)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise RequestError(
            f"{name} is not valid JSON ({err.msg} at line {err.lineno} column {err.colno}); "
            f"{_JSON_RULES}, e.g. {name} '{example}'"
        ) from None  # the decoder's own traceback says nothing more
    if expect_object and not isinstance(value, dict):
        raise RequestError(
            f"{name} must be a JSON object ({{...}}), not {type(value).__name__} "
            f"{_short(json.dumps(value))}; e.g. {name} '{example}'"
        )
    return value


def validate(name: str, adapter: TypeAdapter[Any], value: Any, example: str) -> Any:
    """``value`` validated by ``adapter``; a RequestError in the user's terms if it does not fit."""
    try:
        return adapter.validate_python(value)
    except ValidationError as err:
        raise RequestError(validation_message(name, err, example)) from None


def validation_message(name: str, err: ValidationError, example: str) -> str:
    """One sentence per problem pydantic found, named by the JSON key at fault."""
    problems = [_problem(item) for item in err.errors(include_url=False)]
    listed = "; ".join(dict.fromkeys(problems))  # a union can report one problem twice
    return f"{name} is not valid: {listed}; e.g. {name} '{example}'"


def _problem(item: Any) -> str:
    kind = item["type"]
    ctx = item.get("ctx") or {}
    # The first element of a tagged union's location is the tag (e.g. "synthetic"), not a key.
    loc = [str(part) for part in item["loc"]]
    if len(loc) > 1 and loc[0] in _SOURCE_KINDS:
        loc = loc[1:]
    # Unions add the member they tried (e.g. "tuple[int, int]") to the location: not a key.
    loc = [part for part in loc if not any(c in part for c in "[(,")]
    where = ".".join(loc)
    if kind == "union_tag_not_found":
        return f"it needs a {ctx.get('discriminator', 'kind')} key"
    if kind == "union_tag_invalid":
        return (
            f"{ctx.get('discriminator', 'kind')} {ctx.get('tag')!r} is not one of "
            f"{ctx.get('expected_tags')}"
        )
    if kind == "extra_forbidden":
        return f"{where!r} is not a known key (misspelt?)"
    if kind == "missing":
        return f"{where!r} is required"
    message = str(item["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    message = message.replace("Input should be", "should be")
    value = item.get("input")
    shown = (
        f" (got {_short(json.dumps(value, default=str))})"
        if kind.endswith(("_type", "_parsing"))
        else ""
    )
    return f"{where}: {message}{shown}" if where else message


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
