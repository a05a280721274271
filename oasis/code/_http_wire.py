"""Conversions between the library's dataclasses and the HTTP API's JSON (as `_wire` for protobuf)."""

from __future__ import annotations

import base64
import binascii
import json
import math
import urllib.parse
from collections.abc import Mapping
from typing import Any

from .._types import CodeFile, CodeRequest, CodeResult, Status
from ..errors import SandboxError

DELETED_HEADER = "Oasis-Deleted"
"""On the 204 answer to DELETE /workspace/{id}: `true`, or `false` when there was none."""


def base_url(url: str) -> str:
    """`url` without a trailing slash; ValueError unless it is http(s) with a host."""
    try:
        parts = urllib.parse.urlsplit(url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        ok = False
    if not ok:
        example = f"http://{url}" if "://" not in url and url else "http://127.0.0.1:9000"
        raise ValueError(
            f"HTTPRunner needs the sandbox's base URL with http:// or https:// and a host, "
            f"such as {example!r}; got {url!r}"
        )
    return url.rstrip("/")


def execute_body(
    request: CodeRequest, *, execution_id: str, callback_url: str, timeout: float
) -> bytes:
    """The POST /execute body (the API takes the timeout in whole seconds)."""
    payload: dict[str, Any] = {
        "execution_id": execution_id,
        "callback_url": callback_url,
        "code": request.code,
        "runtime": request.runtime,
        "session_id": request.session_id,
        "timeout": max(1, math.ceil(timeout)),
        "files": [_file(f) for f in request.files],
    }
    if request.keep_state:  # an extension: sent only when set, so other bodies stay the API's
        payload["keep_state"] = True
    return json.dumps(payload, separators=(",", ":")).encode()


def _file(file: CodeFile) -> dict[str, str]:
    return {
        "name": file.name,
        "data": base64.b64encode(file.data).decode("ascii"),
        "mime": file.mime,
        "url": file.url,
    }


def code_result(raw: bytes, *, execution_id: str, max_file_size: int) -> CodeResult:
    """The CodeResult in a POST /execute answer; SandboxError when it is not one."""
    try:
        payload = json.loads(raw)
        if not isinstance(payload, dict):
            raise ValueError("not a JSON object")
        return _code_result(payload, execution_id=execution_id, max_file_size=max_file_size)
    except (ValueError, TypeError, binascii.Error) as exc:
        raise SandboxError(
            f"the sandbox sent an invalid /execute response: {exc}",
            code="INTERNAL",
            http_status=200,
        ) from None


def _code_result(payload: dict[str, Any], *, execution_id: str, max_file_size: int) -> CodeResult:
    output_text = payload.get("output") or ""
    output: Any = None
    if output_text:
        try:
            output = json.loads(output_text)
        except ValueError:
            output = output_text
    exit_code = int(payload.get("exit_code") or 0)
    error = str(payload.get("error") or "")
    files = []
    for item in payload.get("files") or []:
        if not isinstance(item, dict):
            raise ValueError("files must be JSON objects")
        data_text = str(item.get("data") or "")
        size = _decoded_size(data_text)
        data = b"" if size > max_file_size else base64.b64decode(data_text, validate=True)
        files.append(
            CodeFile(
                name=str(item.get("name", "")),
                mime=str(item.get("mime") or ""),
                url=str(item.get("url") or ""),
                data=data,
                size=size,
            )
        )
    return CodeResult(
        output=output,
        logs=str(payload.get("logs") or ""),
        exit_code=exit_code,
        error=error,
        files=files,
        status=_status(exit_code, error),
        execution_id=execution_id,
        state_kept=payload.get("state_kept") is True,
        fresh_state=payload.get("fresh_state") is True,
        fresh_state_reason=str(payload.get("fresh_state_reason") or ""),
    )


def _decoded_size(text: str) -> int:
    """Bytes a padded base64 string decodes to, without decoding it."""
    return len(text) // 4 * 3 - text[-2:].count("=") if text else 0


def _status(exit_code: int, error: str) -> Status:
    """The API carries no status field; it follows from the exit code and the error."""
    if exit_code == 0 and not error:
        return Status.OK
    if exit_code == -1 and "timed out after" in error:
        return Status.TIMEOUT
    return Status.ERROR


def had_state(raw: bytes) -> bool:
    """The answer to POST /workspace/{id}/reset: `{"had_state": bool}`; SandboxError otherwise."""
    try:
        answer = json.loads(raw)
    except ValueError:
        answer = None
    value = answer.get("had_state") if isinstance(answer, dict) else None
    if not isinstance(value, bool):
        raise SandboxError(
            f"the sandbox sent an invalid reset answer: {raw[:200]!r}",
            code="INTERNAL",
            http_status=200,
        )
    return value


def deleted(headers: Mapping[str, str]) -> bool:
    """Whether DELETE /workspace removed a workspace: its 204 answer's DELETED_HEADER.

    A server that predates the header does not tell; that counts as removed.
    """
    return headers.get(DELETED_HEADER, "true").strip().lower() != "false"
