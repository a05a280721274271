"""Run an agent through every documented pattern, printing what happens as it happens."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..agent import (
    AgentError,
    AgentEvent,
    AgentResult,
    LLMAgent,
    ModelResponded,
    Provider,
    StepFinished,
)
from ..agent.providers import OpenAIProvider, ScriptedProvider
from ..code import GrpcRunner
from ..errors import OasisError
from ._in_process import start_in_process_sandbox
from ._scenarios import TaskPlan, scenarios
from ._world import World

DEFAULT_TARGET = "127.0.0.1:50051"
PROMPT = (
    "You are the assistant of a small coffee-equipment shop. Answer with facts from the tools, "
    "never invented ones. Prefer one execute_code program over many single tool calls; in code, "
    "return values with set_result and files with set_result(data, files=[...])."
)
WIDTH = 100


def add_parser(commands: Any) -> None:
    """Register `demo` on the `oasis-sandbox` subcommands."""
    parser = commands.add_parser(
        "demo",
        help="run an agent through every documented pattern (scripted LLM unless OPENAI_API_KEY is set)",
        description=__doc__,
    )
    add_arguments(parser)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    keys = [s.key for s in scenarios()]
    parser.add_argument(
        "--target",
        default=os.environ.get("OASIS_SANDBOX_TARGET", DEFAULT_TARGET),
        help="sandbox gRPC address; a sandbox is started in-process when none answers there "
        f"(default: $OASIS_SANDBOX_TARGET or {DEFAULT_TARGET})",
    )
    parser.add_argument(
        "--out", default="demo-output", help="folder for returned files (default: demo-output)"
    )
    parser.add_argument(
        "--scripted", action="store_true", help="use the scripted LLM even when one is configured"
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=keys,
        metavar="PATTERN",
        help=f"run only some of: {', '.join(keys)}",
    )


def main(argv: list[str] | None = None) -> int:
    """`python -m oasis.demo`."""
    parser = argparse.ArgumentParser(prog="python -m oasis.demo", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Run the demo; exit status 0 when every pattern worked."""
    try:
        return asyncio.run(_demo(args, Path(args.out).absolute()))
    except KeyboardInterrupt:
        return 130
    except OasisError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2


async def _demo(args: argparse.Namespace, out: Path) -> int:
    selected = [s for s in scenarios() if not args.only or s.key in args.only]
    with tempfile.TemporaryDirectory(prefix="oasis-demo-") as scratch:
        world = await asyncio.to_thread(World, Path(scratch))
        try:
            async with contextlib.AsyncExitStack() as stack:
                target = await _sandbox(args.target, Path(scratch), stack)
                runner = await stack.enter_async_context(GrpcRunner(target, timeout=120.0))
                info = await runner.info()
                runtimes = ", ".join(f"{name} {version}" for name, version in info.runtimes.items())
                print(f"sandbox: {target} ({runtimes})")
                provider = _real_provider(args)
                if provider is not None:
                    await stack.enter_async_context(provider)
                    print(f"LLM: {provider.model} at {provider.base_url}")
                else:
                    print(
                        "LLM: scripted (set OPENAI_API_KEY, and optionally OPENAI_BASE_URL and OPENAI_MODEL, for a real model)"
                    )
                print(
                    f"tools: SQLite database {world.db_path.name}, rates service at {world.rates_url}"
                )
                print(f"returned files go to {out}")
                has_node = "node" in info.runtimes
                passed = 0
                for number, scenario in enumerate(selected, 1):
                    print(
                        f"\n{'=' * 3} {number}/{len(selected)}  {scenario.title} {'=' * (WIDTH - len(scenario.title) - 12)}"
                    )
                    if scenario.key == "node" and not has_node:
                        print("skipped: the sandbox has no Node.js runtime")
                        continue
                    ok = True
                    for plan in scenario.tasks:
                        ok = await _run_task(plan, world, runner, provider, out) and ok
                    passed += ok
                    print("pattern ok" if ok else "PATTERN FAILED")
                if "conditional" in {s.key for s in selected}:
                    placed = await asyncio.to_thread(world.reorders)
                    print(f"\nreorders now in the database: {json.dumps(placed)}")
                print(f"\n{passed}/{len(selected)} patterns worked.")
                return 0 if passed == len(selected) else 1
        finally:
            await asyncio.to_thread(world.close)


