"""Manifests: YAML or JSON documents `{kind, name, spec}`, several per file, from files, folders or stdin."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, BinaryIO

import yaml

from resources import loader
from resources.spec import problem
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
        raw = [d for d in loader.load_all(text, origin) if d is not None]
    except loader.Refused as error:
        where = f", line {error.problem_mark.line + 1}" if error.problem_mark else ""
        raise InvalidDocument(f"{origin}, document {getattr(error, 'document', 1)}{where}: {error.problem}") from None
    except yaml.YAMLError as error:
        raise InvalidDocument(f"{origin}: not valid YAML or JSON: {error}") from None
    documents = []
    for index, item in enumerate(raw, start=1):
        source = f"{origin}, document {index}"
        if not isinstance(item, dict):
            raise InvalidDocument(f"{source}: expected a mapping with kind, name and spec, got {type(item).__name__}")
        unknown = {str(key) for key in item} - {"kind", "name", "spec"}
        if unknown:
            raise InvalidDocument(f"{source}: unknown top-level field(s) {sorted(unknown)}; expected kind, name, spec")
        for key in ("kind", "name"):
            if not isinstance(item.get(key), str) or not item[key]:
                raise InvalidDocument(f"{source}: field '{key}' is required and must be a string")
            # Both end up in messages and on the terminal: refuse what cannot be printed before anything prints it.
            if problem(item[key]):
                raise InvalidDocument(f"{source}: field '{key}': {problem(item[key])}; got {item[key]!r}", field=key)
        spec = item.get("spec", {})
        if not isinstance(spec, dict):
            raise InvalidDocument(f"{item['kind']}/{item['name']} ({source}): field 'spec' must be a mapping")
        documents.append(Document(item["kind"], item["name"], spec, source))
    return documents


def load(target: str) -> list[Document]:
    """The documents in a file, in every .yaml/.yml/.json file of a folder (sorted), or on stdin (`-`)."""
    if target == "-":
        return parse(text(sys.stdin.buffer, "stdin"), "stdin")
    path = Path(target)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file())
        return [doc for file in files for doc in parse(read(file), str(file))]
    if not path.exists():
        raise InvalidDocument(f"{target}: no such file or folder")
    return parse(read(path), str(path))


def read(path: Path) -> str:
    with path.open("rb") as stream:
        return text(stream, str(path))


def text(stream: BinaryIO, origin: str) -> str:
    """At most loader.MAX_BYTES of UTF-8 text from `stream`, or InvalidDocument: nothing larger is read whole."""
    data = stream.read(loader.MAX_BYTES + 1)
    if len(data) > loader.MAX_BYTES:
        raise InvalidDocument(f"{origin}: larger than {loader.MAX_BYTES} bytes; split it into several files")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidDocument(f"{origin}: not UTF-8 text (byte {error.start})") from None


def dump(items: list[dict[str, Any]], output: str) -> str:
    """Documents as JSON (a list when several) or YAML (a stream when several)."""
    if output == "json":
        return json.dumps(items[0] if len(items) == 1 else items, indent=2, default=str)
    return yaml.safe_dump_all(json.loads(json.dumps(items, default=str)), sort_keys=False)
