"""What both runners share: retries where the code certainly did not start, and lifecycle."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Self, TypeVar

from ..errors import SandboxError

log = logging.getLogger("oasis.code")
T = TypeVar("T")

MAX_RETRY_DELAY = 10.0
"""Seconds: the pause between attempts stops doubling here (or at retry_delay, if larger)."""
_JITTER = 0.25
"""Each pause is lengthened at random by up to this fraction, so that clients refused
together do not all come back together; never shortened, so a retry never comes
before the channel's own reconnect backoff has passed."""


@dataclass(frozen=True, kw_only=True)
class RetryAttempt:
    """A retry about to be made: what a runner's `on_retry` hook receives."""

    operation: str
    """"execute", "delete_workspace", "reset_state" or "info"."""
    number: int
    """1 for the first retry, at most `max_retries`."""
    max_retries: int
    delay: float
    """Seconds the runner waits before making it."""
    error: SandboxError
    """Why the last attempt failed (before the code could start)."""
    execution_id: str = ""
    """For "execute": the execution's id, the same on every attempt."""


OnRetry = Callable[[RetryAttempt], None]
"""Called on the event loop before each pause; keep it quick (count, log, emit a metric)."""


class Retryable(Exception):
    """An attempt failed where trying again is safe: the code certainly did not start."""

    def __init__(self, error: SandboxError) -> None:
        super().__init__(str(error))
        self.error = error


class Retry:
    """Bounded attempts with a pause that doubles from `retry_delay`, capped and jittered."""

    def __init__(
        self, *, target: str, max_retries: int, retry_delay: float, on_retry: OnRetry | None
    ) -> None:
        if max_retries < 0 or retry_delay < 0:
            raise ValueError("max_retries and retry_delay must not be negative")
        self.target = target
        self.max_retries = max_retries
        self.retry_delay = retry_delay
        self.on_retry = on_retry

    def delay(self, number: int) -> float:
        """Seconds before retry `number` (1-based)."""
        cap = max(MAX_RETRY_DELAY, self.retry_delay)
        return min(self.retry_delay * 2.0 ** min(number - 1, 32), cap) * (
            1 + _JITTER * random.random()
        )

    async def call(
        self, attempt: Callable[[], Awaitable[T]], *, operation: str, execution_id: str = ""
    ) -> T:
        """`attempt()`'s result, trying again while it raises Retryable and retries are left.

        When none are left, the last Retryable's error is raised; any other
        exception ends the call at once.
        """
        for number in itertools.count(1):
            try:
                return await attempt()
            except Retryable as exc:
                if number > self.max_retries:
                    raise exc.error from exc.__cause__
                retry = RetryAttempt(
                    operation=operation,
                    number=number,
                    max_retries=self.max_retries,
                    delay=self.delay(number),
                    error=exc.error,
                    execution_id=execution_id,
                )
            log.info(
                "%s%s on %s did not start (%s: %s); retry %d of %d in %.2f s",
                operation,
                f" {execution_id}" if execution_id else "",
                self.target,
                retry.error.code,
                retry.error.message,
                number,
                self.max_retries,
                retry.delay,
            )
            if self.on_retry is not None:
                self.on_retry(retry)
            await asyncio.sleep(retry.delay)
        raise AssertionError("unreachable")


class RunnerBase:
    """An async context manager whose close is idempotent and final."""

    _closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Release what the runner opened; running executions end. Safe to call twice."""
        if not self._closed:
            self._closed = True
            await self._release()

    async def _release(self) -> None:
        raise NotImplementedError

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"this {type(self).__name__} is closed")
