"""@tool schemas and argument checks from type hints, and developer misuse caught when agents are built."""

from __future__ import annotations

import dataclasses
import enum
import sys
import typing
from typing import Annotated, Any, Literal, Optional

import pydantic
import pytest
from typing_extensions import TypedDict

import oasis
from oasis.agent import (
    AgentDefinitionError,
    FunctionTool,
    LLMAgent,
    Network,
    Tool,
    ToolMessage,
    tool,
)
from oasis.agent.providers import ScriptedProvider, ScriptedRunner, tool_calls


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Point(TypedDict):  # typing_extensions': pydantic refuses typing's before Python 3.12
    x: float
    y: float


class Opaque:
    """An arbitrary class: pydantic cannot validate it from JSON."""


class Pair(typing.TypedDict):
    a: int


def test_schema_from_hints_defaults_and_docstring() -> None:
    @tool
    def search(
        query: str,
        limit: int = 5,
        mode: Literal["fast", "deep"] = "fast",
        tags: Optional[list[str]] = None,  # noqa: UP045 - Optional is what users write
        weights: dict[str, float] | None = None,
        exact: bool = False,
        color: Color = Color.RED,
        anything: Any = None,
        note: Annotated[str, "Free text for the log."] = "",
    ) -> list[str]:
        """Search the catalog for products.

        Args:
            query: What to look for.
            limit: How many results
                to return at most.
        """
        return []

    assert search.name == "search"
    assert search.description == "Search the catalog for products."
    props = search.parameters["properties"]
    assert search.parameters["required"] == ["query"]
    assert search.parameters["additionalProperties"] is False
    assert props["query"] == {"type": "string", "description": "What to look for."}
    assert props["limit"] == {
        "type": "integer",
        "description": "How many results to return at most.",
        "default": 5,
    }
    assert props["mode"] == {"enum": ["fast", "deep"], "type": "string", "default": "fast"}
    assert props["tags"] == {
        "type": ["array", "null"],
        "items": {"type": "string"},
        "default": None,
    }
    assert props["weights"] == {
        "type": ["object", "null"],
        "additionalProperties": {"type": "number"},
        "default": None,
    }
    assert props["exact"] == {"type": "boolean", "default": False}
    assert props["color"] == {"enum": ["red", "blue"], "type": "string", "default": "red"}
    assert props["anything"] == {"default": None}
    assert props["note"] == {
        "type": "string",
        "description": "Free text for the log.",
        "default": "",
    }


def test_schema_unions_typeddicts_and_tuples() -> None:
    @tool(name="plot", description="Plot points.")
    def draw(
        points: list[Point],
        size: int | str,
        pair: tuple[int, int],
        maybe: Literal[1, 2] | None = None,
    ) -> None:
        pass

    props = draw.parameters["properties"]
    assert draw.name == "plot" and draw.description == "Plot points."
    assert props["points"]["items"] == {
        "type": "object",
        "properties": {"x": {"type": "number"}, "y": {"type": "number"}},
        "required": ["x", "y"],
    }
    assert props["size"] == {"anyOf": [{"type": "integer"}, {"type": "string"}]}
    assert props["pair"]["prefixItems"] == [{"type": "integer"}, {"type": "integer"}]
    assert props["maybe"] == {
        "anyOf": [{"enum": [1, 2], "type": "integer"}, {"type": "null"}],
        "default": None,
    }


async def test_sync_and_async_tools_are_called_with_checked_arguments() -> None:
    @tool
    def add(a: int, b: int = 1) -> int:
        """Add."""
        return a + b

    @tool
    async def shout(text: str) -> str:
        """Upper-case."""
        return text.upper()

    assert isinstance(add, Tool) and isinstance(add, FunctionTool)
    assert add(2, 3) == 5  # still the plain function
    assert await add.call({"a": 2}) == 3
    assert await shout.call({"text": "hi"}) == "HI"
    with pytest.raises(oasis.ToolError, match="unexpected argument"):
        await add.call({"a": 1, "c": 2})
    with pytest.raises(oasis.ToolError, match=r"missing required argument.*'a'"):
        await add.call({"b": 2})


def test_tool_definition_errors() -> None:
    def undocumented(x: int) -> int:
        return x

    def untyped(x):  # type: ignore[no-untyped-def]
        """Untyped."""

    def star(*values: int) -> None:
        """Star."""

    def weird(x: Opaque) -> None:
        """An arbitrary class: pydantic cannot validate it from JSON."""

    with pytest.raises(AgentDefinitionError, match="no description"):
        tool(undocumented)
    with pytest.raises(AgentDefinitionError, match="'x' needs a type hint"):
        tool(untyped)
    with pytest.raises(AgentDefinitionError, match=r"\*values is not supported"):
        tool(star)
    with pytest.raises(AgentDefinitionError, match=r"parameter 'x'.*no JSON Schema"):
        tool(weird)
    if sys.version_info < (3, 12):

        def pairs(p: Pair) -> None:
            """typing.TypedDict."""

        with pytest.raises(AgentDefinitionError, match=r"parameter 'p'.*typing_extensions"):
            tool(pairs)
    with pytest.raises(AgentDefinitionError, match="invalid"):
        tool(name="has space", description="d")(undocumented)


