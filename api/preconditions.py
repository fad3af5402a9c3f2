"""Optimistic concurrency over HTTP: a resource's ETag is its generation; If-Match names those a write expects."""

from __future__ import annotations

import re

from fastapi import Response

ENTITY_TAG = re.compile(r'\s*(?:W/)?"?([^",\s]*)"?\s*')


def tag(response: Response, document: dict[str, object]) -> dict[str, object]:
    """Set the ETag of `document` (its generation, quoted) on the response, and hand the document on."""
    status = document["status"]
    assert isinstance(status, dict)
    response.headers["ETag"] = f'"{status["generation"]}"'
    return document


def generations(if_match: str | None) -> frozenset[int] | None:
    """The generations an If-Match header accepts; None when any will do (no header, or `*`).

    Each entity tag may be quoted or not, weak (`W/"3"`) or strong: the generation is what is compared.
    A tag that is no generation matches nothing, so the write is refused rather than made blind.
    """
    if if_match is None or if_match.strip() == "*":
        return None
    accepted = set()
    for part in if_match.split(","):
        found = ENTITY_TAG.fullmatch(part)
        if found and found.group(1).isdigit() and len(found.group(1)) < 19:
            accepted.add(int(found.group(1)))
    return frozenset(accepted)
