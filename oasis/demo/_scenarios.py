"""The documented patterns as demo tasks, each with the answers a scripted LLM gives."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..agent import AgentTask, Attachment, Message, ModelResponse, ToolDefinition, ToolMessage
from ..agent.providers import ScriptFunction, ScriptItem, tool_calls
from ._world import WEB_ORDERS_CSV


@dataclass(frozen=True, kw_only=True)
class TaskPlan:
    """One task given to the agent, and what a scripted LLM answers to it."""

    task: AgentTask
    script: Sequence[ScriptItem]
    expect_mime: str = ""
    """A returned file of this MIME type is part of a correct answer."""


@dataclass(frozen=True, kw_only=True)
class Scenario:
    key: str
    title: str
    tasks: Sequence[TaskPlan] = field(default_factory=list)


def run_code(code: str, runtime: str = "python") -> ModelResponse:
    return tool_calls(("execute_code", {"runtime": runtime, "code": code.strip() + "\n"}))


def answer(describe: Callable[[Any], str]) -> ScriptFunction:
    """A scripted final answer written from the result the code really returned."""

    def respond(messages: Sequence[Message], tools: Sequence[ToolDefinition]) -> str:
        last = messages[-1]
        if (
            not isinstance(last, ToolMessage)
            or last.is_error
            or not last.content.startswith("Result: ")
        ):
            content = last.content if isinstance(last, ToolMessage) else ""
            return "I could not finish: " + (content.splitlines() or ["no tool answer"])[0]
        return describe(json.loads(last.content.split("\n\n", 1)[0].removeprefix("Result: ")))

    return respond


CHAIN_PYTHON = """
customer = call_tool("get_customer", {"customer_id": "C-1002"})
orders = call_tool("get_orders", {"customer_id": "C-1002"})
total_eur = sum(order["amount_eur"] for order in orders)
rate = call_tool("get_exchange_rate", {"currency": customer["currency"]})
print(f"{len(orders)} orders, {total_eur:.2f} EUR, 1 EUR = {rate['per_eur']} {customer['currency']}")
set_result({
    "customer": customer["name"],
    "orders": len(orders),
    "total_eur": round(total_eur, 2),
    "currency": customer["currency"],
    "total": round(total_eur * rate["per_eur"], 2),
})
"""

CHAIN_NODE = """
const customer = await callTool("get_customer", {customer_id: "C-1001"});
const orders = await callTool("get_orders", {customer_id: "C-1001"});
const totalEur = orders.reduce((sum, order) => sum + order.amount_eur, 0);
const rate = await callTool("get_exchange_rate", {currency: customer.currency});
console.log(`${orders.length} orders, ${totalEur.toFixed(2)} EUR, 1 EUR = ${rate.per_eur} ${customer.currency}`);
setResult({
  customer: customer.name,
  orders: orders.length,
  total_eur: Math.round(totalEur * 100) / 100,
  currency: customer.currency,
  total: Math.round(totalEur * rate.per_eur * 100) / 100,
});
"""

CONDITIONAL = """
reordered, stock_ok = [], []
for sku in ["A-100", "B-200", "C-300", "D-400"]:
    item = call_tool("check_stock", {"sku": sku})
    if item["stock"] < item["reorder_level"]:
        print(f"{sku}: {item['stock']} left, below {item['reorder_level']}: reordering")
        reordered.append(call_tool("place_reorder", {"sku": sku, "quantity": 2 * item["reorder_level"]}))
    else:
        print(f"{sku}: {item['stock']} in stock, fine")
        stock_ok.append(sku)
set_result({"reordered": reordered, "stock_ok": stock_ok})
"""

FAN_OUT = """
import time
currencies = ["USD", "GBP", "JPY", "CHF", "SEK", "NOK"]
started = time.monotonic()
rates = call_tools_parallel([("get_exchange_rate", {"currency": c}) for c in currencies])
print(f"{len(rates)} rates in {time.monotonic() - started:.2f} s; one request alone takes about 0.25 s")
set_result({rate["currency"]: rate["per_eur"] for rate in rates})
"""

CHART = """
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

rows = call_tool("query_db", {"sql": "SELECT month, revenue_eur FROM monthly_revenue "
                                     "WHERE month LIKE '2024-%' ORDER BY month"})
fig, ax = plt.subplots(figsize=(9, 4))
ax.bar([r["month"][5:] for r in rows], [r["revenue_eur"] / 1000 for r in rows], color="#2a9d8f")
ax.set_title("Monthly revenue, 2024")
ax.set_xlabel("month")
ax.set_ylabel("revenue (thousand EUR)")
fig.tight_layout()
fig.savefig("revenue_2024.png", dpi=100)
best = max(rows, key=lambda r: r["revenue_eur"])
worst = min(rows, key=lambda r: r["revenue_eur"])
set_result({"total_eur": sum(r["revenue_eur"] for r in rows), "best": best, "worst": worst},
           files=["revenue_2024.png"])
"""

FILES = """
import pandas as pd
orders = pd.read_csv("web_orders.csv")
orders["revenue"] = orders["quantity"] * orders["unit_price"]
summary = (orders.groupby("region", as_index=False)
           .agg(orders=("order_id", "count"), revenue=("revenue", "sum"))
           .sort_values("revenue", ascending=False))
summary.to_csv("region_summary.csv", index=False)
print(summary.to_string(index=False))
set_result(summary.to_dict(orient="records"), files=["region_summary.csv"])
"""

SESSION_SAVE = """
import json
customers = call_tool("query_db", {"sql": "SELECT id, name, tier, currency FROM customers ORDER BY id"})
with open("customers.json", "w") as f:
    json.dump(customers, f)
