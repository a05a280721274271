"""One gRPC server interceptor for "refuse this RPC with a status unless ...".

The token check (auth.py) and the sandboxed-peer check (peers.py) are both a
`GuardInterceptor`: a check that returns None to let the call through, or the
status code and message to abort it with. The check runs inside the handler,
before the servicer's own code, so it can see the peer; with several guards,
the first one in the server's interceptor list checks first.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

_FIRST_MESSAGE_WAIT = 0.5
"""Seconds a refused request stream is given to deliver its first message."""

Refusal = tuple[grpc.StatusCode, str]
Check = Callable[[grpc.HandlerCallDetails, grpc.aio.ServicerContext], Awaitable[Refusal | None]]

# Which handler attribute holds the behaviour, and how to rebuild a handler of that kind.
_KINDS = {
    (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
    (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
    (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
    (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
}


class GuardInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Runs `check` before every RPC whose method name `covers` accepts."""

    def __init__(self, check: Check, *, covers: Callable[[str], bool]) -> None:
        self._check = check
        self._covers = covers

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or not self._covers(details.method):
            return handler
        return _guarded(handler, details, self._check)


def _guarded(
    handler: grpc.RpcMethodHandler, details: grpc.HandlerCallDetails, check: Check
) -> grpc.RpcMethodHandler:
    """The same handler, aborting with the check's refusal before the servicer runs."""
    attribute, make = _KINDS[(handler.request_streaming, handler.response_streaming)]
    behaviour = getattr(handler, attribute)

    async def refuse_unless_allowed(request: Any, context: grpc.aio.ServicerContext) -> None:
        refusal = await check(details, context)
        if refusal is None:
            return
        if handler.request_streaming:
            # grpc/grpc#36066: a grpc.aio client whose write fails because the stream
            # has ended reports INTERNAL ("Internal error from Core") instead of our
            # status. Taking its first message (its `start`) before the refusal lets
            # that write succeed.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_FIRST_MESSAGE_WAIT):
                    await anext(aiter(request), None)
        await context.abort(*refusal)

    guarded: Callable[..., Any]
    if inspect.isasyncgenfunction(behaviour):  # yields its responses

        async def generator(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await refuse_unless_allowed(request, context)
            async for response in behaviour(request, context):
                yield response

        guarded = generator
    else:  # returns its response, or writes them through the context

        async def coroutine(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await refuse_unless_allowed(request, context)
            return await behaviour(request, context)

        guarded = coroutine
    return make(
        guarded,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