@tool
def lookup(key: str) -> str:
    """Look a key up."""
    return key


def _agent(**kwargs: Any) -> LLMAgent:
    return LLMAgent("a", "an agent", ScriptedProvider([]), **kwargs)


def test_agent_rejects_duplicate_and_reserved_tool_names() -> None:
    with pytest.raises(AgentDefinitionError, match="two tools are named 'lookup'"):
        _agent(tools=[lookup, lookup])
    for reserved in ("execute_code", "execute_plan", "agent_helper"):
        with pytest.raises(AgentDefinitionError, match=f"{reserved}.*reserved"):
            _agent(tools=[tool(name=reserved, description="x")(lookup.function)])
    with pytest.raises(AgentDefinitionError, match="neither a Tool nor a function"):
        _agent(tools=["lookup"])
    with pytest.raises(AgentDefinitionError, match="max_iterations"):
        _agent(max_iterations=0)
    with pytest.raises(AgentDefinitionError, match="no request"):
        LLMAgent("a", "d", object())  # type: ignore[arg-type]
    with pytest.raises(AgentDefinitionError, match="not a CodeRunner"):
        _agent(code_runner=object())
    with pytest.raises(AgentDefinitionError, match="not a CodeRunner"):
        _agent(code_runner=_RunOnly())


def test_plain_functions_are_wrapped_and_builtins_offered() -> None:
    def local_time(city: str) -> str:
        """The local time in a city."""
        return "12:00"

    agent = _agent(tools=[local_time, lookup], code_runner=ScriptedRunner(), plan_execution=True)
    names = [d.name for d in agent.tool_definitions]
    assert names == ["local_time", "lookup", "execute_code", "execute_plan"]
    code = agent.tool_definitions[2]
    assert code.parameters["properties"]["runtime"] == {
        "type": "string",
        "enum": ["python", "node"],
        "default": "python",
        "description": "Language of the code.",
    }
    assert code.parameters["required"] == ["code"]
    for documented in (
        "call_tool",
        "call_tools_parallel",
        "set_result(data, files=",
        "install_package",
        "print",
    ):
        assert documented in code.description
    for documented in ("callTool", "callToolsParallel", "setResult", "installPackage"):
        assert documented in code.description
    assert "local_time, lookup" in code.description
    plan = agent.tool_definitions[3].parameters["properties"]["steps"]
    assert plan["maxItems"] == 50
    assert "execute_plan" not in plan["items"]["properties"]["tool"]["enum"]


def test_network_rejects_duplicate_and_unusable_agent_names() -> None:
    one, two = _agent(), _agent()
    with pytest.raises(AgentDefinitionError, match="two agents are named 'a'"):
        Network("n", "router", ScriptedProvider([]), agents=[one, two])
    spaced = LLMAgent("has space", "d", ScriptedProvider([]))
    with pytest.raises(AgentDefinitionError, match="cannot become tool"):
        Network("n", "router", ScriptedProvider([]), agents=[spaced])
    with pytest.raises(AgentDefinitionError, match="not an agent"):
        Network("n", "router", ScriptedProvider([]), agents=[lookup])  # type: ignore[list-item]
    net = Network("n", "router", ScriptedProvider([]), agents=[one], tools=[lookup])
    assert [d.name for d in net.tool_definitions] == ["lookup", "agent_a"]


class _RunOnly:
    """A runner without delete_workspace is not a CodeRunner."""

    async def run(self, request: oasis.CodeRequest, dispatch: oasis.Dispatch) -> oasis.CodeResult:
        raise AssertionError("not used")


# Argument validation, through the agent loop: what the LLM sees when it gets them wrong.


class Shipment(pydantic.BaseModel):
    sku: str
    quantity: int


@dataclasses.dataclass
class Address:
    city: str
    zip: str = ""


class Node(pydantic.BaseModel):
    """A recursive type: its schema keeps a $ref."""

    name: str
    children: list[Node] = []


def answers(provider: ScriptedProvider, request: int = 1) -> list[ToolMessage]:
    return [m for m in provider.requests[request].messages if isinstance(m, ToolMessage)]


