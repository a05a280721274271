"""A deliberately plain test client on the generated stubs.

It drives one Execute stream by hand, answering tool calls from a dict of
Python functions, so the server's tests do not depend on the oasis library.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from oasis.sandbox.v1 import sandbox_pb2 as pb
from oasis.sandbox.v1 import sandbox_pb2_grpc as pb_grpc

Status = pb.ExecutionResult.Status


@dataclass
class Outcome:
    result: pb.ExecutionResult
    responses: list[pb.ExecuteResponse] = field(default_factory=list)
    tool_calls: list[pb.ToolCall] = field(default_factory=list)
    chunks: dict[str, bytes] = field(default_factory=dict)

    @property
    def output(self) -> Any:
        return json.loads(self.result.output) if self.result.output else None

    @property
    def status(self) -> str:
        return Status.Name(self.result.status)

    def kinds(self) -> list[str]:
        return [r.WhichOneof("kind") for r in self.responses]

    def file(self, name: str) -> bytes:
        for f in self.result.files:
            if f.name == name:
                return f.data if f.data else self.chunks[name]
        raise KeyError(name)


class SandboxClient:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.stub = pb_grpc.SandboxStub(channel)

    async def run(
        self,
        code: str,
        *,
        runtime: str = "",
        tools: dict[str, Callable[..., Any]] | None = None,
        session_id: str = "",
        timeout: float | None = None,
        files: list[pb.File] | None = None,
        after_start: list[pb.ExecuteRequest] | None = None,
        env: dict[str, str] | None = None,
        execution_id: str = "",
        keep_state: bool = False,
        on_response: Callable[[pb.ExecuteResponse, asyncio.Queue[pb.ExecuteRequest | None]], Any]
        | None = None,
    ) -> Outcome:
        """Run code to its result; tools answer concurrently, as a real client would."""
        start = pb.StartExecution(
            code=code,
            runtime=runtime,
            session_id=session_id,
            env=env or {},
            execution_id=execution_id,
            keep_state=keep_state,
        )
        if timeout is not None:
            start.timeout.FromNanoseconds(int(timeout * 1e9))
        start.files.extend(files or [])
        outgoing: asyncio.Queue[pb.ExecuteRequest | None] = asyncio.Queue()
        outgoing.put_nowait(pb.ExecuteRequest(start=start))
        for message in after_start or []:
            outgoing.put_nowait(message)

        async def requests():  # type: ignore[no-untyped-def]
            while (message := await outgoing.get()) is not None:
                yield message

        call = self.stub.Execute(requests())
        outcome = Outcome(result=pb.ExecutionResult())
        pending: set[asyncio.Task[None]] = set()
        try:
            async for response in call:
                outcome.responses.append(response)
                kind = response.WhichOneof("kind")
                if on_response is not None:
                    maybe = on_response(response, outgoing)
                    if inspect.isawaitable(maybe):
                        await maybe
                if kind == "tool_call":
                    outcome.tool_calls.append(response.tool_call)
                    task = asyncio.create_task(
                        self._answer(response.tool_call, tools or {}, outgoing)
                    )
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                elif kind == "file_chunk":
                    c = response.file_chunk
                    outcome.chunks[c.name] = outcome.chunks.get(c.name, b"") + c.data
                elif kind == "result":
                    outcome.result = response.result
        finally:
            outgoing.put_nowait(None)
            for task in pending:
                task.cancel()
        assert outcome.responses and outcome.responses[-1].WhichOneof("kind") == "result"
        return outcome

    @staticmethod
    async def _answer(
        call: pb.ToolCall,
        tools: dict[str, Callable[..., Any]],
        outgoing: asyncio.Queue[pb.ExecuteRequest | None],
    ) -> None:
        args = json.loads(call.args_json)
        try:
            value = tools[call.name](**args)
            if inspect.isawaitable(value):
                value = await value
            data = value if isinstance(value, str) else json.dumps(value)
            result = pb.ToolResult(call_id=call.call_id, data=data)
        except Exception as exc:  # the tool failed: the code sees the message
            result = pb.ToolResult(call_id=call.call_id, error=str(exc) or type(exc).__name__)
        outgoing.put_nowait(pb.ExecuteRequest(tool_result=result))
