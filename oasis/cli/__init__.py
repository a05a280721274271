"""Client commands behind `oasis-sandbox` (`exec`); `serve` lives in sandbox_server."""