set_result({"saved": len(customers), "file": "customers.json"})
"""

SESSION_READ = """
import json, os
print("workspace files:", sorted(os.listdir(".")))
with open("customers.json") as f:
    customers = json.load(f)
set_result([c["name"] for c in customers if c["tier"] == "gold"])
"""


def _money(data: Any) -> str:
    return (
        f"{data['customer']} placed {data['orders']} orders worth {data['total_eur']:.2f} EUR, "
        f"that is {data['total']:,.2f} {data['currency']}."
    )


def scenarios() -> list[Scenario]:
    """The patterns, in the order the demo runs them."""
    session = f"demo-{uuid.uuid4().hex[:12]}"
    return [
        Scenario(
            key="chain",
            title="Sequential tool chain (Python)",
            tasks=[
                TaskPlan(
                    task=AgentTask(
                        input="How much has customer C-1002 spent in total, converted into the customer's "
                        "own currency? Look up the customer, their orders and the exchange rate."
                    ),
                    script=[run_code(CHAIN_PYTHON), answer(_money)],
                )
            ],
        ),
        Scenario(
            key="conditional",
            title="Conditional logic",
            tasks=[
                TaskPlan(
                    task=AgentTask(
                        input="Check the stock of products A-100, B-200, C-300 and D-400. Reorder each "
                        "product whose stock is below its reorder level, ordering twice its reorder "
                        "level; leave the others alone. Tell me what you reordered."
                    ),
                    script=[
                        run_code(CONDITIONAL),
                        answer(
                            lambda d: (
                                "Reordered "
                                + ", ".join(
                                    f"{r['sku']} ({r['quantity']} units)" for r in d["reordered"]
                                )
                                + "; stock is fine for "
                                + ", ".join(d["stock_ok"])
                                + "."
                            )
                        ),
                    ],
                )
            ],
        ),
        Scenario(
            key="fanout",
            title="Parallel fan-out",
            tasks=[
                TaskPlan(
                    task=AgentTask(
                        input="What does one euro buy in USD, GBP, JPY, CHF, SEK and NOK? "
                        "Fetch all six exchange rates at the same time."
                    ),
                    script=[
                        run_code(FAN_OUT),
                        answer(
                            lambda d: (
                                "1 EUR buys " + ", ".join(f"{v} {k}" for k, v in d.items()) + "."
                            )
                        ),
                    ],
                )
            ],
        ),
        Scenario(
            key="chart",
            title="Visualization: SQLite to a matplotlib chart",
            tasks=[
                TaskPlan(
                    task=AgentTask(
                        input="Chart the monthly revenue of 2024 from the shop database (table "
                        "monthly_revenue) as a bar chart, return it as a PNG file, and tell me the "
                        "best and the worst month."
                    ),
                    script=[
                        run_code(CHART),
                        answer(
                            lambda d: (
                                f"Revenue in 2024 was {d['total_eur']:,.0f} EUR. Best month: "
                                f"{d['best']['month']} ({d['best']['revenue_eur']:,.0f} EUR); worst: "
                                f"{d['worst']['month']} ({d['worst']['revenue_eur']:,.0f} EUR). "
                                "The chart is attached."
                            )
                        ),
                    ],
                    expect_mime="image/png",
                )
            ],
        ),
        Scenario(
            key="files",
            title="Input and output files",
            tasks=[
                TaskPlan(
                    task=AgentTask(
                        input="Summarize the attached web_orders.csv: number of orders and revenue "
                        "(quantity times unit_price) per region, highest revenue first. Return the "
                        "summary as a file named region_summary.csv.",
                        attachments=[
                            Attachment(
                                name="web_orders.csv", data=WEB_ORDERS_CSV.encode(), mime="text/csv"
                            )
                        ],
                    ),
                    script=[
                        run_code(FILES),
                        answer(
                            lambda rows: (
                                "Revenue by region: "
                                + ", ".join(
                                    f"{r['region']} {r['revenue']:.2f} EUR ({r['orders']} orders)"
                                    for r in rows
                                )
                                + ". The summary is attached as region_summary.csv."
                            )
                        ),
                    ],
                    expect_mime="text/csv",
                )
            ],
        ),
        Scenario(
            key="session",
            title="Session persistence across two executions",
            tasks=[
                TaskPlan(
                    task=AgentTask(
                        input="Load all customers (id, name, tier, currency) from the shop database and "
                        "save them in your workspace as customers.json, for later questions. "
                        "How many are there?",
                        session_id=session,
                    ),
                    script=[
                        run_code(SESSION_SAVE),
                        answer(lambda d: f"Saved {d['saved']} customers to {d['file']}."),
                    ],
                ),
                TaskPlan(
                    task=AgentTask(
                        input="Using the customers.json you saved in your workspace earlier (do not "
                        "query the database again), which customers are in the gold tier?",
                        session_id=session,
                    ),
                    script=[
                        run_code(SESSION_READ),
                        answer(
                            lambda names: (
                                "Gold tier, from the saved file: " + ", ".join(names) + "."
                            )
                        ),
                    ],
                ),
            ],
        ),
        Scenario(
            key="node",
            title="The same chain in Node.js",
            tasks=[
                TaskPlan(
                    task=AgentTask(
                        input="Using Node.js code (execute_code with runtime node): how much has "
                        "customer C-1001 spent in total, converted into the customer's own currency?"
                    ),
                    script=[run_code(CHAIN_NODE, "node"), answer(_money)],
                )
            ],
        ),
    ]
