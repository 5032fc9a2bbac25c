"""Where a flow writes: an Icechunk repository and a branch, as a JSON-serialisable model.

``Target`` is a flow parameter, so Prefect stores it with every deployment and flow run,
shows it in the UI and copies its description into commit metadata. That is why it refuses
credential-looking storage options: anything set here ends up persisted in several places.
Credentials come from the environment (the default) or from a Prefect Secret block named by
``credentials_secret_block``, which icechunk reads through a credentials callback in every
process that uses the storage (the flow, Dask workers, a resumed run), so that nothing
pickled or persisted ever holds the secret itself.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import icechunk
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# load_secret_credentials stays importable from here: forks pickled before it moved refer
# to it as flows.targets.load_secret_credentials.
from flows.credentials import load_secret_credentials, read_secret_block, secret_block_auth
from flows.forms import form_properties
from tasks.errors import (
    TargetError,
    TargetNotFoundError,
    TargetUnreachableError,
    first_line,
)
from tasks.manifests import DEFAULT_COMMIT_FETCHES, REFS_PER_MANIFEST

__all__ = [
    "SAFE_STORAGE_OPTION_KEYS",
    "SUPPORTED_SCHEMES",
    "ManifestOptions",
    "Target",
    "TargetError",
    "TargetNotFoundError",
    "TargetUnreachableError",
    "is_credential_key",
    "load_secret_credentials",
    "read_secret_block",
    "safe_url",
]

Scheme = Literal["file", "s3", "gs", "az"]
SUPPORTED_SCHEMES: tuple[Scheme, ...] = ("file", "s3", "gs", "az")

# Keys whose values may be shown in descriptions, logs and commit metadata. An allow-list
# rather than a deny-list: a key nobody thought about stays hidden.
SAFE_STORAGE_OPTION_KEYS = frozenset(
    {
        "endpoint_url",
        "region",
        "allow_http",
        "force_path_style",
        "anonymous",
        "account",
        "requester_pays",
    }
)

# Spellings people bring from fsspec/s3fs, boto and the AWS CLI, mapped to icechunk's names,
# so a copied configuration works instead of failing on a synonym.
_OPTION_ALIASES = {
    "path-style": "force_path_style",
    "path_style": "force_path_style",
    "endpoint": "endpoint_url",
    "region_name": "region",
    "anon": "anonymous",
    "account_name": "account",
}
_BOOL_OPTIONS = frozenset({"allow_http", "force_path_style", "anonymous", "requester_pays"})
_INT_OPTIONS = frozenset({"network_stream_timeout_seconds", "max_tries"})
# Options of the repository rather than of the storage: taken out before the storage is built.
_REPOSITORY_OPTIONS = frozenset({"max_tries"})
# s3_storage has no free-form config, so an unknown key is a typo and must fail loudly.
_S3_OPTIONS = frozenset(
    {
        "endpoint_url",
        "region",
        "allow_http",
        "force_path_style",
        "anonymous",
        "requester_pays",
        "network_stream_timeout_seconds",
        "max_tries",
    }
)
# How long credentials loaded from a Secret block are used before the block is read again
# (icechunk asks the callback again once they expire): a rotated secret is picked up
# within this time, and a process asks the Prefect API at most this often per block.
# Static credentials that ``storage(credentials=...)`` accepts, per scheme (the keyword
# arguments of the icechunk storage constructors).
_CREDENTIAL_KEYS: dict[str, frozenset[str]] = {
    "s3": frozenset({"access_key_id", "secret_access_key", "session_token"}),
    "gs": frozenset(
        {"service_account_file", "service_account_key", "application_credentials", "bearer_token"}
    ),
    "az": frozenset({"access_key", "sas_token", "bearer_token"}),
}
_CREDENTIAL_WORDS = ("secret", "password", "token", "credential", "service_account", "sas")
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})

StorageOptionValue = str | int | bool


def is_credential_key(key: str) -> bool:
    """Whether an option name looks like it carries a secret (key, token, password ...)."""
    k = key.lower().replace("-", "_")
    return (
        any(word in k for word in _CREDENTIAL_WORDS)
        or k == "key"
        or k.endswith(("_key", "_key_id"))
    )


def safe_url(url: str) -> str:
    """``url`` without user info, query or fragment, which is where URLs carry secrets."""
    if "://" not in url:
        return url
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def credential_option_error(field: str, keys: list[str]) -> str:
    """The message for credentials found in a model field that Prefect would persist."""
    listed = ", ".join(repr(k) for k in keys)
    return (
        f"{field} holds {listed}, which looks like a credential: remove it and provide "
        "credentials through the environment (e.g. AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
        "GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_ACCOUNT_KEY) or a Prefect Secret block "
        "(Target.credentials_secret_block); parameters are stored by Prefect and copied into "
        "commit metadata, so secrets must not be one"
    )


@dataclass(frozen=True)
class _Location:
    scheme: Scheme
    bucket: str  # bucket or container; empty for local paths
    prefix: str  # key prefix inside the bucket, or the absolute local path

    @property
    def url(self) -> str:
        if self.scheme == "file":
            return self.prefix
        return f"{self.scheme}://{self.bucket}/{self.prefix}".rstrip("/")


def _parse_repo(repo: str) -> _Location:
    repo = repo.strip()
    if not repo:
        raise ValueError(
            "Target.repo is empty: set it to a local path or an s3://, gs://, az:// or "
            "file:// URL of the Icechunk repository"
        )
    if "://" not in repo:
        # Resolved against the current directory now, so a run that changes directory
        # later still writes where the user pointed.
        return _Location("file", "", os.path.abspath(os.path.expanduser(repo)))
    scheme, _, rest = repo.partition("://")
    scheme = scheme.lower()
    if scheme == "file":
        # file:///abs/path and file://localhost/abs/path are the standard forms;
        # file://relative/path is accepted as a relative path because people write it.
        if rest.startswith("localhost/"):
            rest = rest[len("localhost") :]
        if not rest:
            raise ValueError(
                f"Target.repo {repo!r} names no path: use file:///absolute/path/to/repo"
            )
        return _Location("file", "", os.path.abspath(os.path.expanduser(rest)))
    if scheme not in SUPPORTED_SCHEMES:
        raise ValueError(
            f"Target.repo {safe_url(repo)!r} uses the unsupported scheme {scheme!r}: use a "
            "local path or a file://, s3://, gs:// or az:// URL"
        )
    parts = urlsplit(repo)
    if "@" in parts.netloc:
        raise ValueError(
            f"Target.repo {safe_url(repo)!r} carries user information before '@': remove it "
            "and provide credentials through the environment or credentials_secret_block"
        )
    if parts.query or parts.fragment:
        raise ValueError(
            f"Target.repo {safe_url(repo)!r} has a query string or fragment: remove it and "
            "set options in Target.storage_options"
        )
    bucket = parts.netloc
    if not bucket:
        what = "container" if scheme == "az" else "bucket"
        raise ValueError(f"Target.repo {repo!r} names no {what}: use {scheme}://<{what}>/<prefix>")
    return _Location(scheme, bucket, parts.path.strip("/"))


def _as_bool(key: str, value: StorageOptionValue) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"Target.storage_options[{key!r}] must be true or false, not {value!r}")


def _as_config_value(value: StorageOptionValue) -> str:
    # object_store's free-form configuration only takes strings, and spells booleans in
    # lower case.
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _checked_credentials(location: _Location, credentials: Mapping[str, str]) -> Mapping[str, str]:
    allowed = _CREDENTIAL_KEYS[location.scheme]
    unknown = sorted(set(credentials) - allowed)
    if unknown:
        raise ValueError(
            f"the credentials for {location.url!r} hold unknown keys {unknown}: a "
            f"{location.scheme} repository takes {sorted(allowed)}; fix the Secret "
            "block named by Target.credentials_secret_block"
        )
    return credentials


class ManifestOptions(BaseModel):
    """How the target's chunk references are laid out in manifests (docs/scale.md)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=form_properties)

    split_size: int | None = Field(
        default=None,
        ge=0,
        description=(
            "Chunks along the append dimension per manifest, for groups this target appends "
            "to. Unset: the first append into a group records a size in the repository's "
            f"configuration, chosen so that a manifest holds about {REFS_PER_MANIFEST:,} chunk "
            "references, and every later commit keeps it. A number replaces the recorded "
            "one; 0 keeps one manifest per array (icechunk's default)."
        ),
    )
    commit_fetches: int = Field(
        default=DEFAULT_COMMIT_FETCHES,
        ge=1,
        description="How many manifests a commit fetches and rewrites at the same time.",
    )


