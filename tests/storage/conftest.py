"""Fixtures for tests that need object storage: one S3 server per test session."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.s3_server import S3Endpoint, s3_server


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Endpoint]:
    """A real S3-protocol server in its own process, stopped when the session ends."""
    with s3_server() as endpoint:
        yield endpoint


@pytest.fixture
def bucket(s3: S3Endpoint) -> str:
    """A fresh bucket per test: the server is shared, so state must not be."""
    name = f"icefloe-{uuid.uuid4().hex[:16]}"
    s3.create_bucket(name)
    return name
