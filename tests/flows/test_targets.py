"""Target: validation, storage construction, opening real repositories, safe descriptions."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import icechunk
import pytest
from pydantic import ValidationError

from flows.targets import (
    Target,
    TargetError,
    TargetNotFoundError,
    TargetUnreachableError,
    is_credential_key,
    safe_url,
)
from tasks.errors import IcefloeError

if TYPE_CHECKING:
    from pathlib import Path


# ------------------------------------------------------------------ real local repositories


def test_relative_path_is_made_absolute_and_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    target = Target(repo="repos/weather")
    repo = target.open_repository(create=True)
    assert isinstance(repo, icechunk.Repository)
    assert (tmp_path / "repos" / "weather").is_dir()
    # Opening again (without create) finds the same repository.
    assert "main" in target.open_repository().list_branches()
    assert target.describe() == f"{tmp_path / 'repos' / 'weather'} (branch main)"


def test_file_url_opens_the_same_repository(tmp_path: Path) -> None:
    Target(repo=str(tmp_path / "r")).open_repository(create=True)
    repo = Target(repo=f"file://{tmp_path / 'r'}").open_repository()
    assert repo.list_branches() == {"main"}


def test_open_or_create_keeps_an_existing_repository(tmp_path: Path) -> None:
    target = Target(repo=str(tmp_path / "r"), branch="dev")
    repo = target.open_repository(create=True)
    repo.create_branch("dev", repo.lookup_branch("main"))
    assert target.open_repository(create=True).list_branches() == {"main", "dev"}


def test_missing_repository_names_it_and_the_fix(tmp_path: Path) -> None:
    target = Target(repo=str(tmp_path / "nothing-here"))
    with pytest.raises(TargetNotFoundError) as info:
        target.open_repository()
    message = str(info.value)
    assert str(tmp_path / "nothing-here") in message
    assert "create" in message
    assert isinstance(info.value, IcefloeError)
    assert isinstance(info.value, FileNotFoundError)
    assert not (tmp_path / "nothing-here").exists()  # opening never creates


def test_unreachable_storage_names_the_repository(tmp_path: Path) -> None:
    # A regular file where the repository should be: storage answers with an I/O error.
    (tmp_path / "a-file").write_text("not a repository")
    with pytest.raises(TargetUnreachableError) as info:
        Target(repo=str(tmp_path / "a-file")).open_repository()
    assert str(tmp_path / "a-file") in str(info.value)
    assert "Target.repo" in str(info.value)


def test_create_refuses_a_directory_holding_something_else(tmp_path: Path) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("hello")
    with pytest.raises(TargetError) as info:
        Target(repo=str(tmp_path / "busy")).open_repository(create=True)
    assert str(tmp_path / "busy") in str(info.value)
    assert "empty" in str(info.value)


# ------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"repo": ""}, ["Target.repo", "local path"]),
        ({"repo": "   "}, ["Target.repo", "local path"]),
        ({"repo": "http://example.com/repo"}, ["unsupported scheme 'http'", "s3://"]),
        ({"repo": "s3://"}, ["names no bucket", "s3://<bucket>"]),
        ({"repo": "az:///prefix"}, ["names no container"]),
        ({"repo": "s3://key:secret@bucket/p"}, ["user information", "credentials_secret_block"]),
        ({"repo": "s3://bucket/p?versionId=1"}, ["query string", "storage_options"]),
        ({"repo": "r", "branch": ""}, ["Target.branch", "main"]),
        ({"repo": "r", "branch": " dev"}, ["Target.branch", "spaces"]),
        ({"repo": "r", "credentials_secret_block": ""}, ["credentials_secret_block"]),
        ({"repo": "r", "storage_options": {"region": "x"}}, ["not used by a local repository"]),
        ({"repo": "s3://b/p", "storage_options": {"colour": "blue"}}, ["'colour'", "endpoint_url"]),
        ({"repo": "s3://b/p", "storage_options": {"allow_http": "maybe"}}, ["allow_http", "true"]),
        (
            {"repo": "s3://b/p", "storage_options": {"network_stream_timeout_seconds": "soon"}},
            ["network_stream_timeout_seconds", "whole number"],
        ),
        (
            {"repo": "s3://b/p", "storage_options": {"path-style": True, "force_path_style": 1}},
            ["force_path_style", "twice"],
        ),
        ({"repo": "az://container/p"}, ["'account'", "az://"]),
        (
            {"repo": "s3://b/p", "storage_options": {"endpoint_url": "http://u:pw@host:9000"}},
            ["endpoint_url", "user information"],
        ),
    ],
)
def test_invalid_targets_name_the_field_and_fix(fields: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(ValidationError) as info:
        Target(**fields)
    message = str(info.value)
    for word in words:
        assert word in message
    assert "pw@" not in message


def test_unknown_field_is_refused() -> None:
    with pytest.raises(ValidationError, match="brnch"):
        Target.model_validate({"repo": "r", "brnch": "dev"})


@pytest.mark.parametrize(
    "key", ["secret_access_key", "access_key_id", "session_token", "sas_token", "password", "key"]
)
def test_credentials_in_storage_options_are_refused_without_echoing_them(key: str) -> None:
    with pytest.raises(ValidationError) as info:
        Target(repo="s3://bucket/prefix", storage_options={key: "TOPSECRET-VALUE"})
    message = str(info.value)
    assert repr(key) in message
    assert "credentials_secret_block" in message
    assert "environment" in message
    assert "TOPSECRET-VALUE" not in message  # the error is logged: it must not echo the input


def test_is_credential_key_and_safe_url() -> None:
    assert is_credential_key("AWS_SECRET_ACCESS_KEY")
    assert is_credential_key("bearer-token")
    assert not is_credential_key("endpoint_url")
    assert not is_credential_key("force_path_style")
    assert safe_url("https://user:pw@host:9000/x?sig=abc#f") == "https://host:9000/x"
    assert safe_url("/a/local/path") == "/a/local/path"


# ------------------------------------------------------------------ object store storages


def test_s3_storage_options_are_normalised_and_used() -> None:
    target = Target(
        repo="s3://my-bucket/weather/v1.icechunk",
        storage_options={
            "endpoint": "http://localhost:9000",
            "region_name": "eu-west-1",
            "allow_http": "true",
            "path-style": True,
            "network_stream_timeout_seconds": "30",
        },
    )
    assert target.storage_options == {
        "endpoint_url": "http://localhost:9000",
        "region": "eu-west-1",
        "allow_http": True,
        "force_path_style": True,
        "network_stream_timeout_seconds": 30,
    }
    shown = repr(target.storage())  # built offline: nothing is contacted until opened
    for text in ["my-bucket", "weather/v1.icechunk", "eu-west-1", "http://localhost:9000"]:
        assert text in shown
    assert "force_path_style: True" in shown


@pytest.mark.parametrize(
    ("repo", "options", "kind"),
    [
        ("s3://b/p", {"anonymous": True}, "S3"),
        ("gs://b/p", {"anonymous": True}, "GCS"),
        ("gs://b", {}, "GCS"),
        ("az://container/p", {"account": "acct", "anon": "yes"}, "Azure"),
    ],
)
def test_object_store_storages_are_built(repo: str, options: dict[str, Any], kind: str) -> None:
    storage = Target(repo=repo, storage_options=options).storage()
    assert isinstance(storage, icechunk.Storage)
    assert kind in repr(storage)


def test_static_credentials_are_passed_but_checked(tmp_path: Path) -> None:
    target = Target(repo="s3://b/p", credentials_secret_block="aws-prod")
    storage = target.storage(credentials={"access_key_id": "AKIA", "secret_access_key": "s3cr3t"})
    assert isinstance(storage, icechunk.Storage)
    with pytest.raises(ValueError, match="aws_secret") as info:
        target.storage(credentials={"aws_secret": "s3cr3t"})
    assert "s3cr3t" not in str(info.value)
    assert "credentials_secret_block" in str(info.value)
    with pytest.raises(ValueError, match="local repositories take none"):
        Target(repo=str(tmp_path)).storage(credentials={"access_key_id": "AKIA"})
    anonymous = Target(repo="s3://b/p", storage_options={"anonymous": True})
    with pytest.raises(ValueError, match="anonymous"):
        anonymous.storage(credentials={"access_key_id": "AKIA"})


# ------------------------------------------------------------------ description, round trip


def test_describe_shows_only_allow_listed_options() -> None:
    target = Target(
        repo="gs://bucket/prefix",
        branch="dev",
        storage_options={"anonymous": False, "google_project_hint": "hidden-value"},
        credentials_secret_block="gcs-writer",
    )
    text = target.describe()
    assert text.startswith("gs://bucket/prefix (branch dev; anonymous=False")
    assert "hidden-value" not in text
    assert "gcs-writer" in text  # a block name is not a secret and tells where credentials are
    assert "\n" not in text


def test_describe_local_and_s3() -> None:
    s3 = Target(repo="s3://b/p/", storage_options={"endpoint_url": "http://minio:9000"})
    assert s3.describe() == "s3://b/p (branch main; endpoint_url=http://minio:9000)"
    assert Target(repo="/data/repo").describe() == f"{os.path.abspath('/data/repo')} (branch main)"


@pytest.mark.parametrize(
    "target",
    [
        Target(repo="some/where"),
        Target(
            repo="s3://b/p",
            branch="dev",
            storage_options={"endpoint_url": "http://x:9000", "force_path_style": True},
            credentials_secret_block="minio",
        ),
        Target(repo="az://c/p", storage_options={"account": "acct"}),
    ],
)
def test_json_round_trip(target: Target) -> None:
    assert Target.model_validate_json(target.model_dump_json()) == target
    assert Target.model_validate(json.loads(target.model_dump_json())) == target


def test_every_field_is_described_for_the_ui() -> None:
    schema = Target.model_json_schema()
    assert schema["required"] == ["repo"]
    for name, prop in schema["properties"].items():
        assert prop.get("description"), name
