"""The deployment files: compose.yaml is valid Compose, and the image build refers to real files."""

from __future__ import annotations

import json
import re

import jsonschema
import yaml

from .conftest import REPO

COMPOSE_SCHEMA = REPO / "tests" / "schemas" / "compose-spec.json"
"""Vendored (see tests/schemas/README.md), so this test never skips."""


def test_compose_file_follows_the_compose_specification() -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    jsonschema.Draft7Validator(schema).validate(compose)  # the schema says draft-07

    sandbox = compose["services"]["sandbox"]
    assert sandbox["build"]["dockerfile"] == "deploy/Dockerfile"
    # The namespaces isolation level needs these inside a container.
    assert "SYS_ADMIN" in sandbox["cap_add"]
    assert "seccomp=unconfined" in sandbox["security_opt"]


def test_dockerfile_copies_files_that_exist() -> None:
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    sources = []
    for line in dockerfile.splitlines():
        match = re.match(r"COPY\s+(?!--from)(.+)\s+\S+$", line.strip())
        if match:
            sources += match[1].split()
    assert sources, "the Dockerfile copies nothing"
    for source in sources:
        assert (REPO / source).exists(), f"the Dockerfile copies {source}, which does not exist"
    # The image points the server at the binaries it builds.
    for variable in ("SANDBOX_INIT_BIN", "SANDBOX_PYTHON_BIN", "SANDBOX_NODE_BIN"):
        assert variable in dockerfile
