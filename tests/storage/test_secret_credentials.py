"""Secret-block credentials reach icechunk through a callback, never as static values.

A Target with ``credentials_secret_block`` builds its storage with
``get_credentials=functools.partial(load_secret_credentials, block, scheme, api_url)``:
pickled repositories and forks hold the block's name, not the secret, and each process
that uses them reads the block itself (cached). The flows' end-to-end proof is in
test_s3_flows.py; these check the pieces.
"""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta

import icechunk
import numpy as np
import pytest
import zarr

from flows import credentials
from flows.credentials import load_secret_credentials
from flows.targets import Target, TargetError
from tests.s3_server import S3Endpoint

SECRET = "SECRET-s3-abc123-unit"
BLOCK = "icefloe-unit-block"


@pytest.fixture(autouse=True)
def no_cached_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(credentials, "_secrets", {})


@pytest.fixture
def block_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Stands in for the Prefect API: records each read of a block."""
    reads: list[str] = []

    def read(block: str) -> dict[str, str]:
        reads.append(block)
        return {"access_key_id": "AKIAICEFLOEUNIT00000", "secret_access_key": SECRET}

    monkeypatch.setattr(credentials, "read_secret_block", read)
    return reads


def test_a_secret_block_repository_pickles_the_block_name_not_the_secret(
    s3: S3Endpoint, bucket: str, block_reads: list[str]
) -> None:
    target = Target(
        repo=f"s3://{bucket}/repo",
        storage_options={
            "endpoint_url": s3.endpoint_url,
            "region": s3.region,
            "allow_http": True,
            "force_path_style": True,
        },
        credentials_secret_block=BLOCK,
    )
    repo = target.open_repository(create=True)  # the callback reads the block once
    session = repo.writable_session("main")
    zarr.create_array(session.store, name="a", shape=(4,), chunks=(2,), dtype="f8")[:] = 1.0
    fork = session.fork()
    blobs = {"repository": pickle.dumps(repo), "fork": pickle.dumps(fork)}
    session.commit("array")

    for name, blob in blobs.items():
        assert SECRET.encode() not in blob, name
        assert BLOCK.encode() in blob, name
        assert b"load_secret_credentials" in blob, name
    assert block_reads == [BLOCK]
    back = icechunk.Repository.open(s3.storage(bucket, "repo")).readonly_session(branch="main")
    np.testing.assert_array_equal(zarr.open_array(back.store, path="a")[:], np.ones(4))


def test_the_callback_caches_the_block_and_reads_it_again_after_the_refresh_time(
    block_reads: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = load_secret_credentials(BLOCK, "s3")
    again = load_secret_credentials(BLOCK, "s3")

    assert block_reads == [BLOCK]
    assert isinstance(first, icechunk.S3StaticCredentials)
    assert first.secret_access_key == again.secret_access_key == SECRET
    assert first.expires_after is not None
    left = first.expires_after - datetime.now(UTC)
    assert timedelta(seconds=590) < left <= timedelta(seconds=credentials.SECRET_REFRESH_SECONDS)

    monkeypatch.setattr(credentials, "SECRET_REFRESH_SECONDS", 0)
    load_secret_credentials(BLOCK, "s3")
    assert block_reads == [BLOCK, BLOCK]


def test_credentials_handed_to_storage_prime_the_cache() -> None:
    """The flows load the block once and pass it on: the callback then needs no API."""
    target = Target(repo="s3://bucket/p", credentials_secret_block=BLOCK)
    target.storage(credentials={"access_key_id": "AKIA0", "secret_access_key": SECRET})
    assert load_secret_credentials(BLOCK, "s3", None).secret_access_key == SECRET


@pytest.mark.parametrize(
    ("repo", "options", "secret", "constructor", "expected"),
    [
        ("gs://b/p", {}, {"bearer_token": SECRET}, "gcs_storage", icechunk.GcsBearerCredential),
        (
            "az://c/p",
            {"account": "acct"},
            {"sas_token": SECRET},
            "azure_credentials",
            icechunk.AzureRefreshableCredential.SasToken,
        ),
    ],
)
def test_gcs_and_azure_blocks_use_the_callback_too(
    repo: str,
    options: dict[str, str],
    secret: dict[str, str],
    constructor: str,
    expected: type,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[dict[str, object]] = []
    original = getattr(icechunk, constructor)
    monkeypatch.setattr(icechunk, constructor, lambda **kw: calls.append(kw) or original(**kw))
    target = Target(repo=repo, storage_options=options, credentials_secret_block=BLOCK)

    assert isinstance(target.storage(credentials=secret), icechunk.Storage)

    (call,) = calls
    assert SECRET not in repr(call)  # only the callback is handed over
    callback = call["get_credentials"]
    assert SECRET.encode() not in pickle.dumps(callback)
    assert isinstance(callback(), expected)  # from the cache the storage call primed


@pytest.mark.parametrize(
    ("repo", "options", "secret", "message"),
    [
        ("gs://b/p", {}, {"service_account_key": SECRET}, "GOOGLE_APPLICATION_CREDENTIALS"),
        ("az://c/p", {"account": "a"}, {"access_key": SECRET, "sas_token": SECRET}, "one of"),
        ("s3://b/p", {}, {"access_key_id": SECRET}, "secret_access_key"),
    ],
)
def test_block_contents_a_target_cannot_use_are_refused_without_echoing_them(
    repo: str, options: dict[str, str], secret: dict[str, str], message: str
) -> None:
    target = Target(repo=repo, storage_options=options, credentials_secret_block=BLOCK)
    with pytest.raises(TargetError, match=message) as info:
        target.storage(credentials=secret)
    assert SECRET not in str(info.value)
    assert BLOCK in str(info.value)


def test_a_block_and_anonymous_access_exclude_each_other() -> None:
    target = Target(
        repo="s3://b/p", storage_options={"anonymous": True}, credentials_secret_block=BLOCK
    )
    with pytest.raises(ValueError, match="anonymous"):
        target.storage()
