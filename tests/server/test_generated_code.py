"""The checked-in generated code matches the contract, and the contract keeps its fixed numbers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from oasis.sandbox.v1 import sandbox_pb2 as pb

REPO = Path(__file__).resolve().parents[2]
GENERATED = REPO / "oasis" / "sandbox" / "v1"


def test_generated_code_matches_the_proto(tmp_path: Path) -> None:
    """`make proto` (scripts/genproto.py) into a temp dir gives byte-identical files to the checked-in ones."""
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "genproto.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    fresh_dir = tmp_path / "oasis" / "sandbox" / "v1"
    fresh = {p.name: p.read_bytes() for p in fresh_dir.iterdir() if p.is_file()}
    assert set(fresh) == {
        "sandbox_pb2.py",
        "sandbox_pb2.pyi",
        "sandbox_pb2_grpc.py",
        "sandbox_pb2_grpc.pyi",
    }
    checked_in = {
        name: (GENERATED / name).read_bytes() for name in fresh if (GENERATED / name).exists()
    }
    drifted = sorted(name for name in fresh if checked_in.get(name) != fresh[name])
    assert not drifted, f"out of date, run `make proto`: {drifted}"


# Field names and numbers the issue fixes ("add fields, never renumber").
CONTRACT: dict[str, dict[str, int]] = {
    "ExecuteRequest": {"start": 1, "tool_result": 2, "file_chunk": 3, "cancel": 4},
    "StartExecution": {
        "execution_id": 1,
        "code": 2,
        "runtime": 3,
        "session_id": 4,
        "timeout": 5,
        "files": 6,
        "env": 7,
    },
    "ToolResult": {"call_id": 1, "data": 2, "error": 3},
    "ExecuteResponse": {"started": 1, "log": 2, "tool_call": 3, "file_chunk": 4, "result": 5},
    "ExecutionStarted": {"execution_id": 1, "session_id": 2, "runtime": 3},
    "LogChunk": {"stream": 1, "data": 2},
    "ToolCall": {"call_id": 1, "name": 2, "args_json": 3},
    "ExecutionResult": {
        "output": 1,
        "logs": 2,
        "exit_code": 3,
        "error": 4,
        "files": 5,
        "status": 6,
        "duration": 7,
        "logs_truncated": 8,
    },
    "File": {"name": 1, "mime": 2, "data": 3, "size": 4, "url": 5},
    "FileChunk": {"name": 1, "data": 2, "eof": 3},
    "DeleteWorkspaceRequest": {"session_id": 1},
}


def test_contract_field_numbers() -> None:
    """Every field the issue names keeps its number (more fields may be added)."""
    for message, fields in CONTRACT.items():
        descriptor = pb.DESCRIPTOR.message_types_by_name[message]
        actual = {
            name: descriptor.fields_by_name[name].number
            for name in fields
            if name in descriptor.fields_by_name
        }
        assert actual == fields, message
    start = pb.StartExecution.DESCRIPTOR
    timeout_type, env_type = (start.fields_by_name[n].message_type for n in ("timeout", "env"))
    assert timeout_type is not None and timeout_type.full_name == "google.protobuf.Duration"
    assert start.fields_by_name["files"].is_repeated
    assert env_type is not None and env_type.GetOptions().map_entry
    request_kinds = pb.ExecuteRequest.DESCRIPTOR.oneofs_by_name["kind"]
    assert {f.name for f in request_kinds.fields} == set(CONTRACT["ExecuteRequest"])
    response_kinds = pb.ExecuteResponse.DESCRIPTOR.oneofs_by_name["kind"]
    assert {f.name for f in response_kinds.fields} == set(CONTRACT["ExecuteResponse"])


def test_contract_enums() -> None:
    """Status and Stream values are the fixed ones."""
    status = pb.ExecutionResult.Status
    assert dict(status.items()) == {
        "STATUS_UNSPECIFIED": 0,
        "OK": 1,
        "ERROR": 2,
        "TIMEOUT": 3,
        "CANCELLED": 4,
        "KILLED": 5,
    }
    stream = pb.LogChunk.Stream
    assert dict(stream.items()) == {"STREAM_UNSPECIFIED": 0, "STDOUT": 1, "STDERR": 2}
    assert pb.DESCRIPTOR.package == "oasis.sandbox.v1"
    assert set(pb.DESCRIPTOR.services_by_name) == {"Sandbox"}
