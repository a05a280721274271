"""The demo's local world: a SQLite shop database, a rates service on loopback, and tools over both."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ..agent import Tool, tool
from ..errors import ToolError

CUSTOMERS = [
    ("C-1001", "Ada Lovelace", "GB", "GBP", "gold"),
    ("C-1002", "Grace Hopper", "US", "USD", "silver"),
    ("C-1003", "Linus Torvalds", "FI", "EUR", "gold"),
    ("C-1004", "Yukihiro Matsumoto", "JP", "JPY", "bronze"),
]
ORDERS = [
    ("C-1001", "2024-02-11", 120.0),
    ("C-1001", "2024-05-03", 89.5),
    ("C-1002", "2024-01-20", 310.0),
    ("C-1002", "2024-03-14", 45.25),
    ("C-1002", "2024-07-30", 199.99),
    ("C-1003", "2024-04-02", 15.0),
    ("C-1004", "2024-06-18", 560.0),
]
INVENTORY = [
    ("A-100", "Espresso beans 1kg", 12, 20),
    ("B-200", "Milk frother", 45, 10),
    ("C-300", "Paper filters", 3, 50),
    ("D-400", "Burr grinder", 8, 5),
]
REVENUE_2024 = [41200, 38900, 45100, 47800, 52300, 58900, 61200, 57400, 50100, 48800, 55600, 71900]
RATES_PER_EUR = {
    "EUR": 1.0,
    "USD": 1.08,
    "GBP": 0.85,
    "JPY": 161.2,
    "CHF": 0.95,
    "SEK": 11.4,
    "NOK": 11.6,
}
RATES_LATENCY = 0.25
"""Seconds the rates service takes per request, like a remote API: fan-out pays it once."""

WEB_ORDERS_CSV = "order_id,region,product,quantity,unit_price\n" + "".join(
    f"W-{n:03d},{region},{product},{qty},{price}\n"
    for n, (region, product, qty, price) in enumerate(
        [
            ("north", "Espresso beans 1kg", 3, 18.5),
            ("south", "Milk frother", 1, 64.0),
            ("north", "Paper filters", 10, 2.4),
            ("east", "Burr grinder", 1, 189.0),
            ("west", "Espresso beans 1kg", 5, 18.5),
            ("south", "Paper filters", 4, 2.4),
            ("east", "Espresso beans 1kg", 2, 18.5),
            ("west", "Milk frother", 2, 64.0),
            ("north", "Burr grinder", 1, 189.0),
            ("south", "Espresso beans 1kg", 6, 18.5),
            ("west", "Paper filters", 20, 2.4),
            ("east", "Milk frother", 1, 64.0),
        ],
        start=1,
    )
)


class World:
    """Builds the database and starts the rates service; `close()` stops it."""

    def __init__(self, directory: Path) -> None:
        self.db_path = directory / "shop.sqlite3"
        self._create_database()
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _RatesHandler)
        self._http.daemon_threads = True
        self.rates_url = f"http://127.0.0.1:{self._http.server_address[1]}/v1/rates"
        self._thread = threading.Thread(
            target=self._http.serve_forever, name="demo-rates", daemon=True
        )
        self._thread.start()
        # Plain HTTP to loopback: never through a proxy from the environment.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def close(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(timeout=5)

    def _create_database(self) -> None:
        db = sqlite3.connect(self.db_path)
        with contextlib.closing(db), db:
            db.executescript(
                """
                CREATE TABLE customers (id TEXT PRIMARY KEY, name TEXT, country TEXT, currency TEXT, tier TEXT);
                CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id TEXT, order_date TEXT, amount_eur REAL);
                CREATE TABLE inventory (sku TEXT PRIMARY KEY, name TEXT, stock INTEGER, reorder_level INTEGER);
                CREATE TABLE reorders (id INTEGER PRIMARY KEY, sku TEXT, quantity INTEGER, placed_at TEXT);
                CREATE TABLE monthly_revenue (month TEXT PRIMARY KEY, revenue_eur REAL, orders INTEGER);
                """
            )
            db.executemany("INSERT INTO customers VALUES (?, ?, ?, ?, ?)", CUSTOMERS)
            db.executemany(
                "INSERT INTO orders (customer_id, order_date, amount_eur) VALUES (?, ?, ?)", ORDERS
            )
            db.executemany("INSERT INTO inventory VALUES (?, ?, ?, ?)", INVENTORY)
            db.executemany(
                "INSERT INTO monthly_revenue VALUES (?, ?, ?)",
                [
                    (f"2024-{m:02d}", revenue, revenue // 47)
                    for m, revenue in enumerate(REVENUE_2024, 1)
                ],
            )
        self._schema = (
            "customers(id, name, country, currency, tier); orders(id, customer_id, order_date, amount_eur); "
            "inventory(sku, name, stock, reorder_level); reorders(id, sku, quantity, placed_at); "
            "monthly_revenue(month as 'YYYY-MM', revenue_eur, orders)"
        )

    def _rows(
        self, sql: str, params: tuple[Any, ...] = (), *, read_only: bool = True
    ) -> list[dict[str, Any]]:
        uri = f"file:{self.db_path}?mode=ro" if read_only else f"file:{self.db_path}"
        db = sqlite3.connect(uri, uri=True)
        with contextlib.closing(db), db:
            db.row_factory = sqlite3.Row
            return [dict(row) for row in db.execute(sql, params)]

    def tools(self) -> list[Tool]:
        """The tools the demo agent (and its code) can call."""
        world = self

        @tool
        def get_customer(customer_id: str) -> dict[str, Any]:
            """A customer's name, country, currency and loyalty tier, by id such as C-1001."""
            rows = world._rows("SELECT * FROM customers WHERE id = ?", (customer_id,))
            if not rows:
                raise ToolError(f"no customer with id {customer_id!r}")
            return rows[0]

        @tool
        def get_orders(customer_id: str) -> list[dict[str, Any]]:
            """A customer's orders: date and amount in EUR."""
            return world._rows(
                "SELECT order_date, amount_eur FROM orders WHERE customer_id = ? ORDER BY order_date",
                (customer_id,),
            )

        @tool
        def get_exchange_rate(currency: str) -> dict[str, Any]:
            """How many units of `currency` (ISO code such as USD) one euro buys, from the rates service."""
            url = f"{world.rates_url}/{currency.upper()}"
            try:
                with world._opener.open(url, timeout=10) as response:
                    answer: dict[str, Any] = json.load(response)
                    return answer
            except urllib.error.HTTPError as exc:
                raise ToolError(json.load(exc).get("error", str(exc))) from None

        @tool
        def check_stock(sku: str) -> dict[str, Any]:
            """Stock level and reorder level of a product, by SKU such as A-100."""
            rows = world._rows("SELECT * FROM inventory WHERE sku = ?", (sku,))
            if not rows:
                raise ToolError(f"no product with SKU {sku!r}")
            return rows[0]

        @tool
        def place_reorder(sku: str, quantity: int) -> dict[str, Any]:
            """Order more of a product from the supplier."""
            if quantity <= 0:
                raise ToolError("quantity must be positive")
            world._rows(
                "INSERT INTO reorders (sku, quantity, placed_at) VALUES (?, ?, datetime('now'))",
                (sku, quantity),
                read_only=False,
            )
            return {"sku": sku, "quantity": quantity, "status": "placed"}

        @tool(
            description=f"Run a read-only SQL SELECT on the shop database. Tables: {self._schema}."
        )
        def query_db(sql: str) -> list[dict[str, Any]]:
            if not sql.lstrip().lower().startswith(("select", "with")):
                raise ToolError("only SELECT queries are allowed")
            try:
                return world._rows(sql)
            except sqlite3.Error as exc:
                raise ToolError(f"SQL error: {exc}") from None

        return [get_customer, get_orders, get_exchange_rate, check_stock, place_reorder, query_db]

    def reorders(self) -> list[dict[str, Any]]:
        return self._rows("SELECT sku, quantity FROM reorders ORDER BY id")


class _RatesHandler(BaseHTTPRequestHandler):
    """GET /v1/rates/<CUR>: {"currency", "per_eur"}, after a remote-API-like delay."""

    def do_GET(self) -> None:
        time.sleep(RATES_LATENCY)
        prefix = "/v1/rates/"
        code = self.path[len(prefix) :] if self.path.startswith(prefix) else ""
        if code in RATES_PER_EUR:
            self._send(200, {"currency": code, "per_eur": RATES_PER_EUR[code], "base": "EUR"})
        else:
            self._send(404, {"error": f"no rate for {code or self.path!r}"})

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep the demo's output to what the agent does