async def test_wrong_missing_and_unexpected_arguments_are_tool_errors_and_skip_the_call() -> None:
    called: list[tuple[int, int]] = []

    @tool
    def add(a: int, b: int = 1) -> int:
        """Add two whole numbers."""
        called.append((a, b))
        return a + b

    provider = ScriptedProvider(
        [
            tool_calls(
                ("add", {"a": "x"}),
                ("add", {"b": 2}),
                ("add", {"a": 1, "c": 2}),
                ("add", {"b": [1], "c": 1}),
            ),
            "done",
        ]
    )
    result = await LLMAgent("m", "maths", provider, tools=[add]).execute("add")

    wrong, missing, unexpected, several = answers(provider)
    assert all(a.is_error for a in (wrong, missing, unexpected, several))
    assert called == []  # the function never ran
    assert wrong.content == (
        "add was not called, its arguments are invalid:\n"
        "- argument 'a': Input should be a valid integer, "
        "unable to parse string as an integer (got 'x')"
    )
    assert missing.content.endswith("- missing required argument(s): 'a'")
    assert unexpected.content.endswith("- unexpected argument(s) 'c'; add takes: a, b")
    assert several.content.splitlines()[1:] == [
        "- unexpected argument(s) 'c'; add takes: a, b",
        "- missing required argument(s): 'a'",
        "- argument 'b': Input should be a valid integer (got [1])",
    ]
    assert [s.is_error for s in result.steps] == [True] * 4


async def test_correct_calls_reach_sync_and_async_tools_with_lax_coercion() -> None:
    @tool
    def add(a: int, b: int = 1) -> int:
        """Add two whole numbers."""
        return a + b

    @tool
    async def shout(text: str, times: int = 1) -> str:
        """Upper-case a text."""
        return text.upper() * times

    provider = ScriptedProvider(
        [
            tool_calls(
                ("add", {"a": 2, "b": 3}),
                ("add", {"a": "40"}),  # lax: a numeric string is an int
                ("shout", {"text": "hi", "times": 2}),
                ("shout", {"text": 5}),  # but a number is not a string
            ),
            "done",
        ]
    )
    await LLMAgent("m", "maths", provider, tools=[add, shout]).execute("go")

    assert [(a.content, a.is_error) for a in answers(provider)[:3]] == [
        ("5", False),
        ("41", False),
        ("HIHI", False),
    ]
    refused = answers(provider)[3]
    assert refused.is_error and "argument 'text': Input should be a valid string" in refused.content


async def test_models_dataclasses_literals_and_optionals_are_validated_and_converted() -> None:
    received: list[dict[str, Any]] = []

    @tool
    def ship(
        shipment: Shipment,
        to: Address,
        mode: Literal["air", "sea"] = "sea",
        note: str | None = None,
        color: Color = Color.RED,
    ) -> str:
        """Ship goods.

        Args:
            shipment: What to ship.
        """
        received.append(dict(shipment=shipment, to=to, mode=mode, note=note, color=color))
        return "shipped"

    props = ship.parameters["properties"]
    assert props["shipment"] == {
        "type": "object",
        "properties": {"sku": {"type": "string"}, "quantity": {"type": "integer"}},
        "required": ["sku", "quantity"],
        "description": "What to ship.",
    }
    assert props["to"]["properties"]["zip"] == {"type": "string", "default": ""}
    assert props["note"] == {"type": ["string", "null"], "default": None}
    assert "$defs" not in ship.parameters

    good = {"shipment": {"sku": "A-1", "quantity": "3"}, "to": {"city": "Oslo"}}
    provider = ScriptedProvider(
        [
            tool_calls(
                ("ship", {**good, "mode": "air", "note": None, "color": "blue"}),
                ("ship", {**good, "mode": "rail"}),
                ("ship", {"shipment": {"sku": "A-1", "quantity": "many"}, "to": {}}),
                ("ship", {**good, "note": ["not", "text"]}),
            ),
            "done",
        ]
    )
    await LLMAgent("s", "ships", provider, tools=[ship]).execute("ship it")

    ok, bad_mode, nested, bad_note = answers(provider)
    assert (ok.content, ok.is_error) == ("shipped", False)
    assert received == [
        {
            "shipment": Shipment(sku="A-1", quantity=3),
            "to": Address(city="Oslo"),
            "mode": "air",
            "note": None,
            "color": Color.BLUE,
        }
    ]
    assert bad_mode.is_error and "argument 'mode': Input should be 'air' or 'sea'" in (
        bad_mode.content
    )
    assert nested.is_error
    assert "argument 'shipment.quantity': Input should be a valid integer" in nested.content
    assert "argument 'to.city': Field required" in nested.content
    assert bad_note.is_error and "argument 'note'" in bad_note.content
    assert len(received) == 1


def test_recursive_types_keep_their_definitions() -> None:
    @tool
    def plant(tree: Node) -> None:
        """Plant a tree."""

    schema = plant.parameters
    assert schema["properties"]["tree"]["properties"]["children"] == {
        "type": "array",
        "items": {"$ref": "#/$defs/Node"},
        "default": [],
    }
    assert set(schema["$defs"]) == {"Node"}
    assert "title" not in str(schema)
