"""The HTTP facade by raw requests: field names and status codes of the documented API.

Every request here is built by hand with aiohttp, not through HTTPRunner, so
these tests pin the wire format itself.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sandbox_server.facade import MAX_BODY
from sandbox_server.server import SandboxServer

from ..conftest import StartServer
from ..helpers import eventually, new_marker, pids_with
from .conftest import CallbackServer, base_url, free_port


async def execute(
    http: aiohttp.ClientSession, server: SandboxServer, body: dict[str, Any] | bytes
) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with http.post(
        base_url(server) + "/execute",
        data=io.BytesIO(data),
        headers={"Content-Type": "application/json"},
    ) as response:
        assert response.content_type == "application/json"
        return response.status, await response.json()


def request(code: str, **fields: Any) -> dict[str, Any]:
    """A full /execute body with every documented field."""
    body: dict[str, Any] = {
        "execution_id": "exec-1",
        "callback_url": "",
        "code": code,
        "runtime": "python",
        "session_id": "",
        "timeout": 20,
        "files": [],
    }
    body.update(fields)
    return body


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# -- health -----------------------------------------------------------------------


async def test_health_is_ready(http: aiohttp.ClientSession, server: SandboxServer) -> None:
    async with http.get(base_url(server) + "/health") as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        assert await response.json() == {"status": "ready"}


# -- POST /execute: the response --------------------------------------------------


async def test_execute_answers_the_documented_fields_and_omits_an_empty_error(
    http: aiohttp.ClientSession, server: SandboxServer
) -> None:
    status, body = await execute(http, server, request("print('hello')\nset_result({'n': 1})"))

    assert status == 200
    assert list(body) == ["output", "logs", "exit_code", "files"]
    assert json.loads(body["output"]) == {"n": 1}
    assert body["logs"] == "hello\n"
    assert body["exit_code"] == 0
    assert body["files"] == []


async def test_execute_reports_a_failing_code_in_the_error_field(
    http: aiohttp.ClientSession, server: SandboxServer
) -> None:
    status, body = await execute(http, server, request("raise ValueError('boom')"))

    assert status == 200
    assert list(body) == ["output", "logs", "exit_code", "error", "files"]
    assert body["exit_code"] != 0
    assert "ValueError: boom" in body["error"]
    assert body["output"] == ""


async def test_execute_accepts_a_body_with_only_code(
    http: aiohttp.ClientSession, server: SandboxServer
) -> None:
    status, body = await execute(http, server, {"code": "set_result(6 * 7)"})

    assert status == 200
    assert body["output"] == "42"


async def test_node_runtime(http: aiohttp.ClientSession, server: SandboxServer) -> None:
    code = "console.log('from node');\nsetResult({sum: 1 + 2});"
    status, body = await execute(http, server, request(code, runtime="node"))

    assert status == 200, body
    assert json.loads(body["output"]) == {"sum": 3}
    assert body["logs"] == "from node\n"
    assert "error" not in body


async def test_timeout_is_whole_seconds(http: aiohttp.ClientSession, server: SandboxServer) -> None:
    status, body = await execute(http, server, request("import time\ntime.sleep(60)", timeout=1))

    assert status == 200
    assert body["exit_code"] == -1
    assert "timed out after 1 s" in body["error"]


# -- files, base64 both ways --------------------------------------------------------


async def test_input_and_output_files_travel_as_base64(
    http: aiohttp.ClientSession, server: SandboxServer
) -> None:
    payload = bytes(range(256)) * 4
    code = (
        "data = open('in/data.bin', 'rb').read()\n"
        "open('out.bin', 'wb').write(data[::-1])\n"
        "open('chart.png', 'wb').write(b'\\x89PNG\\r\\n\\x1a\\n' + b'0' * 16)\n"
        "set_result({'size': len(data)}, files=['out.bin', 'chart.png'])"
    )
    files = [
        {"name": "in/data.bin", "data": b64(payload), "mime": "application/octet-stream", "url": ""}
    ]
    status, body = await execute(http, server, request(code, files=files))

    assert status == 200, body
    assert json.loads(body["output"]) == {"size": 1024}
    assert [list(f) for f in body["files"]] == [["name", "mime", "data"], ["name", "mime", "data"]]
    out, chart = body["files"]
    assert out["name"] == "out.bin"
    assert base64.b64decode(out["data"]) == payload[::-1]
    assert chart["name"] == "chart.png"
    assert chart["mime"] == "image/png"
    assert base64.b64decode(chart["data"]).startswith(b"\x89PNG")


async def test_output_file_larger_than_a_chunk_is_returned_whole(
    http: aiohttp.ClientSession, server: SandboxServer
) -> None:
    # Over 1 MiB the core sends the file in chunks, which the facade spools to disk.
    code = "open('big.bin', 'wb').write(bytes(range(256)) * 12289)\nset_result(None, files=['big.bin'])"
    status, body = await execute(http, server, request(code))

    assert status == 200, body.get("error")
    [big] = body["files"]
    assert base64.b64decode(big["data"]) == bytes(range(256)) * 12289


async def test_large_input_file_just_under_the_body_limit(
    http: aiohttp.ClientSession, server: SandboxServer
) -> None:
    payload = b"\x07" * (20 * 1024 * 1024)
    code = "import os\nset_result(os.path.getsize('blob.bin'))"
    body = json.dumps(request(code, files=[{"name": "blob.bin", "data": b64(payload)}])).encode()
    assert len(body) < MAX_BODY

    status, answer = await execute(http, server, body)

    assert status == 200, answer
    assert answer["output"] == str(len(payload))


# -- 400 ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param(b"{not json", "invalid JSON", id="invalid-json"),
        pytest.param(b"[1, 2]", "invalid JSON", id="not-an-object"),
        pytest.param(request("   "), "code is empty", id="empty-code"),
        pytest.param({"runtime": "python"}, "code is empty", id="missing-code"),
        pytest.param(
            request("pass", files=[{"name": "a.txt", "data": "***not base64***"}]),
            "not valid base64",
            id="bad-base64",
        ),
        pytest.param(
            request("pass", files=[{"name": "/etc/passwd", "data": ""}]),
            "absolute",
            id="absolute-name",
        ),
        pytest.param(
            request("pass", files=[{"name": "../up.txt", "data": ""}]), "'..'", id="dotdot-name"
        ),
        pytest.param(request("pass", files=[{"name": "a\x00b", "data": ""}]), "NUL", id="nul-name"),
        pytest.param(
            request("pass", session_id="../escape"), "invalid session_id", id="bad-session"
        ),
        pytest.param(
            request("pass", timeout=1.5), "whole number of seconds", id="fractional-timeout"
        ),
        pytest.param(request("pass", timeout=-3), "negative", id="negative-timeout"),
        pytest.param(request(123), "code must be a JSON string", id="code-not-string"),
        pytest.param(
            request("pass", timeout=float("inf")), "whole number of seconds", id="infinite-timeout"
        ),
        pytest.param(
            request("pass", files=[{"name": "a.csv", "url": "https://example.test/a.csv"}]),
            "from a url is not supported",
            id="url-only-file",
        ),
        pytest.param(
            request("pass", callback_url="ftp://host/x"), "not an http", id="bad-callback-url"
        ),
    ],
)
async def test_bad_requests_are_400_with_an_error_field(
    http: aiohttp.ClientSession, server: SandboxServer, body: dict[str, Any] | bytes, message: str
) -> None:
    status, answer = await execute(http, server, body)

    assert status == 400
    assert (list(answer), answer["code"]) == (["error", "code"], "INVALID_ARGUMENT")
    assert message in answer["error"]


async def test_unsupported_runtime_names_the_supported_ones(
    http: aiohttp.ClientSession, server: SandboxServer
) -> None:
    status, answer = await execute(http, server, request("pass", runtime="ruby"))

    assert status == 400
    assert answer == {
        "error": "unsupported runtime: ruby; supported: python, node",
        "code": "INVALID_ARGUMENT",
    }


async def test_a_misspelt_field_is_400_naming_it_and_the_known_one(
    http: aiohttp.ClientSession, server: SandboxServer
) -> None:
    status, answer = await execute(http, server, {"code": "pass", "session": "s1"})

    assert status == 400
    assert answer["error"].startswith("unknown field 'session' (did you mean 'session_id'?)")


async def test_an_unknown_file_field_is_400_naming_the_file_and_field(
    http: aiohttp.ClientSession, server: SandboxServer
) -> None:
    files = [{"name": "a.txt", "data": b64(b"a"), "mime": "text/plain"}]
    files.append({"name": "b.txt", "data": b64(b"b"), "mim": "text/plain"})
    status, answer = await execute(http, server, request("pass", files=files))

    assert status == 400
    assert answer["error"].startswith("files[1]: unknown field 'mim' (did you mean 'mime'?)")


async def test_an_unknown_field_unlike_any_known_one_lists_the_fields(
    http: aiohttp.ClientSession, server: SandboxServer
) -> None:
    status, answer = await execute(http, server, request("pass", env={"A": "1"}))

    assert status == 400
    assert "did you mean" not in answer["error"]
    assert answer["error"].endswith(
        "unknown field 'env'; the fields are "
        "execution_id, callback_url, code, runtime, session_id, timeout, files, keep_state"
    )


async def test_every_documented_field_is_accepted(
    http: aiohttp.ClientSession, server: SandboxServer
) -> None:
    file = {"name": "a.txt", "data": b64(b"a"), "mime": "text/plain", "url": ""}
    body = request("set_result(open('a.txt').read())", files=[file])

    status, answer = await execute(http, server, body)

    assert status == 200, answer
    assert json.loads(answer["output"]) == "a"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"timeout": "30"}, "timeout must be a whole number of seconds, got '30'"),
        ({"timeout": True}, "timeout must be a whole number of seconds, got True"),
        ({"session_id": 7}, "session_id must be a JSON string, got 7"),
        ({"files": {"name": "a"}}, "files must be a JSON array, got {'name': 'a'}"),
        ({"keep_state": "true"}, "keep_state must be a JSON boolean, got 'true'"),
        ({"keep_state": 1}, "keep_state must be a JSON boolean, got 1"),
    ],
    ids=[
        "string-timeout",
        "bool-timeout",
        "number-session",
        "object-files",
        "string-keep-state",
        "number-keep-state",
    ],
)
async def test_a_value_of_the_wrong_type_is_shown_as_received(
    http: aiohttp.ClientSession, server: SandboxServer, fields: dict[str, Any], message: str
) -> None:
    status, answer = await execute(http, server, request("pass", **fields))

    assert status == 400
    assert answer == {"error": message, "code": "INVALID_ARGUMENT"}


# -- 405, 413 ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/execute", "POST"),
        ("PUT", "/execute", "POST"),
        ("POST", "/health", "GET, HEAD"),
        ("GET", "/workspace/s1", "DELETE"),
        ("POST", "/workspace/s1", "DELETE"),
        ("GET", "/workspace/s1/reset", "POST"),
        ("DELETE", "/workspace/s1/reset", "POST"),
    ],
)
async def test_wrong_method_is_405(
    http: aiohttp.ClientSession, server: SandboxServer, method: str, path: str, allowed: str
) -> None:
    async with http.request(method, base_url(server) + path) as response:
        assert response.status == 405
        assert response.headers["Allow"] == allowed
        answer = await response.json()
    assert list(answer) == ["error", "code"]
    assert method in answer["error"]
    assert answer["code"] == "UNIMPLEMENTED"  # as gRPC answers a method it does not have


async def test_unknown_path_is_a_json_404(
    http: aiohttp.ClientSession, server: SandboxServer
) -> None:
    async with http.get(base_url(server) + "/v2/execute") as response:
        assert response.status == 404
        assert await response.json() == {
            "error": "no such endpoint: GET /v2/execute",
            "code": "NOT_FOUND",
        }


async def test_body_over_32_mib_is_413(http: aiohttp.ClientSession, server: SandboxServer) -> None:
    status, answer = await execute(http, server, b" " * (MAX_BODY + 1))

    assert status == 413
    assert (list(answer), answer["code"]) == (["error", "code"], "INVALID_ARGUMENT")
    assert "32 MiB" in answer["error"]


async def test_chunked_body_over_32_mib_is_413(
    http: aiohttp.ClientSession, server: SandboxServer
) -> None:
    async def body() -> Any:
        for _ in range(33):
            yield b" " * (1024 * 1024)

    async with http.post(base_url(server) + "/execute", data=body()) as response:
        assert response.status == 413
        assert (await response.json())["code"] == "INVALID_ARGUMENT"


# -- 503 --------------------------------------------------------------------------------


async def test_capacity_reached_is_503(
    http: aiohttp.ClientSession, start_server: StartServer, callback: CallbackServer
) -> None:
    server = await start_server(SANDBOX_MAX_CONCURRENT="1")
    release = callback.hold()
    first = asyncio.create_task(
        execute(http, server, request("set_result(call_tool('wait'))", callback_url=callback.url))
    )
    await callback.wait_for_calls(1)

    status, answer = await execute(http, server, request("pass"))
    release.set()
    first_status, first_body = await first

    assert status == 503
    assert (list(answer), answer["code"]) == (["error", "code"], "RESOURCE_EXHAUSTED")
    assert "capacity reached" in answer["error"]
    assert (first_status, first_body["output"]) == (200, '"released"')


async def test_health_is_503_and_execute_refused_while_shutting_down(
    http: aiohttp.ClientSession, start_server: StartServer, callback: CallbackServer
) -> None:
    server = await start_server()
    release = callback.hold()
    running = asyncio.create_task(
        execute(http, server, request("set_result(call_tool('wait'))", callback_url=callback.url))
    )
    await callback.wait_for_calls(1)
    stopping = asyncio.create_task(server.stop(grace=60))

    async def health_status() -> int:
        async with http.get(base_url(server) + "/health") as response:
            return response.status

    await eventually(lambda: _equals(health_status(), 503), what="health 503")
    async with http.get(base_url(server) + "/health") as response:
        health = await response.json()
    refused_status, refused = await execute(http, server, request("pass"))
    release.set()
    running_status, running_body = await running
    await stopping

    assert health["status"] == "shutting_down"
    assert "shutting down" in health["error"]
    assert health["code"] == "UNAVAILABLE"
    assert refused_status == 503
    assert "shutting down" in refused["error"]
    assert refused["code"] == "UNAVAILABLE"  # not RESOURCE_EXHAUSTED: retry elsewhere, not later
    # The execution that was running when the shutdown began still finished.
    assert (running_status, running_body["output"]) == (200, '"released"')


async def _equals(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


# -- DELETE /workspace -------------------------------------------------------------------


async def test_delete_workspace_is_204_and_removes_the_session(
    http: aiohttp.ClientSession, server: SandboxServer
) -> None:
    write = request("open('keep.txt', 'w').write('kept')", session_id="del-me")
    check = request("import os\nset_result(os.path.exists('keep.txt'))", session_id="del-me")
    assert (await execute(http, server, write))[0] == 200
    assert (await execute(http, server, check))[1]["output"] == "true"

    async with http.delete(base_url(server) + "/workspace/del-me") as response:
        assert response.status == 204
        assert response.headers["Oasis-Deleted"] == "true"
        assert await response.read() == b""

    assert (await execute(http, server, check))[1]["output"] == "false"


async def test_delete_unknown_workspace_is_204(
    http: aiohttp.ClientSession, server: SandboxServer
) -> None:
    async with http.delete(base_url(server) + "/workspace/never-created") as response:
        assert response.status == 204
        assert response.headers["Oasis-Deleted"] == "false"


async def test_delete_invalid_session_id_is_400(
    http: aiohttp.ClientSession, server: SandboxServer
) -> None:
    async with http.delete(base_url(server) + "/workspace/-bad") as response:
        assert response.status == 400
        answer = await response.json()
    assert "invalid session_id" in answer["error"]
    assert answer["code"] == "INVALID_ARGUMENT"


async def test_empty_session_id_is_a_one_off_workspace(
    http: aiohttp.ClientSession, server: SandboxServer
) -> None:
    await execute(http, server, request("open('left.txt', 'w').write('x')", session_id=""))
    _, body = await execute(
        http, server, request("import os\nset_result(os.listdir('.'))", session_id="")
    )

    assert "left.txt" not in json.loads(body["output"])


# -- stateful sessions: keep_state and POST /workspace/{id}/reset ------------------------


async def reset(
    http: aiohttp.ClientSession, server: SandboxServer, session_id: str
) -> tuple[int, dict[str, Any]]:
    async with http.post(base_url(server) + f"/workspace/{session_id}/reset") as response:
        assert response.content_type == "application/json"
        return response.status, await response.json()


STATE_FIELDS = ["output", "logs", "exit_code", "state_kept", "fresh_state", "fresh_state_reason"]


async def test_keep_state_keeps_variables_and_answers_the_state_fields(
    http: aiohttp.ClientSession, server: SandboxServer
) -> None:
    first = request("rows = [3, 4, 5]\nset_result(len(rows))", session_id="st-1", keep_state=True)
    second = request("set_result(sum(rows))", session_id="st-1", keep_state=True)

    status, one = await execute(http, server, first)
    assert status == 200, one
    assert list(one) == [*STATE_FIELDS, "files"]
    assert (one["output"], one["state_kept"]) == ("3", True)
    assert (one["fresh_state"], one["fresh_state_reason"]) == (True, "")
    _, two = await execute(http, server, second)
    assert (two["output"], two["state_kept"], two["fresh_state"]) == ("12", True, False), two
    # Without keep_state the same session runs in a fresh process, with the original fields only.
    _, plain = await execute(
        http, server, request("set_result('rows' in globals())", session_id="st-1")
    )
    assert list(plain) == ["output", "logs", "exit_code", "files"]
    assert plain["output"] == "false"


async def test_reset_ends_the_state_and_the_next_run_is_told_why(
    http: aiohttp.ClientSession, server: SandboxServer
) -> None:
    await execute(http, server, request("x = 1", session_id="st-2", keep_state=True))

    assert await reset(http, server, "st-2") == (200, {"had_state": True})
    assert await reset(http, server, "st-2") == (200, {"had_state": False})
    _, after = await execute(
        http, server, request("set_result('x' in globals())", session_id="st-2", keep_state=True)
    )
    assert (after["output"], after["fresh_state"]) == ("false", True), after
    assert after["fresh_state_reason"]  # lost, not never made: the client is told why


async def test_keep_state_without_a_session_is_400(
    http: aiohttp.ClientSession, server: SandboxServer
) -> None:
    status, answer = await execute(http, server, request("x = 1", keep_state=True))

    assert (status, answer["code"]) == (400, "INVALID_ARGUMENT")
    assert "session_id" in answer["error"]


async def test_reset_of_a_session_without_state_answers_false(
    http: aiohttp.ClientSession, server: SandboxServer
) -> None:
    assert await reset(http, server, "never-created") == (200, {"had_state": False})
    await execute(http, server, request("open('f', 'w').write('x')", session_id="files-only"))
    assert await reset(http, server, "files-only") == (200, {"had_state": False})


async def test_reset_of_an_invalid_session_id_is_400(
    http: aiohttp.ClientSession, server: SandboxServer
) -> None:
    status, answer = await reset(http, server, "-bad")

    assert (status, answer["code"]) == (400, "INVALID_ARGUMENT")
    assert "invalid session_id" in answer["error"]


# -- tool callbacks ----------------------------------------------------------------------


async def test_tool_call_is_posted_to_the_callback_url_with_documented_fields(
    http: aiohttp.ClientSession, server: SandboxServer, callback: CallbackServer
) -> None:
    async def answer(body: dict[str, Any]) -> web.Response:
        return web.json_response({"data": json.dumps(body["args"]["a"] + body["args"]["b"])})

    callback.answer = answer
    code = (
        "r = call_tool('add', {'a': 2, 'b': 3})\nset_result({'sum': r, 'type': type(r).__name__})"
    )
    status, body = await execute(
        http, server, request(code, execution_id="exec-42", callback_url=callback.url)
    )

    assert status == 200, body
    assert callback.calls == [{"execution_id": "exec-42", "name": "add", "args": {"a": 2, "b": 3}}]
    assert json.loads(body["output"]) == {"sum": 5, "type": "int"}


async def test_tool_answer_that_is_not_json_reaches_the_code_as_a_string(
    http: aiohttp.ClientSession, server: SandboxServer, callback: CallbackServer
) -> None:
    async def answer(body: dict[str, Any]) -> web.Response:
        return web.json_response({"data": "plain words", "error": ""})

    callback.answer = answer
    status, body = await execute(
        http, server, request("set_result(call_tool('say'))", callback_url=callback.url)
    )

    assert (status, body["output"]) == (200, '"plain words"')


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        pytest.param(
            lambda: web.json_response({"error": "no such city"}), "no such city", id="error-field"
        ),
        pytest.param(
            lambda: web.json_response({"error": "db down"}, status=500),
            "HTTP 500: db down",
            id="http-500",
        ),
        pytest.param(
            lambda: web.Response(status=404, text="nope"), "HTTP 404: nope", id="http-404"
        ),
        pytest.param(lambda: web.Response(text="<html>"), "not a JSON object", id="not-json"),
    ],
)
async def test_tool_failures_reach_the_code_as_exceptions(
    http: aiohttp.ClientSession,
    server: SandboxServer,
    callback: CallbackServer,
    reply: Any,
    expected: str,
) -> None:
    async def answer(body: dict[str, Any]) -> web.Response:
        return reply()  # type: ignore[no-any-return]

    callback.answer = answer
    code = (
        "try:\n    call_tool('weather', {'city': 'x'})\n"
        "except RuntimeError as exc:\n    set_result({'caught': str(exc)})"
    )
    status, body = await execute(http, server, request(code, callback_url=callback.url))

    assert status == 200
    assert body["exit_code"] == 0
    assert expected in json.loads(body["output"])["caught"]


async def test_unreachable_callback_is_a_tool_error_not_a_crash(
    http: aiohttp.ClientSession, server: SandboxServer
) -> None:
    code = (
        "try:\n    call_tool('anything')\n"
        "except RuntimeError as exc:\n    set_result({'caught': str(exc)})"
    )
    url = f"http://127.0.0.1:{free_port()}/tools"
    status, body = await execute(http, server, request(code, callback_url=url))

    assert status == 200
    assert "could not be reached" in json.loads(body["output"])["caught"]


async def test_tool_call_without_callback_url_is_a_tool_error(
    http: aiohttp.ClientSession, server: SandboxServer
) -> None:
    code = "try:\n    call_tool('x')\nexcept RuntimeError as exc:\n    set_result(str(exc))"
    status, body = await execute(http, server, request(code, callback_url=""))

    assert status == 200
    assert "no callback_url" in json.loads(body["output"])


async def test_parallel_tool_calls_reach_the_callback_concurrently(
    http: aiohttp.ClientSession, server: SandboxServer, callback: CallbackServer
) -> None:
    all_arrived = asyncio.Event()

    async def answer(body: dict[str, Any]) -> web.Response:
        if len(callback.calls) == 3:
            all_arrived.set()
        try:
            # Only answered once all three are in flight at the same time.
            async with asyncio.timeout(20):
                await all_arrived.wait()
        except TimeoutError:
            return web.json_response({"error": "calls were not concurrent"})
        return web.json_response({"data": json.dumps(body["args"]["i"] * 10)})

    callback.answer = answer
    code = "set_result(call_tools_parallel([('t', {'i': 1}), ('t', {'i': 2}), ('t', {'i': 3})]))"
    status, body = await execute(http, server, request(code, callback_url=callback.url))

    assert status == 200, body
    assert json.loads(body["output"]) == [10, 20, 30]


async def test_node_tool_call_through_the_callback(
    http: aiohttp.ClientSession, server: SandboxServer, callback: CallbackServer
) -> None:
    code = "const r = await callTool('echo', {word: 'hi'});\nsetResult(r);"
    status, body = await execute(
        http, server, request(code, runtime="node", callback_url=callback.url)
    )

    assert status == 200, body
    assert json.loads(body["output"]) == {"word": "hi"}
    assert callback.calls[0]["args"] == {"word": "hi"}


async def test_a_callback_that_never_answers_ends_with_the_execution_timeout(
    http: aiohttp.ClientSession, server: SandboxServer, callback: CallbackServer
) -> None:
    callback.hold()  # never released
    status, body = await execute(
        http, server, request("call_tool('hang')", timeout=2, callback_url=callback.url)
    )

    assert status == 200
    assert body["exit_code"] == -1
    assert "timed out after 2 s" in body["error"]


# -- client disconnect -------------------------------------------------------------------


async def test_client_disconnect_cancels_the_execution(
    http: aiohttp.ClientSession, start_server: StartServer, callback: CallbackServer
) -> None:
    server = await start_server(SANDBOX_MAX_CONCURRENT="1")
    callback.hold()
    marker = new_marker()
    code = (
        "import subprocess\n"
        f"child = subprocess.Popen(['/bin/sh', '-c', 'sleep 300 # {marker}'])\n"
        "call_tool('hang')"
    )
    client = asyncio.create_task(
        execute(http, server, request(code, timeout=120, callback_url=callback.url))
    )
    await callback.wait_for_calls(1)
    assert pids_with(marker), "the code's child should be running"

    client.cancel()
    await asyncio.gather(client, return_exceptions=True)

    await eventually(lambda: not pids_with(marker), what="the code's processes are gone")
    # And its slot is free again.
    status, _ = await execute(http, server, request("pass"))
    assert status == 200
