"""What every source kind shares: the pydantic base, and option handling that keeps secrets out."""

from collections.abc import Mapping
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
)

from flows.forms import form_properties
from flows.targets import (
    SAFE_STORAGE_OPTION_KEYS,
    credential_option_error,
    is_credential_key,
    safe_url,
)


def check_no_credentials(field: str, options: Mapping[str, object]) -> None:
    secrets = sorted(k for k in options if is_credential_key(k))
    if secrets:
        raise ValueError(credential_option_error(field, secrets))


def shown_options(options: Mapping[str, object]) -> str:
    shown = [
        f"{k}={safe_url(str(v))}"
        for k, v in sorted(options.items())
        if k in SAFE_STORAGE_OPTION_KEYS
    ]
    return f" ({', '.join(shown)})" if shown else ""


def is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def fsspec_options(url: str, options: Mapping[str, str | int | bool]) -> dict[str, Any]:
    """fsspec keyword arguments for ``url`` from a source's flat, non-secret options.

    For s3:// URLs, the names a Target uses (``region``, ``force_path_style``, ``anonymous``,
    ``allow_http``) are translated into s3fs's (``client_kwargs.region_name``,
    ``config_kwargs.s3.addressing_style``, ``anon``; the endpoint's scheme decides http), so
    a source and a target on the same object store are configured alike. Other keys pass
    through. Credentials never come from here: s3fs reads the environment (botocore's chain).
    """
    result: dict[str, Any] = {}
    protocol = url.split("://", 1)[0].lower() if "://" in url else "file"
    if protocol not in ("s3", "s3a"):
        return dict(options)
    for raw_key, value in options.items():
        key = {"path-style": "force_path_style", "path_style": "force_path_style"}.get(
            raw_key, raw_key
        )
        if key in ("region", "region_name"):
            result.setdefault("client_kwargs", {})["region_name"] = str(value)
        elif key == "force_path_style":
            if _truthy(value):
                result.setdefault("config_kwargs", {})["s3"] = {"addressing_style": "path"}
        elif key in ("anonymous", "anon"):
            result["anon"] = _truthy(value)
        elif key == "allow_http":
            continue
        else:
            result[key] = value
    return result


def _truthy(value: str | int | bool) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in {"1", "true", "yes"}


class SourceBase(BaseModel):
    # Unknown keys are typos in a deployment or UI form: refuse them rather than ignore.
    # Inputs stay out of error messages, which Prefect logs and stores with failed runs.
    # Every kind has describe() (one line for logs and commit metadata, never a secret)
    # and open(start, end) (the data, lazily, for the half-open window [start, end)).
    model_config = ConfigDict(
        extra="forbid", hide_input_in_errors=True, json_schema_extra=form_properties
    )

    @property
    def needs_window_start(self) -> bool:
        """Whether open() cannot name its data without a window start (e.g. files named by
        date): a first scheduled run of such a source needs a start from the operator."""
        return False
