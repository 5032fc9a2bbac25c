"""Credentials for object storage that come from a Prefect Secret block.

A Target with ``credentials_secret_block`` gets a storage whose credentials come from a
callback: icechunk pickles the callable (by reference: module, name, arguments) into the
storage config, and so into every pickled Repository, Session and ForkSession. Only the
block's name, the scheme and the Prefect API URL travel; each process that uses the
storage calls the callback, which reads the block through the Prefect API (cached per
process for SECRET_REFRESH_SECONDS). Pickled forks persisted as task results, or shipped to
Dask workers, therefore never hold the secret (tests/storage/test_s3_flows.py greps them).
See docs/credentials.md for the other ways credentials reach a run.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import icechunk

from tasks.errors import TargetError, first_line

if TYPE_CHECKING:
    from flows.targets import Target

__all__ = [
    "SECRET_REFRESH_SECONDS",
    "load_credentials",
    "load_secret_credentials",
    "read_secret_block",
    "secret_block_auth",
]

SECRET_REFRESH_SECONDS = 600

_secrets: dict[tuple[str, str | None], tuple[Mapping[str, str], float]] = {}
_secrets_lock = threading.Lock()


def _prefect_api_url() -> str | None:
    """This process's Prefect API URL, if it has one and it carries nothing secret."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        return None
    parts = urlsplit(str(url))
    if parts.username or parts.password or parts.query:  # they could hold a password
        return None
    return str(url)


def _remember_secret(block: str, api_url: str | None, credentials: Mapping[str, str]) -> None:
    with _secrets_lock:
        _secrets[(block, api_url)] = (dict(credentials), time.monotonic())


def read_secret_block(block: str) -> dict[str, str]:
    """The JSON object of credentials held by the Prefect Secret block ``block``.

    Raises TargetError naming the block (never its contents) when it is missing or holds
    something else.
    """
    from prefect.blocks.system import Secret

    try:
        # _sync: icechunk may call this from a thread with a running event loop, where
        # Prefect would otherwise hand back a coroutine.
        value = Secret.load(block, _sync=True).get()
    except ValueError as err:  # Prefect: "Unable to find block document named ..."
        raise TargetError(
            f"cannot load the Secret block {block!r} named by Target.credentials_secret_block "
            f"({first_line(err)}): create it (prefect block create secret) or fix the name"
        ) from err
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            value = None
    if not isinstance(value, Mapping):
        raise TargetError(
            f"the Secret block {block!r} does not hold a JSON object of credentials: store e.g. "
            '{"access_key_id": ..., "secret_access_key": ...}'
        )
    return {str(k): str(v) for k, v in value.items()}


def load_secret_credentials(
    block: str, scheme: str, api_url: str | None = None
) -> (
    icechunk.S3StaticCredentials
    | icechunk.GcsBearerCredential
    | icechunk.AzureRefreshableCredential.AccessKey
    | icechunk.AzureRefreshableCredential.SasToken
    | icechunk.AzureRefreshableCredential.BearerToken
):
    """icechunk's credentials callback for a Target with ``credentials_secret_block``.

    Module-level so that pickle stores it by reference. The block is read through this
    process's Prefect API if it has one configured, else through ``api_url``, the API of
    the process that built the storage (a Dask worker rarely has its own); Prefect Cloud
    also needs PREFECT_API_KEY in the worker's environment.
    """
    own = _prefect_api_url()
    with _secrets_lock:
        cached = _secrets.get((block, own)) or _secrets.get((block, api_url))
    now = time.monotonic()
    if cached is not None and now - cached[1] < SECRET_REFRESH_SECONDS:
        credentials, fetched = cached
    else:
        url = own or api_url
        if own is None and api_url is not None:
            from prefect.settings import PREFECT_API_URL, temporary_settings

            with temporary_settings({PREFECT_API_URL: api_url}):
                credentials = read_secret_block(block)
        else:
            credentials = read_secret_block(block)
        fetched = now
        _remember_secret(block, url, credentials)
    expires = datetime.now(UTC) + timedelta(seconds=SECRET_REFRESH_SECONDS - (now - fetched))
    return _refreshable_credential(block, scheme, credentials, expires)


def _refreshable_credential(
    block: str, scheme: str, credentials: Mapping[str, str], expires: datetime
) -> Any:
    """The block's contents as the credential type icechunk's callback for ``scheme`` returns."""
    allowed = _BLOCK_CREDENTIAL_KEYS[scheme]
    unknown = sorted(set(credentials) - allowed)
    if unknown:
        raise TargetError(
            f"the Secret block {block!r} holds keys {unknown} that a {scheme} repository does "
            f"not take from a Secret block: use only {sorted(allowed)}"
            + (_GCS_BLOCK_HINT if scheme == "gs" else "")
        )
    if scheme == "s3":
        missing = sorted({"access_key_id", "secret_access_key"} - set(credentials))
        if missing:
            raise TargetError(f"the Secret block {block!r} lacks {missing} for an s3 repository")
        return icechunk.S3StaticCredentials(
            access_key_id=credentials["access_key_id"],
            secret_access_key=credentials["secret_access_key"],
            session_token=credentials.get("session_token") or None,
            expires_after=expires,
        )
    if scheme == "gs":
        if "bearer_token" not in credentials:
            raise TargetError(f"the Secret block {block!r} lacks 'bearer_token'{_GCS_BLOCK_HINT}")
        return icechunk.GcsBearerCredential(credentials["bearer_token"], expires_after=expires)
    if len(credentials) != 1:
        raise TargetError(
            f"the Secret block {block!r} must hold exactly one of {sorted(allowed)} for an az "
            "repository"
        )
    kind, value = next(iter(credentials.items()))
    azure = icechunk.AzureRefreshableCredential
    make = {"access_key": azure.AccessKey, "sas_token": azure.SasToken}.get(kind, azure.BearerToken)
    return make(value, expires_after=expires)


_BLOCK_CREDENTIAL_KEYS: dict[str, frozenset[str]] = {
    "s3": frozenset({"access_key_id", "secret_access_key", "session_token"}),
    # icechunk refreshes only bearer tokens for GCS; a service-account key cannot be handed
    # to a callback, and as a static credential it would be pickled into every fork.
    "gs": frozenset({"bearer_token"}),
    "az": frozenset({"access_key", "sas_token", "bearer_token"}),
}
_GCS_BLOCK_HINT = (
    "; a service-account key cannot come from a Secret block (icechunk would pickle it into "
    "every fork): give the flow and its workers GOOGLE_APPLICATION_CREDENTIALS instead"
)


def secret_block_auth(
    block: str, scheme: str, credentials: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """icechunk's storage keyword arguments for credentials read from ``block``.

    ``credentials`` are the block's contents when the caller read them already: they are
    checked now, in the flow, rather than by the callback on a worker, and cached.
    """
    api_url = _prefect_api_url()
    if credentials:
        _refreshable_credential(block, scheme, credentials, datetime.now(UTC))
        _remember_secret(block, api_url, credentials)
    return {"get_credentials": functools.partial(load_secret_credentials, block, scheme, api_url)}


def load_credentials(target: Target) -> dict[str, str] | None:
    """The credentials in ``target.credentials_secret_block``, or None (from the environment)."""
    if not target.credentials_secret_block:
        return None
    return read_secret_block(target.credentials_secret_block)