async def _sandbox(target: str, scratch: Path, stack: contextlib.AsyncExitStack) -> str:
    """`target` when a sandbox answers there; else a sandbox started in this process."""
    async with GrpcRunner(target, timeout=3.0, max_retries=0) as probe:
        try:
            await probe.info()
            print(f"using the sandbox at {target}")
            return target
        except OasisError:
            pass
    try:
        port = await start_in_process_sandbox(scratch / "workspaces", stack)
    except Exception as exc:
        raise OasisError(
            f"no sandbox answered at {target}, and starting one failed: {exc}"
        ) from exc
    print(f"no sandbox answered at {target}: started one in this process at 127.0.0.1:{port}")
    return f"127.0.0.1:{port}"


def _real_provider(args: argparse.Namespace) -> OpenAIProvider | None:
    if args.scripted or not (os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL")):
        return None
    return OpenAIProvider()


async def _run_task(
    plan: TaskPlan, world: World, runner: GrpcRunner, real: OpenAIProvider | None, out: Path
) -> bool:
    provider: Provider = real if real is not None else ScriptedProvider(plan.script)
    agent = LLMAgent(
        "shop-assistant",
        "Answers questions about the shop's customers, stock, sales and exchange rates.",
        provider,
        tools=world.tools(),
        code_runner=runner,
        plan_execution=True,
        prompt=PROMPT,
        max_iterations=8 if real is not None else len(plan.script),
    )
    print(_wrap("task: ", plan.task.input))
    for attachment in plan.task.attachments:
        print(f"      + {attachment.name} ({attachment.mime}, {len(attachment.data)} bytes)")
    if plan.task.session_id:
        print(f"      session {plan.task.session_id}: the workspace persists across executions")
    started = time.monotonic()
    try:
        result = await agent.execute(plan.task, on_event=_print_event)
    except AgentError as exc:
        print(f"the LLM failed: {exc}")
        return False
    print(_wrap("answer: ", result.output))
    saved = [await asyncio.to_thread(a.save, out) for a in result.attachments]
    for attachment, path in zip(result.attachments, saved, strict=True):
        print(f"file: {path} ({attachment.mime}, {len(attachment.data)} bytes)")
    calls = sum(s.type == "tool" for s in result.steps)
    tokens = f", {result.usage.total_tokens} tokens" if result.usage.total_tokens else ""
    print(
        f"({result.usage.requests} LLM requests{tokens}, {calls} tool calls, "
        f"{time.monotonic() - started:.1f} s)"
    )
    return _check(plan, result, scripted=real is None)


def _check(plan: TaskPlan, result: AgentResult, *, scripted: bool) -> bool:
    problems: list[str] = []
    if not result.completed:
        problems.append("no final answer")
    if plan.expect_mime and not any(a.mime == plan.expect_mime for a in result.attachments):
        problems.append(f"no {plan.expect_mime} file returned")
    if scripted and any(s.is_error for s in result.steps):
        problems.append("a step failed")
    for problem in problems:
        print(f"problem: {problem}")
    return not problems


def _print_event(event: AgentEvent) -> None:
    """Print the LLM's decisions when it makes them, and each tool call when it finishes."""
    if isinstance(event, ModelResponded):
        if event.response.text and event.response.tool_calls:
            print(_wrap("llm: ", event.response.text))
        for call in event.response.tool_calls:
            args = call.args if isinstance(call.args, dict) else {}
            if call.name == "execute_code" and isinstance(args.get("code"), str):
                print(f"llm -> execute_code ({args.get('runtime') or 'python'}):")
                for line in args["code"].rstrip().splitlines():
                    print(f"       | {line}".rstrip())
            else:
                print(f"llm -> {call.name}({_short(json.dumps(call.args))})")
    elif isinstance(event, StepFinished):
        step = event.step
        if step.source == "llm":
            print(f"llm <- {step.name}{' (error)' if step.is_error else ''}:")
            lines = [piece for line in step.output.splitlines() for piece in _pieces(line)]
            for line in lines[:16]:
                print(f"       {line}".rstrip())
            if len(lines) > 16:
                print(f"       ... {len(lines) - 16} more lines")
        else:
            mark = "!!" if step.is_error else "="
            print(
                f"     {step.source} -> {step.name}({_short(step.input, 60)}) {mark} {_short(step.output)}"
            )


def _pieces(line: str) -> list[str]:
    """A long line as a few lines of at most WIDTH characters."""
    pieces = [line[i : i + WIDTH] for i in range(0, len(line), WIDTH)] or [""]
    return pieces if len(pieces) <= 3 else [*pieces[:3], "..."]


def _short(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _wrap(label: str, text: str) -> str:
    import textwrap

    return textwrap.fill(text, WIDTH, initial_indent=label, subsequent_indent=" " * len(label))
