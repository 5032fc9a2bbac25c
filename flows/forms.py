"""Parameter schemas shaped so both Prefect UIs render them as labelled fields.

Prefect turns each flow's signature into a JSON schema, and its UIs turn that schema into
the run form. pydantic's schema is correct but uses three shapes the default (Vue) UI
does not render as fields:

- ``X | None`` is ``anyOf: [X, {type: null}]``: a tab per branch, the second saying
  'Property is type "None"'. An unset optional is simply left empty, so the null branch is
  dropped (the server still accepts null for any parameter with a default).
- ``Literal["auto"]`` is ``const``: 'region is a const and cannot be changed'. A one-value
  ``enum`` renders as a select instead.
- a discriminated union (``Source``) is ``oneOf`` + ``discriminator``: a raw JSON box.
  ``anyOf`` renders as one tab per kind, each with its own fields.

``form_schema`` rewrites a schema node that way; ``FORM`` applies it to a parameter's type
(``Annotated[str | None, FORM]``) and ``form_properties`` to a model's fields (as its
``json_schema_extra``); ``Tabs`` also titles a union's branches. Validation is pydantic's and unchanged: only the published schema
differs, and every value the old schema accepted is still accepted by the flows.
"""

from __future__ import annotations

from typing import Any

from pydantic import GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

__all__ = ["FORM", "Tabs", "form_properties", "form_schema"]


def form_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with nullable unions, consts and discriminated unions in renderable shapes."""
    out = dict(schema)
    branches = out.get("anyOf")
    if isinstance(branches, list):
        kept = [b for b in branches if b != {"type": "null"}]
        if len(kept) == 1 and len(kept) < len(branches):
            del out["anyOf"]
            out = {**kept[0], **out}  # the field's own title/description/default win
        else:
            out["anyOf"] = [form_schema(b) for b in kept]
    if isinstance(out.get("oneOf"), list):
        out["anyOf"] = [form_schema(b) for b in out.pop("oneOf")]
        out.pop("discriminator", None)
    if "const" in out:
        out["enum"] = [out.pop("const")]
    prefix = out.get("prefixItems")
    if isinstance(prefix, list) and prefix and all(p == prefix[0] for p in prefix):
        # a fixed-length tuple of one type: the Vue UI renders a list, not prefixItems
        out["items"] = form_schema(prefix[0])
        del out["prefixItems"]
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = form_schema(out["additionalProperties"])
    if isinstance(out.get("items"), dict):
        out["items"] = form_schema(out["items"])
    return out


def form_properties(schema: dict[str, Any]) -> None:
    """A model's ``json_schema_extra``: every field in a renderable shape.

    Also drops ``"default": null``: Prefect's server check of run parameters lets a
    property without a default be null, but not one whose default is null and whose type
    no longer lists null; the form shows an empty field either way."""
    properties = schema.get("properties")
    if isinstance(properties, dict):
        for name, prop in properties.items():
            properties[name] = form_schema(prop)
            if "default" in prop and prop["default"] is None and "type" in properties[name]:
                del properties[name]["default"]


class _Form:
    """Marks a parameter type whose JSON schema goes through ``form_schema``."""

    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return form_schema(handler(core_schema))

    def __repr__(self) -> str:
        return "FORM"


FORM = _Form()


class Tabs(_Form):
    """``FORM``, and a title for each branch of a union: the form's tabs say what they are
    ("auto: placed by the source's labels") rather than "String" and "Object"."""

    def __init__(self, *titles: str) -> None:
        self.titles = titles

    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = super().__get_pydantic_json_schema__(core_schema, handler)
        for branch, title in zip(schema["anyOf"], self.titles, strict=True):
            branch["title"] = title
        return schema

    def __repr__(self) -> str:
        return f"Tabs{self.titles!r}"
