"""Rate-limits identical log lines, so that a fault that repeats fast (an accept
loop out of file descriptors, a flood of refused connections) cannot flood the log."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

_MAX_KEYS = 1024
"""Distinct lines tracked at once; the oldest is forgotten beyond this."""


@dataclass
class _Window:
    start: float
    passed: int = 0
    suppressed: int = 0


class RateLimitFilter(logging.Filter):
    """Lets an identical line through at most `burst` times per `interval` seconds.

    Lines are identical when logger, level and formatted message match. The
    first line of a new window after suppressed ones is preceded by a single
    "suppressed K similar messages" line, written to `handler` (install one
    filter per handler, see `install`).
    """

    def __init__(
        self,
        handler: logging.Handler,
        *,
        burst: int = 5,
        interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._handler = handler
        self._burst = burst
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()  # handlers are called from worker threads too
        self._windows: OrderedDict[tuple[str, int, str], _Window] = OrderedDict()

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "rate_limit_summary", False):
            return True
        try:
            key = (record.name, record.levelno, record.getMessage())
        except Exception:  # a bad format: let the handler report it as usual
            return True
        now = self._clock()
        with self._lock:
            window = self._windows.get(key)
            suppressed = 0
            if window is None or now - window.start >= self._interval:
                suppressed = window.suppressed if window else 0
                window = self._windows[key] = _Window(start=now)
                self._windows.move_to_end(key)
                if len(self._windows) > _MAX_KEYS:
                    self._windows.popitem(last=False)
            if window.passed >= self._burst:
                window.suppressed += 1
                return False
            window.passed += 1
        if suppressed:
            self._handler.handle(self._summary(record, suppressed))
        return True

    def _summary(self, record: logging.LogRecord, count: int) -> logging.LogRecord:
        summary = logging.LogRecord(
            record.name,
            record.levelno,
            record.pathname,
            record.lineno,
            "suppressed %d similar messages in %gs: %.200s",
            (count, self._interval, record.getMessage()),
            None,
        )
        summary.rate_limit_summary = True
        return summary


def install(
    logger: logging.Logger | None = None, *, burst: int = 5, interval: float = 60.0
) -> None:
    """Add a RateLimitFilter to each handler of `logger` (the root logger by default)."""
    for handler in (logger or logging.getLogger()).handlers:
        handler.addFilter(RateLimitFilter(handler, burst=burst, interval=interval))


__all__ = ["RateLimitFilter", "install"]
