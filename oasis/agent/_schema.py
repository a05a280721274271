"""JSON Schema for a tool's parameters, from a Python function's type hints and docstring."""

from __future__ import annotations

import enum
import inspect
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ._errors import AgentDefinitionError

JsonSchema = dict[str, Any]

_SCALARS: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}
_SECTION = re.compile(
    r"^(Args|Arguments|Parameters|Params|Returns|Return|Raises|Yields|Examples?|Notes?):\s*$"
)
_ARG_SECTIONS = ("Args", "Arguments", "Parameters", "Params")
_ARG_LINE = re.compile(r"^\s*\**(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """The description (text before the first section) and Google-style `Args:` entries."""
    if not doc:
        return "", {}
    description: list[str] = []
    params: dict[str, str] = {}
    section: str | None = None
    entry_indent: int | None = None
    current: str | None = None
    for line in inspect.cleandoc(doc).splitlines():
        header = _SECTION.match(line)
        if header:
            section, entry_indent, current = header[1], None, None
        elif section is None:
            description.append(line)
        elif section in _ARG_SECTIONS and line.strip():
            indent = len(line) - len(line.lstrip())
            entry_indent = indent if entry_indent is None else entry_indent
            entry = _ARG_LINE.match(line)
            if entry and indent <= entry_indent:
                current = entry[1]
                params[current] = entry[2].strip()
            elif current is not None:
                params[current] = f"{params[current]} {line.strip()}".strip()
    return "\n".join(description).strip(), params


def function_schema(fn: Callable[..., Any], tool_name: str) -> tuple[JsonSchema, dict[str, str]]:
    """The parameters object schema of `fn`, and the docstring's per-parameter descriptions."""
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as exc:
        raise AgentDefinitionError(
            f"tool {tool_name!r}: cannot resolve its type hints: {exc}"
        ) from exc
    _, docs = parse_docstring(inspect.getdoc(fn))
    properties: dict[str, JsonSchema] = {}
    required: list[str] = []
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise AgentDefinitionError(
                f"tool {tool_name!r}: *{param.name} is not supported; tools take named parameters"
            )
        if param.kind is param.POSITIONAL_ONLY:
            raise AgentDefinitionError(
                f"tool {tool_name!r}: parameter {param.name!r} is positional-only; tools are called by name"
            )
        if param.name not in hints:
            raise AgentDefinitionError(
                f"tool {tool_name!r}: parameter {param.name!r} needs a type hint"
            )
        where = f"tool {tool_name!r}, parameter {param.name!r}"
        schema = type_schema(hints[param.name], where)
        if param.name in docs and "description" not in schema:
            schema["description"] = docs[param.name]
        if param.default is param.empty:
            required.append(param.name)
        elif _is_json(param.default):
            schema["default"] = (
                param.default.value if isinstance(param.default, enum.Enum) else param.default
            )
        properties[param.name] = schema
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }, docs


def type_schema(hint: Any, where: str) -> JsonSchema:
    """JSON Schema for one type hint; `where` names the parameter in error messages."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Annotated:
        schema = type_schema(args[0], where)
        notes = [a for a in args[1:] if isinstance(a, str)]
        if notes:
            schema["description"] = notes[0]
        return schema
    if hint is Any or hint is object:
        return {}
    if hint is None or hint is type(None):
        return {"type": "null"}
    if hint in _SCALARS:
        return {"type": _SCALARS[hint]}
    if origin is typing.Literal:
        return _enum_schema(list(args))
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _enum_schema([member.value for member in hint])
    if origin is typing.Union or origin is types.UnionType:
        return _union_schema(args, where)
    if hint in (list, set, frozenset, tuple) or origin in (list, set, frozenset, Sequence):
        return {"type": "array", **({"items": type_schema(args[0], where)} if args else {})}
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return {"type": "array", "items": type_schema(args[0], where)}
        items = [type_schema(a, where) for a in args]
        return {
            "type": "array",
            "prefixItems": items,
            "minItems": len(items),
            "maxItems": len(items),
        }
    if hint is dict or origin in (dict, Mapping):
        if args and args[0] is not str:
            raise AgentDefinitionError(f"{where}: JSON object keys are strings, not {args[0]!r}")
        mapping: JsonSchema = {"type": "object"}
        if len(args) == 2:
            mapping["additionalProperties"] = type_schema(args[1], where)
        return mapping
    if typing.is_typeddict(hint):
        hints = typing.get_type_hints(hint, include_extras=True)
        return {
            "type": "object",
            "properties": {k: type_schema(v, f"{where}.{k}") for k, v in hints.items()},
            "required": sorted(hint.__required_keys__),
        }
    raise AgentDefinitionError(
        f"{where}: type {hint!r} has no JSON Schema; use str, int, float, bool, list, dict, "
        "Literal, an Enum, a TypedDict, Optional or a union of these"
    )


def _enum_schema(values: list[Any]) -> JsonSchema:
    schema: JsonSchema = {"enum": values}
    kinds = {_SCALARS.get(type(v)) for v in values}
    if len(kinds) == 1 and None not in kinds:
        schema["type"] = kinds.pop()
    return schema


def _union_schema(args: tuple[Any, ...], where: str) -> JsonSchema:
    nullable = type(None) in args
    options = [type_schema(a, where) for a in args if a is not type(None)]
    if (
        len(options) == 1
        and nullable
        and isinstance(options[0].get("type"), str)
        and "enum" not in options[0]
    ):
        return {**options[0], "type": [options[0]["type"], "null"]}
    if nullable:
        options.append({"type": "null"})
    return options[0] if len(options) == 1 else {"anyOf": options}


def _is_json(value: Any) -> bool:
    if isinstance(value, enum.Enum):
        value = value.value
    if value is None or isinstance(value, str | int | float | bool):
        return True
    if isinstance(value, list | tuple):
        return all(_is_json(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_json(v) for k, v in value.items())
    return False
