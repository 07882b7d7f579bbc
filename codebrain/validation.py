"""A pydantic validation error as the lines a user reads: `path.of.key: the value and what is allowed`.

The path is the key's place in the config as written: the tag pydantic adds where a tagged union (an experiment's
`method`) picked the model is left out, and an unknown key comes with the keys its section allows.
"""

from __future__ import annotations

import re
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError


def unwrap(kind: Any, tag: str | None = None) -> Any:
    """Annotated[X, ...] -> X; X | None -> X; a tagged union -> the member whose `method` default is `tag`."""
    while get_origin(kind) is Annotated:
        kind = get_args(kind)[0]
    if get_origin(kind) in (Union, UnionType):
        members = [unwrap(m) for m in get_args(kind) if m is not type(None)]
        kind = next((m for m in members if tag and getattr(m, "model_fields", {}).get("method")
                     and m.model_fields["method"].default == tag), members[0])
    return kind


def walk(root: Any, loc: tuple) -> tuple[list, Any]:
    """(the path as written, the type at its end) of a pydantic error location under the model `root`."""
    path, current = [], root
    for key in loc:
        if get_origin(current) is Annotated and get_origin(get_args(current)[0]) in (Union, UnionType):  # the tag
            current = unwrap(current, key)
            continue
        path.append(key)
        current = unwrap(current)
        if get_origin(current) is dict:
            current = get_args(current)[1]
        elif isinstance(current, type) and issubclass(current, BaseModel) and key in current.model_fields:
            current = current.model_fields[key].annotation
        else:
            current = None
    return path, unwrap(current)


def error_line(error: dict, root: Any, prefix: tuple = ()) -> str:
    """One error as `path: what is wrong`."""
    loc, model = walk(root, error["loc"])
    loc = [*prefix, *loc]
    path = ".".join(map(str, loc)) or "(top level)"
    kind, value = error["type"], error.get("input")
    if kind == "literal_error":
        return f"{path}: {value!r} is not one of {error['ctx']['expected'].replace(' or ', ', ').replace(chr(39), '')}"
    if kind == "extra_forbidden":
        _, section = walk(root, error["loc"][:-1])
        return f"{path}: unknown key (allowed keys: {', '.join(sorted(getattr(section, 'model_fields', {})))})"
    if kind == "missing":
        return f"{path}: required key missing"
    if kind == "union_tag_invalid":
        return f"{path}.method: {error['ctx']['tag']!r} is not one of {error['ctx']['expected_tags'].replace(chr(39), '')}"
    message = error["msg"].removeprefix("Value error, ")
    if kind != "value_error":
        return f"{path}: {value!r}: {message}"
    key, sep, rest = message.partition(": ")  # our checks across keys name the key they fault first
    if sep and re.fullmatch(r"[\w.]+", key):
        return f"{path}.{key}: {rest}" if loc else f"{key}: {rest}"
    return f"{path}: {message}"


def error_lines(err: ValidationError, root: Any, prefix: tuple = ()) -> str:
    """Every error of a validation against `root`, one line each."""
    return "\n".join(error_line(error, root, prefix) for error in err.errors())
