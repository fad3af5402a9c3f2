"""Manifests from hostile hands: `setpoint apply -f` refuses them with exit 2, naming the document and the field,
promptly, without a traceback, and applies nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine

from resources import manifest
from setpoint.errors import InvalidDocument
from tests.conftest import ROOT
from tests.helpers import status

LAUGHS = """\
kind: file
name: {name}-lol
spec:
  path: /tmp/never/lol
  labels:
    a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
    b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
    c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
    d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
    e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
    f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
    g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
    h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
    i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


def good(name: str) -> str:
    """A valid first document: it must not be applied when a later one is refused."""
    return f"kind: file\nname: {name}\nspec:\n  path: /tmp/never/{name}\n---\n"


def apply(database_url: str, path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SETPOINT_")}
    env.update({"SETPOINT_DATABASE_URL": database_url, "PYTHONPATH": str(ROOT), "COLUMNS": "300"})
    return subprocess.run(
        [sys.executable, "-m", "setpoint.cli", "apply", "-f", str(path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


CASES = {
    "billion laughs": (LAUGHS, ["document 2", "line 12", "field 'spec.labels.b.0'", "aliases such as *a"]),
    "deep flow": (
        "kind: file\nname: {name}-deep\nspec:\n  path: /x\n  labels: " + "[" * 5000 + "]" * 5000 + "\n",
        ["document 2", "field 'spec.labels.0.0.0.0.…'", "nested more than 32 levels"],
    ),
    "deep block": (
        "kind: file\nname: {name}-deep\nspec:\n  labels:\n" + "".join("  " * (i + 2) + f"k{i}:\n" for i in range(400)),
        ["document 2", "field 'spec.labels.k0.k1.k2.k3.…'", "nested more than 32 levels"],
    ),
    "duplicate key": (
        "kind: file\nname: {name}-dup\nspec:\n  path: /tmp/never/a\n  mode: '0600'\n  path: /tmp/never/b\n",
        ["document 2", "line 11", "the key 'path' is given twice"],
    ),
    "lone surrogate": (
        'kind: file\nname: {name}-s\nspec: {{path: /tmp/never/s, content: "\\ud800"}}\n',
        ["file/{name}-s", "document 2", "field 'spec.content'", "lone surrogate"],
    ),
    "lone surrogate in a key": (
        'kind: workload\nname: {name}-k\nspec: {{command: "true", env: {{"\\udc80": x}}}}\n',
        ["workload/{name}-k", "document 2", "field 'spec.env."],
    ),
    "surrogate name": ('kind: file\nname: "\\udc80"\n', ["document 2", "field 'name'", "lone surrogate"]),
    "date in labels": (
        "kind: file\nname: {name}-d\nspec: {{path: /tmp/never/d, labels: {{since: 2024-01-01}}}}\n",
        ["file/{name}-d", "document 2", "field 'spec.labels'", "not date"],
    ),
    "same kind and name twice": (
        "kind: Files\nname: {name}\nspec:\n  path: /tmp/never/again\n",
        ["file/{name} is declared twice", "document 1", "document 2"],
    ),
    "interval true": (
        "kind: file\nname: {name}-i\nspec: {{path: /tmp/never/i, interval_seconds: true}}\n",
        ["document 2", "field 'spec.interval_seconds'", "valid integer"],
    ),
    "interval over a week": (
        "kind: file\nname: {name}-i\nspec: {{path: /tmp/never/i, interval_seconds: 2147483647}}\n",
        ["document 2", "field 'spec.interval_seconds'", "604800"],
    ),
    # Refused only by the database, after the first document was written in the same transaction.
    "path another document takes": (
        "kind: file\nname: {name}-twin\nspec:\n  path: /tmp/never/{name}\n",
        ["file/{name}-twin", "document 2", "field 'spec.path'", "a path no other File manages"],
    ),
    "path not normalized": (
        "kind: file\nname: {name}-dots\nspec:\n  path: /tmp/never/../{name}\n",
        ["file/{name}-dots", "document 2", "field 'spec.path'", "a normalized absolute path"],
    ),
    "env value": (
        "kind: workload\nname: {name}-w\nspec: {{command: 'true', env: {{DEBUG: yes}}}}\n",
        ["workload/{name}-w", "document 2", "field 'spec.env.DEBUG"],
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_a_hostile_manifest_exits_2_naming_document_and_field_and_applies_nothing(
    database_url: str, engine: Engine, unique: str, tmp_path: Path, case: str
) -> None:
    text, said = CASES[case]
    path = tmp_path / "manifest.yaml"
    path.write_text(good(unique) + text.format(name=unique), errors="surrogatepass")
    done = apply(database_url, path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    for words in said:
        assert words.format(name=unique) in done.stderr, done.stderr
    assert status(engine, unique) is None, "nothing applied"


def test_a_billion_laughs_is_refused_at_once() -> None:
    started = time.monotonic()
    with pytest.raises(InvalidDocument, match="aliases"):
        manifest.parse(LAUGHS.format(name="lol"), "laughs.yaml")
    assert time.monotonic() - started < 1.0


def test_a_manifest_over_a_mebibyte_or_not_utf8_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("kind: file\nname: big\nspec: {content: '" + "x" * 1_100_000 + "'}\n")
    with pytest.raises(InvalidDocument, match="larger than 1048576 bytes"):
        manifest.load(str(big))
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"kind: file\nname: \xff\xfe\n")
    with pytest.raises(InvalidDocument, match="not UTF-8"):
        manifest.load(str(binary))
