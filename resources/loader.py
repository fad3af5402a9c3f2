"""The YAML loader manifests are read with: PyYAML's safe loader, bounded so that no file can hang or crash us.

A manifest may come from anyone, so the loader refuses, with the line: aliases (`*name`; a few lines of them
expand to gigabytes, the "billion laughs"), nesting deeper than MAX_DEPTH (PyYAML recurses once per level),
and a key given twice in one mapping (YAML keeps the last silently, so a typo would hide a value).
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode

MAX_DEPTH = 32
"""Levels of nested mappings and sequences in one document; a spec's JSON columns allow 16 of their own."""
MAX_BYTES = 1_048_576
"""The largest manifest file (or stdin) read: the REST API's body limit."""


class Refused(yaml.MarkedYAMLError):
    """The manifest is valid YAML, but not something a manifest may hold."""


class Loader(yaml.SafeLoader):
    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.path: list[str] = []
        self.documents = 0

    def compose_document(self) -> Node | None:
        self.documents += 1
        node: Node | None = super().compose_document()
        return node

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        # `index` is the key node under a mapping, the position under a sequence: together, the field's path.
        self.path.append(str(index.value) if isinstance(index, ScalarNode) else str(index))
        try:
            if self.check_event(AliasEvent):
                event = self.peek_event()
                self.refuse(f"aliases such as *{event.anchor} are not allowed in manifests: write the value out")
            if len(self.path) > MAX_DEPTH:
                self.refuse(f"nested more than {MAX_DEPTH} levels deep")
            node: Node | None = super().compose_node(parent, index)
            return node
        finally:
            self.path.pop()

    def refuse(self, problem: str) -> None:
        """Refused, naming the field being read (its first levels: enough to find it) and the line."""
        keys = [key for key in self.path if key != "None"]
        field = ".".join(keys[:6]) + (".…" if len(keys) > 6 else "")
        raise Refused(
            problem=f"field '{field}': {problem}" if field else problem, problem_mark=self.peek_event().start_mark
        )

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            if isinstance(key, str | int | float | bool) or key is None:
                if key in seen:
                    raise Refused(problem=f"the key {key!r} is given twice", problem_mark=key_node.start_mark)
                seen.add(key)
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping


def load_all(text: str, origin: str) -> list[Any]:
    """Every document in `text`, or yaml.YAMLError; `origin` names the stream in the size refusal."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise Refused(problem=f"{origin} is larger than {MAX_BYTES} bytes; split it into several files")
    loader = Loader(text)
    try:
        documents = []
        while loader.check_data():  # type: ignore[no-untyped-call]
            documents.append(loader.get_data())  # type: ignore[no-untyped-call]
        return documents
    except yaml.YAMLError as error:
        error.document = loader.documents  # type: ignore[attr-defined]
        raise
    finally:
        loader.dispose()  # type: ignore[no-untyped-call]
