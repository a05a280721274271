"""The log filter that keeps a fault repeating fast from flooding the server's log."""

from __future__ import annotations

import logging
import uuid

from sandbox_server.logs_ratelimit import RateLimitFilter, install


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.getMessage()}")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def limited_logger(
    *, burst: int = 3, interval: float = 10.0
) -> tuple[logging.Logger, Lines, Clock]:
    clock = Clock()
    handler = Lines()
    handler.addFilter(RateLimitFilter(handler, burst=burst, interval=interval, clock=clock))
    logger = logging.getLogger(f"tests.ratelimit.{uuid.uuid4().hex}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    return logger, handler, clock


def test_an_identical_line_passes_burst_times_per_interval_then_one_summary() -> None:
    logger, handler, clock = limited_logger()

    for _ in range(10):
        logger.error("socket.accept() out of system resource: %s", "EMFILE")
    assert handler.lines == ["ERROR socket.accept() out of system resource: EMFILE"] * 3

    clock.now = 9.9
    logger.error("socket.accept() out of system resource: %s", "EMFILE")
    assert len(handler.lines) == 3

    clock.now = 10.0
    logger.error("socket.accept() out of system resource: %s", "EMFILE")
    assert handler.lines[3:] == [
        "ERROR suppressed 8 similar messages in 10s: socket.accept() out of system resource: EMFILE",
        "ERROR socket.accept() out of system resource: EMFILE",
    ]


def test_lines_that_differ_in_text_or_level_are_counted_apart() -> None:
    logger, handler, _ = limited_logger(burst=1)

    for _ in range(3):
        logger.warning("refused %s", "a")
        logger.warning("refused %s", "b")
        logger.error("refused %s", "a")

    assert handler.lines == ["WARNING refused a", "WARNING refused b", "ERROR refused a"]


def test_a_quiet_interval_brings_no_summary() -> None:
    logger, handler, clock = limited_logger(burst=2)

    logger.info("tick")
    clock.now = 20.0
    logger.info("tick")

    assert handler.lines == ["INFO tick", "INFO tick"]


def test_install_puts_a_filter_on_every_handler() -> None:
    logger = logging.getLogger(f"tests.ratelimit.{uuid.uuid4().hex}")
    logger.propagate = False
    first, second = Lines(), Lines()
    logger.addHandler(first)
    logger.addHandler(second)

    install(logger, burst=2)
    for _ in range(5):
        logger.warning("same")

    assert first.lines == second.lines == ["WARNING same"] * 2
