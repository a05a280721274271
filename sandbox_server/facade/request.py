"""POST /execute's body, parsed and bounded before anything is built from it.

Only the JSON shape and base64 are checked here: code, runtime, session id,
file names and keep_state's need of a session are validated by the core, as
for gRPC.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from oasis.code._wire import MiB

from ..config import Config
from ..errors import invalid
from ..model import ExecutionSpec, InputFile

MAX_BODY = 32 * MiB
"""Largest accepted POST /execute body (the original service's limit)."""
OFF_LOOP = 1 * MiB
"""JSON larger than this (a body, a callback's answer) is decoded in a thread, off the loop."""
MAX_JSON_DEPTH = 64
"""Deeper JSON is refused: nobody needs it, and decoding it costs a recursion per level."""
_JSON_VALUES_BASE = 1024
_JSON_VALUES_PER_FILE = 16
"""A request body may hold this many JSON values plus this many per allowed input file:
a request is a few fields and its files, so more is an attack on the parser's memory."""

_FIELDS = (
    "execution_id", "callback_url", "code", "runtime", "session_id", "timeout", "files",
    # Extensions of ours: the original API has none of them, so its clients never send them.
    "keep_state",
)  # fmt: skip
_FILE_FIELDS = ("name", "data", "mime", "url")
_JSON_TYPE: dict[type, str] = {str: "string", list: "array", dict: "object", bool: "boolean"}


@dataclass(frozen=True)
class ExecuteRequest:
    spec: ExecutionSpec
    execution_id: str
    """The client's id, only echoed in tool callbacks: the core names the execution."""
    callback_url: str


def parse_execute(body: bytes, *, max_files: int = Config.max_input_files) -> ExecuteRequest:
    """The POST /execute body as an ExecutionSpec; RequestError (400) when malformed.

    Sizes are checked before anything is built from them: a 32 MiB body of
    empty objects would otherwise cost gigabytes before the core could refuse it.
    """
    max_values = _JSON_VALUES_BASE + _JSON_VALUES_PER_FILE * max_files
    try:
        value = load_json(body, max_values=max_values)
    except TooManyValues:
        raise invalid(
            f"the body holds more than {max_values} JSON values; a request is a few fields "
            f"and at most {max_files} input files (SANDBOX_MAX_INPUT_FILES)"
        ) from None
    except ValueError as exc:
        raise invalid(f"invalid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise invalid("invalid JSON: the body must be a JSON object")
    _known_fields(value, _FIELDS)
    code = _field(value, "code", str, "")
    if not code.strip():
        raise invalid("code is empty")
    callback_url = _field(value, "callback_url", str, "")
    if callback_url and not callback_url.startswith(("http://", "https://")):
        raise invalid(f"callback_url {callback_url[:200]!r} is not an http:// or https:// URL")
    files: list[Any] = _field(value, "files", list, [])
    if len(files) > max_files:
        raise invalid(
            f"{len(files)} input files; at most {max_files} are accepted (SANDBOX_MAX_INPUT_FILES)"
        )
    return ExecuteRequest(
        spec=ExecutionSpec(
            code=code,
            runtime=_field(value, "runtime", str, "") or "python",
            session_id=_field(value, "session_id", str, ""),
            timeout=_timeout(value.get("timeout")),
            files=tuple(_input_file(i, f) for i, f in enumerate(files)),
            keep_state=_field(value, "keep_state", bool, False),
        ),
        execution_id=_field(value, "execution_id", str, ""),
        callback_url=callback_url,
    )


def _field(obj: dict[str, Any], name: str, kind: type, default: Any, *, where: str = "") -> Any:
    value = obj.get(name)
    if value is None:
        return default
    if not isinstance(value, kind):
        raise invalid(f"{where}{name} must be a JSON {_JSON_TYPE[kind]}, got {_shown(value)}")
    return value


def _known_fields(obj: dict[str, Any], known: tuple[str, ...], *, where: str = "") -> None:
    """Refuse the first field not in `known`, suggesting the closest known name."""
    for name in obj:
        if name not in known:
            # difflib is quadratic-ish: a megabyte-long name gets no suggestion
            close = difflib.get_close_matches(name, known, n=1) if len(name) <= 64 else []
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise invalid(
                f"{where}unknown field {_shown(name)}{hint}; the fields are {', '.join(known)}"
            )


def _shown(value: Any) -> str:
    """A received value as its repr, so `'30'` and `30` differ; cut short if long."""
    text = repr(value[:61] if isinstance(value, str) else value)
    return text if len(text) <= 60 else text[:57] + "..."


def _timeout(value: Any) -> float | None:
    """Whole seconds; absent or 0 means the server's default."""
    if value is None:
        return None
    try:
        whole = (
            not isinstance(value, bool)
            and isinstance(value, int | float)
            and math.isfinite(value)
            and value == int(value)
        )
    except OverflowError:  # an integer too large for a float
        whole = False
    if not whole:
        raise invalid(f"timeout must be a whole number of seconds, got {_shown(value)}")
    if value < 0:
        raise invalid(f"timeout must not be negative, got {_shown(value)}")
    return float(value) if value else None


def _input_file(index: int, value: Any) -> InputFile:
    where = f"files[{index}]."
    if not isinstance(value, dict):
        raise invalid(f"files[{index}] must be a JSON object with name and data")
    _known_fields(value, _FILE_FIELDS, where=f"files[{index}]: ")
    name: str = _field(value, "name", str, "", where=where)
    data: str = _field(value, "data", str, "", where=where)
    if _field(value, "url", str, "", where=where) and not data:
        raise invalid(
            f"files[{index}] ({name!r}): fetching input files from a url is not supported; "
            "send the content base64-encoded in data"
        )
    try:
        content = base64.b64decode(data.replace("\n", "").replace("\r", ""), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise invalid(f"files[{index}] ({name!r}): data is not valid base64: {exc}") from None
    return InputFile(name=name, data=content)


# -- bounded JSON ---------------------------------------------------------------


class TooManyValues(ValueError):
    """A JSON text holds more values than the caller accepts."""


def load_json(body: bytes, *, max_values: int | None = None) -> Any:
    """json.loads, refusing nesting deeper than MAX_JSON_DEPTH or more than `max_values`
    values before building anything; ValueError says what was wrong."""
    text = body.decode(json.detect_encoding(body), "surrogatepass")
    check_json_shape(text, max_values=max_values)
    return json.loads(text)


def _structure(tokens: str) -> re.Pattern[str]:
    """Matches up to and including the next of `tokens` outside a JSON string.

    Possessive quantifiers: a failed match never backtracks, so a scan is linear.
    """
    chars = re.escape(tokens)
    string = r'"[^"\\]*+(?:\\.[^"\\]*+)*+"'
    return re.compile(rf'(?:[^"{chars}]++|{string})*+([{chars}])', re.DOTALL)


_BRACKETS = _structure("[]{}")
_BRACKETS_AND_COMMAS = _structure("[]{},")


def check_json_shape(text: str, *, max_values: int | None = None) -> None:
    """Scan raw JSON for its depth and (with `max_values`) its number of values.

    The regex skips strings and runs of scalars in C, so Python sees one step
    per bracket (and comma): cheap for a real request, and a hostile one is
    stopped at the limit instead of after json.loads built millions of objects.
    Malformed JSON stops the scan early; json.loads then refuses it.
    """
    pattern = _BRACKETS if max_values is None else _BRACKETS_AND_COMMAS
    depth = values = pos = 0
    while match := pattern.match(text, pos):
        pos = match.end()
        token = match[1]
        if token == ",":
            values += 1
        elif token in "[{":
            depth += 1
            values += 1
            if depth > MAX_JSON_DEPTH:
                raise ValueError(f"nested more than {MAX_JSON_DEPTH} levels deep")
        else:
            depth -= 1
        if max_values is not None and values > max_values:
            raise TooManyValues(f"more than {max_values} values")
