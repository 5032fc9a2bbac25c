"""What a pickled icechunk Repository / ForkSession carries of its S3 credentials (icechunk 2.3).

This decides how icefloe may persist forks: a pickle made with static credentials holds
the secret in clear; one made with ``from_env=True`` (or a credentials callback without
``scatter_initial_credentials``) holds none, and the process that unpickles it finds its
own credentials.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import icechunk
import numpy as np
import pytest
import zarr

from tests.s3_server import S3Endpoint

PREFIX = "repo"
ENV_KEY_ID = "AKIAICEFLOEENVKEY000"
ENV_SECRET = "icefloe-env-secret-fedcba9876543210"
CALLBACK_SECRET = "icefloe-callback-secret-00112233"


def callback_credentials() -> icechunk.S3StaticCredentials:
    # Module level so that pickle stores it by reference, as it must in real use.
    return icechunk.S3StaticCredentials(
        access_key_id="AKIAICEFLOECALLBACK0",
        secret_access_key=CALLBACK_SECRET,
        expires_after=datetime.now(UTC) + timedelta(hours=1),
    )


@pytest.fixture
def repo(s3: S3Endpoint, bucket: str) -> icechunk.Repository:
    repo = icechunk.Repository.create(s3.storage(bucket, PREFIX))
    session = repo.writable_session("main")
    zarr.create_array(session.store, name="a", shape=(4,), chunks=(2,), dtype="f8")
    session.commit("array")
    return repo


@pytest.fixture
def env_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ENV_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ENV_SECRET)


def _pickles(repo: icechunk.Repository) -> dict[str, bytes]:
    return {
        "repository": pickle.dumps(repo),
        "fork": pickle.dumps(repo.writable_session("main").fork()),
    }


def test_static_credentials_are_pickled_in_clear(
    s3: S3Endpoint, bucket: str, repo: icechunk.Repository
) -> None:
    for name, blob in _pickles(icechunk.Repository.open(s3.storage(bucket, PREFIX))).items():
        assert s3.secret_access_key.encode() in blob, name
        assert s3.access_key_id.encode() in blob, name


@pytest.mark.usefixtures("env_credentials", "repo")
def test_from_env_credentials_are_not_pickled(s3: S3Endpoint, bucket: str) -> None:
    opened = icechunk.Repository.open(s3.storage(bucket, PREFIX, from_env=True))
    for name, blob in _pickles(opened).items():
        assert ENV_SECRET.encode() not in blob, name
        assert ENV_KEY_ID.encode() not in blob, name


@pytest.mark.usefixtures("repo")
@pytest.mark.parametrize(("scatter", "pickled"), [(False, False), (True, True)])
def test_callback_credentials_are_pickled_only_when_scattered(
    s3: S3Endpoint, bucket: str, scatter: bool, pickled: bool
) -> None:
    storage = s3.storage(
        bucket,
        PREFIX,
        get_credentials=callback_credentials,
        scatter_initial_credentials=scatter,
    )
    for name, blob in _pickles(icechunk.Repository.open(storage)).items():
        assert (CALLBACK_SECRET.encode() in blob) is pickled, name


@pytest.mark.usefixtures("env_credentials")
def test_unpickled_from_env_fork_writes_and_merges(
    s3: S3Endpoint, bucket: str, repo: icechunk.Repository
) -> None:
    opened = icechunk.Repository.open(s3.storage(bucket, PREFIX, from_env=True))
    fork = pickle.loads(pickle.dumps(opened.writable_session("main").fork()))
    zarr.open_array(fork.store, path="a", mode="r+")[:] = 7.0
    session = opened.writable_session("main")
    session.merge(fork)
    session.commit("merged fork")
    store = repo.readonly_session(branch="main").store
    np.testing.assert_array_equal(zarr.open_array(store, path="a")[:], np.full(4, 7.0))


@pytest.mark.usefixtures("env_credentials")
def test_unpickled_from_env_session_needs_credentials_where_it_is_loaded(
    s3: S3Endpoint, bucket: str, repo: icechunk.Repository, tmp_path: Path
) -> None:
    """Nothing in the pickle authenticates: a process without credentials cannot read."""
    opened = icechunk.Repository.open(s3.storage(bucket, PREFIX, from_env=True))
    blob = tmp_path / "session.pkl"
    blob.write_bytes(pickle.dumps(opened.readonly_session(branch="main")))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    # No credentials anywhere the default chain looks, and no wait on the EC2 metadata
    # service, which is where the chain ends.
    env |= {
        "HOME": str(tmp_path),
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    code = (
        "import pickle, sys, zarr\n"
        "session = pickle.loads(open(sys.argv[1], 'rb').read())\n"
        "print(zarr.open_array(session.store, path='a', mode='r')[:])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(blob)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0, result.stdout
    assert "no providers in chain provided credentials" in result.stderr, result.stderr[-2000:]
