"""The built-in tools: execute_code and execute_plan, as the LLM sees them and their answers."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from .._types import CodeResult, DispatchResult, Status
from ._messages import ToolDefinition

EXECUTE_CODE = "execute_code"
EXECUTE_PLAN = "execute_plan"
AGENT_PREFIX = "agent_"
BUILTIN_NAMES = frozenset({EXECUTE_CODE, EXECUTE_PLAN})
RUNTIMES = ("python", "node")
MAX_PLAN_STEPS = 50

_CODE_DESCRIPTION = """\
Run Python or Node.js code in a sandbox and get back what it returns. Prefer it over \
single tool calls when the work takes several tool calls, loops, conditions, \
calculations, charts or files: one execution can call many tools without a round-trip to you.

Python (runtime "python"):
- call_tool(name, args) calls one of your tools and returns its result (parsed JSON when \
the tool answers JSON, else a string); a failing tool raises RuntimeError with its message.
- call_tools_parallel([(name, args), ...]) calls several tools at once; results come back in order.
- set_result(data, files=[...]) returns `data` (any JSON-serializable value) to you, plus \
files written in the working directory (for example a matplotlib chart saved as PNG); the \
files are handed to the user. Call it once, at the end.
- install_package(name) installs a pip package for this session.
- print() goes to the logs, which you also get back.
Node.js (runtime "node"): await callTool(name, args), await callToolsParallel([[name, args], ...]), \
setResult(data, files), await installPackage(name), console.log(); top-level await works.

Without set_result / setResult you get only the logs. numpy, pandas and matplotlib are \
available in Python. Code cannot call execute_code or execute_plan."""

_PLAN_DESCRIPTION = f"""\
Run several tool calls at once, in parallel, when they do not depend on each other's \
results. Give up to {MAX_PLAN_STEPS} steps, each {{"tool": name, "args": {{...}}}}; every \
step comes back with its own status and its result or error, in the order given. \
A plan cannot contain execute_plan."""


def execute_code_definition(tool_names: Sequence[str]) -> ToolDefinition:
    description = _CODE_DESCRIPTION
    if tool_names:
        description += (
            "\n\nTools code can call (same arguments as yours): " + ", ".join(tool_names) + "."
        )
    return ToolDefinition(
        name=EXECUTE_CODE,
        description=description,
        parameters={
            "type": "object",
            "properties": {
                "runtime": {
                    "type": "string",
                    "enum": list(RUNTIMES),
                    "default": "python",
                    "description": "Language of the code.",
                },
                "code": {"type": "string", "description": "The program to run."},
            },
            "required": ["code"],
            "additionalProperties": False,
        },
    )


def execute_plan_definition(tool_names: Sequence[str]) -> ToolDefinition:
    step: dict[str, Any] = {
        "type": "object",
        "properties": {
            "tool": {"type": "string", "description": "Name of the tool to call."},
            "args": {"type": "object", "description": "Arguments of the call."},
        },
        "required": ["tool"],
        "additionalProperties": False,
    }
    if tool_names:
        step["properties"]["tool"]["enum"] = list(tool_names)
    return ToolDefinition(
        name=EXECUTE_PLAN,
        description=_PLAN_DESCRIPTION,
        parameters={
            "type": "object",
            "properties": {
                "steps": {"type": "array", "items": step, "minItems": 1, "maxItems": MAX_PLAN_STEPS}
            },
            "required": ["steps"],
            "additionalProperties": False,
        },
    )


NO_RESULT = (
    "The code finished without calling set_result, so it returned no result. "
    "Call set_result(data) in Python (setResult(data) in Node.js) to return values; "
    "printed output only appears in the logs."
)


def code_answer(result: CodeResult, *, max_logs: int) -> DispatchResult:
    """What the LLM is told about an execution: its result or error, then the logs."""
    parts: list[str] = []
    failed = result.status is not Status.OK or bool(result.error)
    if failed:
        parts.append(
            f"Execution failed (status {result.status.value}, exit code {result.exit_code}):\n"
            + (result.error.strip() or "no error message")
        )
    elif result.output is None:
        parts.append(NO_RESULT)
    else:
        parts.append("Result: " + json.dumps(result.output, ensure_ascii=False))
    if result.files:
        listed = ", ".join(
            f"{f.name} ({f.mime or 'unknown type'}, {f.size or len(f.data)} bytes)"
            for f in result.files
        )
        parts.append(f"Files returned (they reach the user as attachments): {listed}")
    if result.logs:
        parts.append("Logs:\n" + tail(result.logs, max_logs))
    return DispatchResult(content="\n\n".join(parts), is_error=failed)


def truncate(text: str, limit: int) -> str:
    """Keep the head of `text`, saying how much was cut."""
    if len(text) <= limit:
        return text
    return text[:limit] + f"... [{len(text) - limit} more characters]"


def tail(text: str, limit: int) -> str:
    """Keep the end of `text` (where errors are), saying how much was cut."""
    if len(text) <= limit:
        return text
    return f"[{len(text) - limit} earlier characters cut] ..." + text[-limit:]
