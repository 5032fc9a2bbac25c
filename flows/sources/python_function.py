"""``python``: a function ``"package.module:function"`` that returns the Dataset."""

import importlib
import json
import re
from collections.abc import Callable
from typing import Any, Literal

import xarray as xr
from pydantic import (
    ConfigDict,
    Field,
    field_validator,
)

from flows.sources.base import (
    SourceBase,
)
from flows.sources.window import WindowBound

_FUNCTION_SPEC = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


class PythonSource(SourceBase):
    """A function that builds the Dataset, named as ``package.module:function``."""

    model_config = ConfigDict(title="Python function")

    kind: Literal["python"] = Field(
        default="python", description="A Python function returning an xarray.Dataset."
    )
    function: str = Field(
        description=(
            "The function as 'package.module:function'. It must be importable where the flow "
            "runs and return an xarray.Dataset; windowed runs also pass start= and end=."
        ),
        examples=["mypackage.sources:load_forecast"],
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="JSON-serialisable keyword arguments for the function.",
    )

    @field_validator("function")
    @classmethod
    def _check_function(cls, value: str) -> str:
        value = value.strip()
        if not _FUNCTION_SPEC.match(value):
            raise ValueError(
                f"PythonSource.function {value!r} is not of the form 'package.module:function': "
                "write the importable module, a colon, then the function name"
            )
        return value

    @field_validator("kwargs")
    @classmethod
    def _check_kwargs(cls, value: dict[str, Any]) -> dict[str, Any]:
        # Parameters are stored as JSON by Prefect; a value that does not serialise would
        # break deployments and the UI much later and further away.
        for key, item in value.items():
            try:
                json.dumps(item, allow_nan=False)
            except (TypeError, ValueError) as err:
                raise ValueError(
                    f"PythonSource.kwargs[{key!r}] is not JSON-serialisable ({type(item).__name__}"
                    "): pass plain numbers, strings, booleans, lists and objects, and build "
                    "richer values inside the function"
                ) from err
        return value

    def load(self) -> Callable[..., object]:
        """Import the function. ImportError/AttributeError name the function string and fix."""
        module_name, _, attr_path = self.function.partition(":")
        try:
            obj: object = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name and (module_name == err.name or module_name.startswith(err.name + ".")):
                raise ImportError(
                    f"PythonSource.function {self.function!r}: there is no module "
                    f"{module_name!r} ({err}): fix the module path before ':', or install the "
                    "package that provides it where the flow (and its workers) run"
                ) from err
            raise ImportError(
                f"PythonSource.function {self.function!r}: importing {module_name!r} needs the "
                f"missing module {err.name!r}: install it where the flow (and its workers) run"
            ) from err
        except ImportError as err:
            raise ImportError(
                f"PythonSource.function {self.function!r}: importing {module_name!r} failed "
                f"({err}): fix that module or its dependencies"
            ) from err
        for part in attr_path.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError as err:
                raise AttributeError(
                    f"PythonSource.function {self.function!r}: {module_name!r} has no attribute "
                    f"{attr_path!r} (missing {part!r}): fix the name after ':'"
                ) from err
        if not callable(obj):
            raise TypeError(
                f"PythonSource.function {self.function!r} names a {type(obj).__name__}, not a "
                "function: point it at a callable"
            )
        return obj

    def open(
        self,
        start: WindowBound | None = None,
        end: WindowBound | None = None,
        *,
        append_dim: str = "time",
    ) -> xr.Dataset:
        """Call the function with kwargs, plus start=/end= when given (as given)."""
        function = self.load()
        kwargs = dict(self.kwargs)
        for name, value in (("start", start), ("end", end)):
            if value is None:
                continue
            if name in kwargs:
                raise ValueError(
                    f"PythonSource.kwargs sets {name!r} but the run passes a window {name}: "
                    f"remove {name!r} from kwargs for scheduled and backfill runs"
                )
            kwargs[name] = value
        result = function(**kwargs)
        if not isinstance(result, xr.Dataset):
            raise TypeError(
                f"PythonSource.function {self.function!r} returned a {type(result).__name__}, "
                "not an xarray.Dataset: make it return a Dataset (a DataArray converts with "
                ".to_dataset(name=...))"
            )
        return result

    def describe(self) -> str:
        # Keys only: values may be anything, including things that must not be logged.
        keys = f" (kwargs: {', '.join(sorted(self.kwargs))})" if self.kwargs else ""
        return f"python {self.function}{keys}"