class Target(BaseModel):
    """An Icechunk repository and the branch a flow writes to.

    ``repo`` is a local path, or a ``file://``, ``s3://bucket/prefix``, ``gs://bucket/prefix``
    or ``az://container/prefix`` URL (Azure also needs ``storage_options={"account": ...}``).
    """

    # hide_input_in_errors: a rejected credential must not be echoed into the error, which
    # Prefect logs and stores with the failed run.
    model_config = ConfigDict(
        extra="forbid",
        hide_input_in_errors=True,
        title="Target",
        json_schema_extra=form_properties,
    )

    repo: str = Field(
        description=(
            "The Icechunk repository: a local path, or a file://, s3://bucket/prefix, "
            "gs://bucket/prefix or az://container/prefix URL."
        ),
        examples=["./icefloe-demo", "s3://my-bucket/weather.icechunk"],
    )
    branch: str = Field(
        default="main",
        description="The branch to read from and commit to.",
    )
    storage_options: dict[str, StorageOptionValue] = Field(
        default_factory=dict,
        description=(
            "Non-secret storage settings: s3 takes endpoint_url, region, allow_http, "
            "force_path_style (alias path-style), anonymous, requester_pays, "
            "network_stream_timeout_seconds, max_tries (how often a request is tried, the "
            "first included: icechunk's default is 10 with backoff, about 40 s before an "
            "unreachable endpoint is reported; 1 fails at once); az needs account; gs and az pass other keys to "
            "the object store configuration. Never put credentials here: they come from the "
            "environment or from credentials_secret_block."
        ),
        examples=[{"endpoint_url": "http://localhost:9000", "allow_http": True}],
    )
    credentials_secret_block: str | None = Field(
        default=None,
        description=(
            "Name of a Prefect Secret block holding a JSON object of credentials (s3: "
            "access_key_id, secret_access_key, session_token; gs: bearer_token; az: one of "
            "access_key, sas_token, bearer_token). Every process that touches the repository, "
            "Dask workers included, reads it through the Prefect API; when unset, credentials "
            "come from the environment."
        ),
    )

    manifests: ManifestOptions = Field(
        default_factory=ManifestOptions,
        description=(
            "Manifest splitting along the append dimension (on by default) and the commit's "
            "manifest fetch concurrency."
        ),
    )

    @field_validator("repo")
    @classmethod
    def _check_repo(cls, value: str) -> str:
        _parse_repo(value)
        return value.strip()

    @field_validator("branch")
    @classmethod
    def _check_branch(cls, value: str) -> str:
        if not value.strip():
            raise ValueError('Target.branch is empty: set it to a branch name such as "main"')
        if value != value.strip():
            raise ValueError(f"Target.branch {value!r} has leading or trailing spaces: remove them")
        return value

    @field_validator("credentials_secret_block")
    @classmethod
    def _check_secret_block(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError(
                "Target.credentials_secret_block is empty: give a Secret block name or leave "
                "it unset to take credentials from the environment"
            )
        return value

    @model_validator(mode="after")
    def _check_storage_options(self) -> Target:
        scheme = _parse_repo(self.repo).scheme
        options: dict[str, StorageOptionValue] = {}
        for raw_key, value in self.storage_options.items():
            key = _OPTION_ALIASES.get(raw_key, raw_key)
            if key in options:
                raise ValueError(
                    f"Target.storage_options sets {key!r} twice (as {raw_key!r} and an alias): "
                    "keep one"
                )
            options[key] = value
        secrets = sorted(k for k in options if is_credential_key(k))
        if secrets:
            raise ValueError(credential_option_error("Target.storage_options", secrets))
        if scheme == "file" and options:
            raise ValueError(
                f"Target.storage_options {sorted(options)} are not used by a local repository: "
                "remove them, or point Target.repo at an s3://, gs:// or az:// URL"
            )
        if scheme == "s3":
            unknown = sorted(set(options) - _S3_OPTIONS)
            if unknown:
                raise ValueError(
                    f"Target.storage_options {unknown} are not s3 options: use only "
                    f"{sorted(_S3_OPTIONS)}"
                )
        if scheme == "az" and not str(options.get("account", "")).strip():
            raise ValueError(
                "Target.storage_options needs 'account' (the Azure storage account name) for "
                f"an az:// repository such as {self.repo!r}"
            )
        endpoint = str(options.get("endpoint_url", ""))
        if endpoint and safe_url(endpoint) != endpoint.rstrip("?#"):
            raise ValueError(
                f"Target.storage_options['endpoint_url'] {safe_url(endpoint)!r} carries user "
                "information, a query or a fragment: remove them and provide credentials "
                "through the environment or credentials_secret_block"
            )
        for key in _BOOL_OPTIONS & options.keys():
            options[key] = _as_bool(key, options[key])
        for key in _INT_OPTIONS & options.keys():
            value = options[key]
            if isinstance(value, bool) or not str(value).strip().isdigit():
                raise ValueError(
                    f"Target.storage_options[{key!r}] must be a whole number, not {value!r}"
                )
            options[key] = int(value)
        # Keep the canonical spelling, so the persisted parameters, the description and the
        # storage call all agree.
        self.storage_options = options
        return self

    def storage(self, *, credentials: Mapping[str, str] | None = None) -> icechunk.Storage:
        """The icechunk Storage for this repository.

        Where object-store credentials come from, in order:

        - ``credentials_secret_block`` set: a credentials *callback*
          (``functools.partial(load_secret_credentials, block, scheme, api_url)``) that
          icechunk calls in whichever process uses the storage: the flow, a Dask worker that
          unpickled a fork, a re-run that unpickled a persisted fork. The pickle holds the
          block's name and the Prefect API URL, never the secret. ``credentials``, if given,
          are the block's contents already loaded (as ``flows.credentials.load_credentials`` does):
          they are checked and cached in this process so the callback need not ask the API.
        - ``storage_options["anonymous"]``: unsigned requests (public buckets, reads).
        - static ``credentials`` without a block (library use): passed to icechunk as they
          are; pickled sessions and forks then carry them in clear (tests/storage).
        - otherwise the environment (AWS_ACCESS_KEY_ID ..., GOOGLE_APPLICATION_CREDENTIALS,
          AZURE_STORAGE_ACCOUNT_KEY, instance roles ...), read where the storage is used, so
          Dask workers need them in their own environment; pickles carry none.
        """
        location = _parse_repo(self.repo)
        if location.scheme == "file":
            if credentials:
                raise ValueError(
                    f"credentials were given for the local repository {location.url!r}: local "
                    "repositories take none; unset Target.credentials_secret_block"
                )
            return icechunk.local_filesystem_storage(location.prefix)

        # Values were checked and given their types by the validator; Any lets them be
        # spread into the constructors' typed keyword arguments.
        options: dict[str, Any] = {
            k: v for k, v in self.storage_options.items() if k not in _REPOSITORY_OPTIONS
        }
        anonymous = bool(options.pop("anonymous", False))
        block = self.credentials_secret_block
        if anonymous and (credentials or block):
            raise ValueError(
                f"Target.storage_options sets anonymous for {location.url!r} but "
                "credentials were given too (credentials_secret_block): drop one of them"
            )
        auth: dict[str, Any]
        if block:
            checked = _checked_credentials(location, credentials) if credentials else None
            auth = secret_block_auth(block, location.scheme, checked)
        elif credentials:
            auth = dict(_checked_credentials(location, credentials))
        elif anonymous:
            auth = {"anonymous": True}
        else:
            auth = {"from_env": True}

        if location.scheme == "s3":
            return icechunk.s3_storage(
                bucket=location.bucket, prefix=location.prefix or None, **options, **auth
            )
        if location.scheme == "gs":
            config = {k: _as_config_value(v) for k, v in options.items()}
            return icechunk.gcs_storage(
                bucket=location.bucket,
                prefix=location.prefix or None,
                config=config or None,
                **auth,
            )
        account = str(options.pop("account"))
        config = {k: _as_config_value(v) for k, v in options.items()}
        # azure_storage() takes no callback; the constructor under it does.
        return icechunk.Storage.new_azure_blob(
            account=account,
            container=location.bucket,
            prefix=location.prefix,
            credentials=icechunk.azure_credentials(**auth),
            config=config or None,
        )

    def open_repository(
        self, create: bool = False, *, credentials: Mapping[str, str] | None = None
    ) -> icechunk.Repository:
        """Open the repository; with ``create=True`` create it when it does not exist yet.

        Icechunk's errors are re-raised as TargetError subclasses whose message names the
        repository and what to change, with icechunk's own error chained for detail.
        """
        storage = self.storage(credentials=credentials)
        where = self.describe()
        try:
            if create:
                # No config here: create would persist it into the new repository.
                created = icechunk.Repository.open_or_create(storage)
                return created.reopen(config=self._repository_config())
            return icechunk.Repository.open(storage, config=self._repository_config())
        except icechunk.RepositoryNotFoundError as err:
            raise TargetNotFoundError(
                f"no Icechunk repository at {where}: check Target.repo (--target) for a typo, "
                "or create the repository with `icefloe create` (create_flow)"
            ) from err
        except icechunk.InvalidInputError as err:
            raise TargetError(
                f"cannot create a repository at {where}: {first_line(err)}; point Target.repo "
                "at an empty directory or prefix, or at an existing Icechunk repository"
            ) from err
        except icechunk.StorageError as err:
            raise TargetUnreachableError(
                f"cannot reach the repository at {where}: {first_line(err)}; check Target.repo, "
                "Target.storage_options (endpoint_url, region, allow_http, force_path_style, "
                "anonymous) and the credentials (environment or credentials_secret_block)"
            ) from err
        except icechunk.IcechunkError as err:
            raise TargetError(
                f"cannot open the repository at {where}: {first_line(err)}; check Target.repo"
            ) from err

    def _repository_config(self) -> icechunk.RepositoryConfig:
        """Overrides for this process only (``open`` does not persist them); the persisted
        configuration (manifest splitting, tasks.manifests) stays in force under them."""
        manifest = icechunk.ManifestConfig(
            max_concurrent_manifest_fetches_during_commit=self.manifests.commit_fetches
        )
        tries = self.storage_options.get("max_tries")
        if tries is None:
            return icechunk.RepositoryConfig(manifest=manifest)
        retries = icechunk.StorageRetriesSettings(max_tries=max(1, int(tries)))
        return icechunk.RepositoryConfig(
            manifest=manifest, storage=icechunk.StorageSettings(retries=retries)
        )

    def describe(self) -> str:
        """A one-line description for logs and commit metadata; never shows a credential."""
        location = _parse_repo(self.repo)
        details = [f"branch {self.branch}"]
        shown = [
            f"{key}={safe_url(str(value))}"
            for key, value in sorted(self.storage_options.items())
            if key in SAFE_STORAGE_OPTION_KEYS
        ]
        if shown:
            details.append(", ".join(shown))
        if self.credentials_secret_block:
            # The block's name is not a secret and tells an operator where credentials live.
            details.append(f"credentials from Secret block {self.credentials_secret_block!r}")
        return f"{location.url} ({'; '.join(details)})"
