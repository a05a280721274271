"""What runners accept as dispatch: checked when run/stream is called, dicts of tools welcome."""

from __future__ import annotations

import asyncio
import functools
import uuid
from typing import Any

import pytest

from oasis import CodeRequest, CodeResult, DispatchResult, Status, ToolCall
from oasis.code import GrpcRunner, SyncGrpcRunner
from sandbox_server.server import SandboxServer

CALL = "set_result(call_tool('double', {'x': 21}))"
LEDGER = "open('ran.txt', 'w').write('ran')\nset_result('ran')"


async def _double(call: ToolCall, factor: int) -> DispatchResult:
    return DispatchResult(content=str(call.args["x"] * factor))


class _Callable:
    async def __call__(self, call: ToolCall) -> DispatchResult:
        return await _double(call, 2)


async def _with_options(call: ToolCall, *rest: Any, factor: int = 2) -> DispatchResult:
    return await _double(call, factor)


async def _two_args(call: ToolCall, extra: int) -> DispatchResult:
    raise AssertionError("never called")


WRONG: dict[str, tuple[Any, str]] = {
    "int": (42, "got int 42"),
    "string": ("double", "got str 'double'"),
    "no arguments": (lambda: None, "signature () does not accept a single ToolCall"),
    "three arguments": (lambda a, b, c: None, "signature (a, b, c)"),
    "async, two arguments": (_two_args, "_two_args, whose signature (call: 'ToolCall', extra"),
    "a class": (_Callable, "_Callable, whose signature ()"),
    "dict with a non-callable": ({"double": 3}, "tool 'double' is not callable"),
}


async def _ran(runner: GrpcRunner, session_id: str) -> bool:
    """The ledger: LEDGER code that ran leaves ran.txt in its session's workspace."""
    code = "import os\nset_result(os.path.exists('ran.txt'))"
    result = await runner.run(CodeRequest(code=code, session_id=session_id), {})
    assert result.status is Status.OK, result.error
    return bool(result.output)


async def test_a_dict_of_tools_is_a_dispatch(runner: GrpcRunner) -> None:
    tools = {"double": lambda x: x * 2}

    result = await runner.run(CodeRequest(code=CALL), tools)
    assert result.status is Status.OK, result.error
    assert result.output == 42

    events = [event async for event in runner.stream(CodeRequest(code=CALL), tools)]
    assert isinstance(events[-1], CodeResult) and events[-1].output == 42

    session_id = f"shape-{uuid.uuid4().hex[:8]}"
    await runner.run(CodeRequest(code=LEDGER, session_id=session_id), tools)
    assert await _ran(runner, session_id)  # the ledger the refusals below rely on


@pytest.mark.parametrize(
    "dispatch",
    [functools.partial(_double, factor=2), _Callable(), _with_options],
    ids=["partial", "callable object", "extra optional parameters"],
)
async def test_other_callables_of_the_right_shape_are_accepted(
    runner: GrpcRunner, dispatch: Any
) -> None:
    result = await runner.run(CodeRequest(code=CALL), dispatch)
    assert result.status is Status.OK, result.error
    assert result.output == 42


@pytest.mark.parametrize(("dispatch", "message"), WRONG.values(), ids=WRONG.keys())
async def test_a_wrong_dispatch_is_refused_before_the_code_runs(
    runner: GrpcRunner, dispatch: Any, message: str
) -> None:
    session_id = f"shape-{uuid.uuid4().hex[:8]}"
    request = CodeRequest(code=LEDGER, session_id=session_id)

    with pytest.raises(TypeError, match=r"dispatch must be|tool 'double'") as run_error:
        await runner.run(request, dispatch)
    with pytest.raises(TypeError) as stream_error:
        runner.stream(request, dispatch)  # refused when called, not when first iterated

    for error in (run_error.value, stream_error.value):
        assert message in str(error)
    assert not await _ran(runner, session_id)


async def test_a_plain_function_given_to_the_async_runner_is_named_to_the_code(
    runner: GrpcRunner,
) -> None:
    def plain(call: ToolCall) -> DispatchResult:
        return DispatchResult(content="42")

    code = "try:\n    call_tool('double', {'x': 21})\nexcept RuntimeError as e:\n    set_result(str(e))"
    result = await runner.run(CodeRequest(code=code), plain)  # type: ignore[arg-type]
    assert result.status is Status.OK, result.error
    assert "not an awaitable" in result.output
    assert "SyncGrpcRunner" in result.output


async def test_sync_runner_takes_dicts_and_refuses_wrong_shapes(
    server: SandboxServer, runner: GrpcRunner
) -> None:
    session_id = f"sync-shape-{uuid.uuid4().hex[:8]}"
    refused = CodeRequest(code=LEDGER, session_id=session_id)

    def work() -> tuple[CodeResult, list[str]]:
        with SyncGrpcRunner(f"127.0.0.1:{server.port}") as sync:
            result = sync.run(CodeRequest(code=CALL), {"double": lambda x: x * 2})
            messages = []
            wrong: list[Any] = [lambda: None, {"double": "not a function"}, None]
            for dispatch in wrong:
                with pytest.raises(TypeError) as error:
                    sync.run(refused, dispatch)
                messages.append(str(error.value))
            with pytest.raises(TypeError):
                sync.stream(refused, wrong[0])
            return result, messages

    result, messages = await asyncio.to_thread(work)
    assert result.status is Status.OK, result.error
    assert result.output == 42
    assert "a function (plain or async) taking one ToolCall" in messages[0]
    assert "tool 'double' is not callable" in messages[1]
    assert "got NoneType None" in messages[2]
    assert not await _ran(runner, session_id)
