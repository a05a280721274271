"""The built-in tools: each one's definition (what the LLM sees) and body, side by side.

    execute_code    code.py      a program in the sandbox that calls the agent's tools
    execute_plan    plan.py      independent tool calls in parallel
    agent_<name>    delegate.py  a task for a sub-agent of a Network

A built-in sees the run only through `RunContext` (`_base.py`).
"""

from ._base import AGENT_PREFIX, BUILTIN_NAMES, EXECUTE_CODE, EXECUTE_PLAN, Builtin, RunContext
from .code import ExecuteCode, code_answer
from .delegate import Delegate
from .plan import MAX_PLAN_STEPS, ExecutePlan

__all__ = [
    "AGENT_PREFIX",
    "BUILTIN_NAMES",
    "EXECUTE_CODE",
    "EXECUTE_PLAN",
    "MAX_PLAN_STEPS",
    "Builtin",
    "Delegate",
    "ExecuteCode",
    "ExecutePlan",
    "RunContext",
    "code_answer",
]
