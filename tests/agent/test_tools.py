"""@tool schemas from type hints, and developer misuse caught when agents are built."""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal, Optional, TypedDict

import pytest

import oasis
from oasis.agent import AgentDefinitionError, FunctionTool, LLMAgent, Network, Tool, tool
from oasis.agent.providers import ScriptedProvider


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Point(TypedDict):
    x: float
    y: float


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

    def weird(x: complex) -> None:
        """Complex."""

    with pytest.raises(AgentDefinitionError, match="no description"):
        tool(undocumented)
    with pytest.raises(AgentDefinitionError, match="'x' needs a type hint"):
        tool(untyped)
    with pytest.raises(AgentDefinitionError, match=r"\*values is not supported"):
        tool(star)
    with pytest.raises(AgentDefinitionError, match="no JSON Schema"):
        tool(weird)
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
    with pytest.raises(AgentDefinitionError, match="no run"):
        _agent(code_runner=object())


def test_plain_functions_are_wrapped_and_builtins_offered() -> None:
    def local_time(city: str) -> str:
        """The local time in a city."""
        return "12:00"

    agent = _agent(tools=[local_time, lookup], code_runner=_NoRunner(), plan_execution=True)
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


class _NoRunner:
    async def run(self, request: oasis.CodeRequest, dispatch: oasis.Dispatch) -> oasis.CodeResult:
        raise AssertionError("not used")
