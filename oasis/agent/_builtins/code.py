"""execute_code: a program run in the sandbox, whose call_tool goes through the run's dispatch."""

from __future__ import annotations

import asyncio
import itertools
import json
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..._types import CodeRequest, CodeResult, CodeRunner, DispatchResult, Status, ToolCall
from ...errors import ToolError
from .._messages import ToolDefinition
from .._results import Attachment, StepSource, StepType
from .._tools import tail
from ._base import EXECUTE_CODE, RunContext

RUNTIMES = ("python", "node")

DESCRIPTION = """\
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

STATEFUL = """

State persists, as in a notebook: variables, imports and functions an execution defines are \
still there in this task's next executions of the same runtime, so load data once and reuse it \
(files in the working directory persist too). Each execution runs to its end before the \
next starts. If the interpreter is restarted (a timeout it did not stop at, a crash) you are \
told, and the earlier variables are gone."""

NO_RESULT = (
    "The code finished without calling set_result, so it returned no result. "
    "Call set_result(data) in Python (setResult(data) in Node.js) to return values; "
    "printed output only appears in the logs."
)


@dataclass(frozen=True, kw_only=True)
class ExecuteCode:
    """The execute_code built-in of one agent, bound to its runner and limits."""

    name: ClassVar[str] = EXECUTE_CODE
    step_type: ClassVar[StepType] = "code"

    runner: CodeRunner
    timeout: float | None
    """Seconds per execution; None uses the runner's default."""
    max_logs: int
    """Characters of an execution's logs the LLM is shown (the tail)."""
    tool_names: Sequence[str]
    """The tools code can call, listed in the description."""
    keep_state: bool = False
    """Run in the session's live interpreter, so variables persist between executions."""
    _turns: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = field(
        default_factory=weakref.WeakValueDictionary, init=False, repr=False, compare=False
    )
    """keep_state: a session's interpreter runs one execution at a time (the server refuses
    a second as busy), so calls made together wait for their turn here, in order."""

    def definition(self) -> ToolDefinition:
        description = DESCRIPTION + (STATEFUL if self.keep_state else "")
        if self.tool_names:
            description += (
                "\n\nTools code can call (same arguments as yours): "
                + ", ".join(self.tool_names)
                + "."
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

    async def call(
        self, run: RunContext, args: dict[str, Any], *, call_id: str, source: StepSource
    ) -> DispatchResult:
        if source == "code":
            raise ToolError(
                "execute_code cannot be called from code: code cannot start nested code "
                "execution. Call the tools directly with call_tool."
            )
        code, runtime = _arguments(args)
        calls = itertools.count(1)

        async def dispatch(call: ToolCall) -> DispatchResult:
            # The code's call_tool goes through the same dispatch as the LLM's tool calls.
            return await run.dispatch(
                call.name, call.args, call_id=f"{call_id}.{next(calls)}", source="code"
            )

        request = CodeRequest(
            code=code,
            runtime=runtime,
            timeout=self.timeout,
            session_id=run.use_workspace(),
            files=[a.to_code_file() for a in run.task.attachments],
            keep_state=self.keep_state,
        )
        if self.keep_state:
            key = (request.session_id, runtime)
            turn = self._turns.get(key)
            if turn is None:
                turn = self._turns[key] = asyncio.Lock()
            async with turn:
                result = await self.runner.run(request, dispatch)
        else:
            result = await self.runner.run(request, dispatch)
        run.add_attachments(Attachment.from_code_file(file) for file in result.files)
        answer = code_answer(result, max_logs=self.max_logs)
        if self.keep_state:
            answer = _state_notes(result, answer)
        return answer


def _arguments(args: dict[str, Any]) -> tuple[str, str]:
    code = args.get("code")
    runtime = args.get("runtime") or "python"
    if not isinstance(code, str) or not code.strip():
        raise ToolError("execute_code needs 'code': the program to run, as a string")
    if runtime not in RUNTIMES:
        raise ToolError(f"unsupported runtime {runtime!r}; use one of: {', '.join(RUNTIMES)}")
    unexpected = set(args) - {"code", "runtime"}
    if unexpected:
        raise ToolError(
            f"execute_code takes only 'runtime' and 'code', not {', '.join(sorted(unexpected))}"
        )
    return code, runtime


def _state_notes(result: CodeResult, answer: DispatchResult) -> DispatchResult:
    """The answer, with what the LLM must know when the interpreter's state was lost."""
    notes: list[str] = []
    reason = result.fresh_state_reason
    if reason and reason not in result.error:
        notes.append(
            f"Note: this execution started in a new, empty interpreter ({reason}): "
            "variables, imports and functions of earlier executions were gone."
        )
    if not result.state_kept:
        notes.append(
            "Note: the interpreter did not survive this execution: the next one starts "
            "empty, without the variables defined so far."
        )
    if not notes:
        return answer
    return DispatchResult(content="\n\n".join([answer.content, *notes]), is_error=answer.is_error)


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
