"""References to other resources' outputs in templated fields: `{{ File/app-conf.outputs.sha256 }}`.

Resolved at each reconcile from the outputs its dependencies published (worker/needs.py); the desired row keeps
what the user wrote, and the controller sees the resolved value; `{{ Secret/NAME }}` is a secret's value
(worker/secrets.py), never written anywhere. `{{ "{{" }}` writes a literal `{{`; any other
text, `{{ name }}` of a Jinja template among it, stays as it is. The kind may be spelled as the CLI takes it
(`file`, `File`, `files`); the database made each reference a dependency (models/links.py), so a resource whose
references cannot be resolved yet is waiting, not failing.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

from models.base import Resource
from models.links import REFERENCE, SECRET_REFERENCE
from worker import registry, secrets
from worker.needs import Need

_PATTERN = re.compile(r'(?P<escape>\{\{ *"\{\{" *\}\})|(?P<secret>' + SECRET_REFERENCE + ")|" + REFERENCE)


@dataclasses.dataclass(frozen=True)
class Resolved:
    """The desired state as the controller sees it, and the references that could not be resolved."""

    desired: Any
    unresolved: tuple[str, ...] = ()


def canonical(ref: str) -> str:
    """`file/app-conf` as `File/app-conf` (unknown kinds as written: the database refused those already)."""
    spelled, _, name = ref.partition("/")
    wanted = spelled.strip().lower()
    for kind, controller in registry.controllers().items():
        if wanted in (kind.lower(), str(controller.model.__tablename__).lower()):
            return f"{kind}/{name}"
    return ref


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), sort_keys=True)


def resolve(desired: Resource, needs: tuple[Need, ...]) -> Resolved:
    """Replace every reference in the kind's templated fields with the output it names."""
    outputs = {need.ref: need.outputs for need in needs}
    existing = {need.ref for need in needs if need.exists}
    unresolved: list[str] = []

    def substitute(text: str) -> str:
        def one(match: re.Match[str]) -> str:
            if match.group("escape"):
                return "{{"
            if match.group("secret"):
                name = match.group(3)
                if f"Secret/{name}" in existing:  # the database made it a dependency
                    return secrets.value(name)
                unresolved.append(f"{match.group(0)}: secret {name!r} does not exist")
                return match.group(0)
            ref, key = canonical(match.group(4)), match.group(5)
            published = outputs.get(ref)
            if published is None:
                unresolved.append(f"{match.group(0)}: {ref} is not among its dependencies' outputs yet")
            elif key not in published:
                keys = ", ".join(sorted(published)) or "nothing yet"
                unresolved.append(f"{match.group(0)}: {ref} has no output {key!r} (it publishes {keys})")
            else:
                return _text(published[key])
            return match.group(0)

        return _PATTERN.sub(one, text)

    changed: dict[str, Any] = {}
    for field in type(desired).templated:
        value = getattr(desired, field)
        if isinstance(value, str):
            new: Any = substitute(value)
        elif isinstance(value, dict):
            new = {k: substitute(v) if isinstance(v, str) else v for k, v in value.items()}
        elif isinstance(value, list):
            new = [substitute(v) if isinstance(v, str) else v for v in value]
        else:
            continue
        if new != value:
            changed[field] = new
    resolved = type(desired).model_validate({**desired.model_dump(), **changed}) if changed else desired
    return Resolved(resolved, tuple(dict.fromkeys(unresolved)))
