"""Kinds as users type them (`file`, `File` or `files`), each with the schema of its spec."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, get_args

from pydantic import BaseModel, Strict, create_model
from pydantic.fields import FieldInfo

from models.base import Resource
from resources.spec import Spec
from setpoint.errors import UnknownKind
from worker import registry
from worker.controller import Controller

NOT_SPEC = ("id", "name", "uid", "generation", "created_at", "updated_at")
"""Columns that identify a resource or belong to the database, never part of what users declare."""


@dataclasses.dataclass(frozen=True)
class Kind:
    name: str
    """As in `resource_status.kind`: `File`."""
    plural: str
    """The table and the API path: `files`."""
    model: type[Resource]
    spec: type[BaseModel]
    """The desired fields, validated; unknown fields are refused."""
    controller: Controller[Any, Any]

    @property
    def spec_fields(self) -> list[str]:
        return list(self.spec.model_fields)


def spec_model(model: type[Resource]) -> type[BaseModel]:
    """A pydantic model of the kind's desired columns, with their types, defaults and descriptions."""
    fields: dict[str, Any] = {}
    own_first = sorted(model.model_fields.items(), key=lambda item: item[0] in Resource.model_fields)
    for field_name, info in own_first:
        if field_name in NOT_SPEC:
            continue
        # Numbers are numbers: `true` is not 1, nor "30" 30 (lax pydantic would take both).
        annotation = Annotated[info.annotation, Strict()] if _numeric(info.annotation) else info.annotation
        fields[field_name] = (annotation, FieldInfo.merge_field_infos(info))
    return create_model(f"{model.kind}Spec", __base__=Spec, **fields)


def _numeric(annotation: Any) -> bool:
    """Whether a field holds an int or a float (or None)."""
    return set(get_args(annotation) or (annotation,)) - {type(None)} <= {int, float}


def _build() -> dict[str, Kind]:
    kinds = {}
    for name, controller in sorted(registry.controllers().items()):
        model = controller.model
        kinds[name] = Kind(name, model.__tablename__, model, spec_model(model), controller)  # type: ignore[arg-type]
    return kinds


_kinds: dict[str, Kind] | None = None


def all_kinds() -> dict[str, Kind]:
    global _kinds
    if _kinds is None:
        _kinds = _build()
    return _kinds


def resolve(text: str) -> Kind:
    """The kind named `text`, in any of the ways users write it."""
    wanted = text.strip().lower()
    for kind in all_kinds().values():
        if wanted in (kind.name.lower(), kind.plural.lower()):
            return kind
    known = ", ".join(f"{k.name} ({k.plural})" for k in all_kinds().values())
    raise UnknownKind(f"unknown kind {text!r}; known kinds: {known}")
