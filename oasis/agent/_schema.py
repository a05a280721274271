"""A tool's arguments from a Python function's signature: the JSON Schema and the check.

Both come from one pydantic `TypeAdapter` over the parameters (as a TypedDict,
the way pydantic-ai validates tool arguments), so what the LLM is shown and
what is accepted cannot drift apart. Validation is pydantic's default lax
mode: "3" is accepted for an int, and a dict becomes a model or a dataclass.
pydantic is imported when the first tool is built, so `import oasis` stays
cheap for code that only runs code.
"""

from __future__ import annotations

import contextlib
import inspect
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NotRequired, Required

from ..errors import ToolError
from ._errors import AgentDefinitionError

if TYPE_CHECKING:
    from pydantic import TypeAdapter, ValidationError

JsonSchema = dict[str, Any]

_SECTION = re.compile(
    r"^(Args|Arguments|Parameters|Params|Returns|Return|Raises|Yields|Examples?|Notes?):\s*$"
)
_ARG_SECTIONS = ("Args", "Arguments", "Parameters", "Params")
_ARG_LINE = re.compile(r"^\s*\**(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
_MAX_PROBLEMS = 10
"""Validation problems listed in one tool error; a long list is cut."""


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


@dataclass(frozen=True)
class ToolArguments:
    """The parameters of one function tool: their JSON Schema, and `validate` for a call."""

    tool: str
    schema: JsonSchema
    """The arguments object as the LLM sees it."""
    names: tuple[str, ...]
    adapter: TypeAdapter[Any]

    @classmethod
    def of(cls, fn: Callable[..., Any], tool: str) -> ToolArguments:
        """Read `fn`'s signature; AgentDefinitionError names any parameter that cannot be a tool's."""
        import pydantic
        import pydantic_core
        from typing_extensions import TypedDict  # pydantic refuses typing's before Python 3.12

        try:
            hints = typing.get_type_hints(fn, include_extras=True)
        except Exception as exc:
            raise AgentDefinitionError(
                f"tool {tool!r}: cannot resolve its type hints: {exc}"
            ) from exc
        _, docs = parse_docstring(inspect.getdoc(fn))
        params = list(inspect.signature(fn).parameters.values())
        for param in params:
            _check_parameter(param, hints, tool)
        fields = {
            p.name: Required[hints[p.name]] if p.default is p.empty else NotRequired[hints[p.name]]
            for p in params
        }
        # Unexpected names are refused by `validate` itself, not by extra="forbid":
        # that config would spread to the user's own nested dataclasses and TypedDicts.
        # Built at run time, so mypy cannot know its fields: the adapter is TypeAdapter[Any].
        arguments = TypedDict(f"{tool}_arguments", fields)  # type: ignore[misc]
        try:
            adapter: TypeAdapter[Any] = pydantic.TypeAdapter(arguments)
            generated = adapter.json_schema()
        except pydantic.PydanticUserError as exc:
            raise _unsupported_type(tool, params, hints, exc) from exc
        defs = generated.get("$defs", {})
        properties: dict[str, JsonSchema] = {}
        for param in params:
            prop = generated["properties"][param.name]
            note = _annotated_note(hints[param.name])
            if "description" not in prop and (note or param.name in docs):
                prop["description"] = note or docs[param.name]
            if param.default is not param.empty:
                # A default that is not JSON (a sentinel object) is simply not shown.
                with contextlib.suppress(pydantic_core.PydanticSerializationError):
                    prop["default"] = pydantic_core.to_jsonable_python(param.default)
            properties[param.name] = prop
        schema: JsonSchema = {
            "type": "object",
            "properties": properties,
            "required": [p.name for p in params if p.default is p.empty],
            "additionalProperties": False,
        }
        if defs:
            schema["$defs"] = defs
        return cls(tool, compact(schema), tuple(p.name for p in params), adapter)

    def validate(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """The arguments converted to the parameters' types, as keyword arguments.

        Raises ToolError (the LLM sees it, and may call again) naming every
        unexpected, missing or mistyped argument; the function is not called.
        """
        import pydantic

        problems: list[str] = []
        values: dict[str, Any] = {}
        unexpected = sorted(name for name in args if name not in self.names)
        if unexpected:
            problems.append(
                f"unexpected argument(s) {', '.join(map(repr, unexpected))}; "
                f"{self.tool} takes: {', '.join(self.names) or 'no arguments'}"
            )
        try:
            values = self.adapter.validate_python(
                {k: v for k, v in args.items() if k in self.names}
            )
        except pydantic.ValidationError as exc:
            problems += _describe(exc)
        if problems:
            if len(problems) > _MAX_PROBLEMS:
                problems[_MAX_PROBLEMS:] = [f"and {len(problems) - _MAX_PROBLEMS} more"]
            listed = "\n".join(f"- {p}" for p in problems)
            raise ToolError(f"{self.tool} was not called, its arguments are invalid:\n{listed}")
        return values


def _check_parameter(param: inspect.Parameter, hints: Mapping[str, Any], tool: str) -> None:
    if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
        raise AgentDefinitionError(
            f"tool {tool!r}: *{param.name} is not supported; tools take named parameters"
        )
    if param.kind is param.POSITIONAL_ONLY:
        raise AgentDefinitionError(
            f"tool {tool!r}: parameter {param.name!r} is positional-only; tools are called by name"
        )
    if param.name not in hints:
        raise AgentDefinitionError(f"tool {tool!r}: parameter {param.name!r} needs a type hint")


def _unsupported_type(
    tool: str, params: list[inspect.Parameter], hints: Mapping[str, Any], exc: Exception
) -> AgentDefinitionError:
    """Name the parameter pydantic could not handle (tried one by one, on this error path only)."""
    import pydantic

    reason = str(exc).splitlines()[0]
    for param in params:
        try:
            pydantic.TypeAdapter(hints[param.name]).json_schema()
        except pydantic.PydanticUserError as one:
            reason = str(one).splitlines()[0]
            return AgentDefinitionError(
                f"tool {tool!r}, parameter {param.name!r}: type {hints[param.name]!r} has no "
                f"JSON Schema pydantic can validate: {reason}"
            )
    return AgentDefinitionError(f"tool {tool!r}: its parameters have no JSON Schema: {reason}")


def _annotated_note(hint: Any) -> str:
    """`Annotated[str, "text"]`: the text describes the parameter."""
    if typing.get_origin(hint) is typing.Annotated:
        notes = [a for a in typing.get_args(hint)[1:] if isinstance(a, str)]
        return notes[0] if notes else ""
    return ""


def _describe(exc: ValidationError) -> list[str]:
    """pydantic's errors as lines the LLM can act on: the argument, what was expected, what came."""
    missing: list[str] = []
    lines: list[str] = []
    for error in exc.errors(include_url=False):
        where = _path(error["loc"])
        if error["type"] == "missing" and len(error["loc"]) == 1:
            missing.append(repr(where))
        elif error["type"] == "missing":
            lines.append(f"argument {where!r}: {error['msg']}")
        else:
            got = repr(error["input"])
            got = got if len(got) <= 100 else got[:100] + "..."
            lines.append(f"argument {where!r}: {error['msg']} (got {got})")
    if missing:
        lines.insert(0, f"missing required argument(s): {', '.join(missing)}")
    return lines


def _path(loc: tuple[int | str, ...]) -> str:
    """("points", 0, "x") -> "points[0].x"."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else part
    return text


_SCHEMA_MAPS = frozenset({"properties", "$defs", "patternProperties"})
_SCHEMA_LISTS = frozenset({"anyOf", "oneOf", "allOf", "prefixItems"})
_SCHEMA_VALUES = frozenset({"items", "additionalProperties", "not", "contains"})


def compact(schema: JsonSchema) -> JsonSchema:
    """pydantic's schema made lighter for an LLM: no titles, local $refs inlined, and
    `X | None` written as `"type": [X, "null"]` where X is a plain typed schema.

    Recursive types keep their `$ref`s (and the `$defs` they need).
    """
    defs: dict[str, JsonSchema] = schema.get("$defs", {})
    kept: dict[str, JsonSchema] = {}

    def walk(node: Any, inlining: frozenset[str]) -> Any:
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref", "")
        if ref.startswith("#/$defs/"):
            name = ref.removeprefix("#/$defs/")
            rest = {k: v for k, v in node.items() if k != "$ref"}
            if name in inlining:  # recursive: keep the reference
                if name not in kept:
                    kept[name] = {}
                    kept[name] = walk(defs[name], frozenset({name}))
                return {"$ref": ref, **walk(rest, inlining)}
            return {**walk(defs[name], inlining | {name}), **walk(rest, inlining)}
        out: JsonSchema = {}
        for key, value in node.items():
            if key == "title" or key == "$defs":
                continue
            if key in _SCHEMA_MAPS and isinstance(value, dict):
                out[key] = {k: walk(v, inlining) for k, v in value.items()}
            elif key in _SCHEMA_LISTS and isinstance(value, list):
                out[key] = [walk(v, inlining) for v in value]
            elif key in _SCHEMA_VALUES:
                out[key] = walk(value, inlining)
            else:
                out[key] = value  # data (default, enum, const) or a keyword's value
        return _nullable(out)

    result: JsonSchema = walk(schema, frozenset())
    if kept:
        result["$defs"] = kept
    return result


def _nullable(schema: JsonSchema) -> JsonSchema:
    options = schema.get("anyOf")
    if not isinstance(options, list) or len(options) != 2 or {"type": "null"} not in options:
        return schema
    (other,) = [o for o in options if o != {"type": "null"}]
    if not isinstance(other.get("type"), str) or "enum" in other or "$ref" in other:
        return schema
    rest = {k: v for k, v in schema.items() if k != "anyOf"}
    return {**other, **rest, "type": [other["type"], "null"]}
