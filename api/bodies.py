"""The request and response bodies of each kind, generated from its spec so the OpenAPI schema shows typed fields."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.fields import FieldInfo

from models.base import NAME_PATTERN
from models.status import PHASES
from resources.kinds import Kind
from resources.spec import Spec

NAME_RULES = (
    "Lower-case letters, digits, '-', '_' and '.', starting and ending with a letter or digit, "
    "at most 253 characters (as in Kubernetes)."
)
PREFIX_PATTERN = r"^[-a-z0-9_.]*$"
"""A name prefix can only hold characters a name can."""
Phase = Literal[PHASES]  # type: ignore[valid-type]


class Problem(BaseModel):
    """What went wrong, in words."""

    detail: str


class Condition(BaseModel):
    """One aspect of the resource's state, shaped as in Kubernetes (`Ready`, `Synced`, `Healthy`)."""

    model_config = ConfigDict(extra="allow")

    type: str
    status: str = Field(description="'True', 'False' or 'Unknown'.")
    reason: str | None = None
    message: str | None = None
    last_transition_time: str | None = Field(None, description="When `status` last changed.")


class Link(BaseModel):
    """Another resource this one is linked to (`File/app-conf`), with its phase and whether it is ready."""

    ref: str = Field(description="Kind/name, as stored: `File/app-conf`.")
    phase: str = Field(description="Its phase; `Missing` for a resource named but not (or no longer) there.")
    ready: bool = Field(description="Ready at its current generation, as a dependency must be for others to act.")


class Status(BaseModel):
    """What the workers last saw and did; written by them only, never by requests."""

    model_config = ConfigDict(extra="allow")

    ready: bool = Field(description="Whether the real thing matches the spec at `observed_generation`.")
    phase: Phase = Field(description="Pending until first reconciled; Ready when all is as desired.")
    generation: int = Field(description="Bumped by the database whenever the spec changes.")
    observed_generation: int | None = Field(
        None, description="The generation the last reconcile worked from; behind `generation` while a change is due."
    )
    conditions: list[Condition] = Field(default_factory=list)
    last_error: str | None = Field(None, description="The last reconcile's error, if it failed.")
    message: str = Field(description="The Ready condition's message, else the last error.")
    drift: list[dict[str, Any]] | None = Field(None, description="What differed from the spec at the last look.")
    observed: dict[str, Any] | None = Field(None, description="The actual state the controller last observed.")
    consecutive_failures: int | None = None
    last_reconcile_at: datetime | None = None
    last_success_at: datetime | None = None
    next_reconcile_at: datetime | None = Field(None, description="When it is next due; null while never.")
    deleted_at: datetime | None = None
    outputs: dict[str, Any] = Field(
        default_factory=dict,
        description="What other resources may reference (`{{ File/app-conf.outputs.sha256 }}`), as last published.",
    )
    dependencies: list[Link] | None = Field(
        None,
        description="What it waits for (its `depends_on` and the resources its references name). This and the "
        "other links are given when one resource is read or written, null in a list.",
    )
    dependents: list[Link] | None = Field(None, description="What depends on it: torn down before it.")
    owner: Link | None = Field(None, description="The resource its `owned_by` names, if any.")
    owned: list[Link] | None = Field(None, description="The resources whose `owned_by` names it.")


class Create(BaseModel):
    """A new resource; each kind's own model types `spec`."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, max_length=253, description=NAME_RULES)
    spec: BaseModel


class Replace(BaseModel):
    """A resource's whole spec; each kind's own model types it."""

    model_config = ConfigDict(extra="forbid")

    spec: BaseModel


class Patch(Replace):
    """Some fields of a resource's spec; each kind's own model types them."""


@dataclasses.dataclass(frozen=True)
class Bodies:
    """The models one kind's routes take and give, generated at run time from its spec."""

    create: type[Create]
    replace: type[Replace]
    patch: type[Patch]
    document: type[BaseModel]
    page: type[BaseModel]


def _without_default(schema: dict[str, Any]) -> None:
    """Leaving a field out keeps its current value: the schema should not promise null as a default."""
    schema.pop("default", None)


def partial_spec(kind: Kind) -> type[BaseModel]:
    """The spec with every field optional: the fields given replace the current ones, the rest are kept."""
    fields: dict[str, Any] = {}
    for field_name, info in kind.spec.model_fields.items():
        optional = FieldInfo.merge_field_infos(
            info, default=None, default_factory=None, json_schema_extra=_without_default
        )
        fields[field_name] = (info.annotation, optional)
    return create_model(f"{kind.name}SpecPatch", __base__=Spec, **fields)


def bodies(kind: Kind) -> Bodies:
    spec = (kind.spec, Field(description=f"The desired state of the {kind.name}."))
    document = create_model(
        kind.name,
        __doc__=f"A {kind.name}: its desired state and the status workers report.",
        kind=(Literal[kind.name], ...),  # type: ignore[arg-type]
        name=(str, ...),
        uid=(
            str,
            Field(
                description="Assigned by the database at creation, never changed: a name deleted and created again "
                "is another resource, with another uid and none of the earlier one's status or history."
            ),
        ),
        spec=(kind.spec, ...),
        status=(Status, ...),
    )
    page = create_model(
        f"{kind.name}List",
        __doc__=f"A page of {kind.plural}, by name.",
        items=(list[document], ...),  # type: ignore[valid-type]
        next_offset=(int | None, Field(description="The offset of the next page; null on the last one.")),
    )
    return Bodies(
        create=create_model(f"{kind.name}Create", __base__=Create, __doc__=f"A new {kind.name}.", spec=spec),
        replace=create_model(f"{kind.name}Replace", __base__=Replace, __doc__=f"A {kind.name}'s spec.", spec=spec),
        patch=create_model(
            f"{kind.name}Patch",
            __base__=Patch,
            __doc__=f"Some fields of a {kind.name}'s spec.",
            spec=(partial_spec(kind), ...),
        ),
        document=document,
        page=page,
    )
