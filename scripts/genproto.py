"""Regenerate the checked-in Python code for the wire contract.

Usage: python scripts/genproto.py [OUT_DIR]   (default: the repository root)

Messages, gRPC stubs and mypy stubs all come from proto/; the drift test runs
this into a temporary folder and compares the result with what is checked in.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
PROTO_FILES = ["oasis/sandbox/v1/sandbox.proto"]


def generate(out_dir: Path) -> None:
    include = Path(protoc.__file__).parent / "_proto"
    # The mypy plugins are console scripts installed next to this interpreter.
    scripts = str(Path(sys.executable).parent)
    os.environ["PATH"] = scripts + os.pathsep + os.environ.get("PATH", "")
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *PROTO_FILES,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT)
