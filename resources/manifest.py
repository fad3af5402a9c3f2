"""Manifests: YAML or JSON documents `{kind, name, spec}`, several per file, from files, folders or stdin."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from setpoint.errors import InvalidDocument

SUFFIXES = (".yaml", ".yml", ".json")


@dataclasses.dataclass(frozen=True)
class Document:
    kind: str
    name: str
    spec: dict[str, Any]
    source: str
    """Where it came from, for error messages: `web.yaml, document 2`."""

    @property
    def label(self) -> str:
        return f"{self.kind}/{self.name} ({self.source})"


def parse(text: str, origin: str) -> list[Document]:
    """Every document in one YAML stream (JSON is YAML too); empty documents are skipped."""
    try:
        raw = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as error:
        raise InvalidDocument(f"{origin}: not valid YAML or JSON: {error}") from None
    documents = []
    for index, item in enumerate(raw, start=1):
        source = f"{origin}, document {index}"
        if not isinstance(item, dict):
            raise InvalidDocument(f"{source}: expected a mapping with kind, name and spec, got {type(item).__name__}")
        unknown = set(item) - {"kind", "name", "spec"}
        if unknown:
            raise InvalidDocument(f"{source}: unknown top-level field(s) {sorted(unknown)}; expected kind, name, spec")
        for key in ("kind", "name"):
            if not isinstance(item.get(key), str) or not item[key]:
                raise InvalidDocument(f"{source}: field '{key}' is required and must be a string")
        spec = item.get("spec", {})
        if not isinstance(spec, dict):
            raise InvalidDocument(f"{item['kind']}/{item['name']} ({source}): field 'spec' must be a mapping")
        documents.append(Document(item["kind"], item["name"], spec, source))
    return documents


def load(target: str) -> list[Document]:
    """The documents in a file, in every .yaml/.yml/.json file of a folder (sorted), or on stdin (`-`)."""
    if target == "-":
        return parse(sys.stdin.read(), "stdin")
    path = Path(target)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file())
        return [doc for file in files for doc in parse(file.read_text(), str(file))]
    if not path.exists():
        raise InvalidDocument(f"{target}: no such file or folder")
    return parse(path.read_text(), str(path))


def dump(items: list[dict[str, Any]], output: str) -> str:
    """Documents as JSON (a list when several) or YAML (a stream when several)."""
    if output == "json":
        return json.dumps(items[0] if len(items) == 1 else items, indent=2, default=str)
    return yaml.safe_dump_all(json.loads(json.dumps(items, default=str)), sort_keys=False)
