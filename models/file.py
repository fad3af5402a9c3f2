"""The built-in File kind: a file on the worker's host with the given content and mode."""

from __future__ import annotations

from typing import ClassVar

from sqlalchemy import UniqueConstraint, text
from sqlmodel import Field

from models.base import Resource, check, common_constraints


class File(Resource, table=True):
    __tablename__: ClassVar[str] = "files"  # type: ignore[misc]
    __table_args__ = (
        *common_constraints("files"),
        check("path LIKE '/%'", "path_absolute", "an absolute path"),
        check(
            r"path !~ '(//|/\.\.?(/|$)|/$)'",
            "path_normalized",
            "a normalized absolute path: no '//', no '.' or '..' part, no trailing '/'",
        ),
        # Within what a unique index holds (2,704 bytes); Linux's PATH_MAX is 4,096, real paths far shorter.
        check("octet_length(path) <= 2048", "path_length", "an absolute path of at most 2048 bytes"),
        # One File per path: two would rewrite it in turn forever, each reporting Ready.
        UniqueConstraint("path", name="uq_files_path", info={"expected": "a path no other File manages"}),
        check("mode ~ '^0?[0-7]{3}$'", "mode_octal", "octal permission bits such as '0644'"),
    )
    kind: ClassVar[str] = "File"
    templated: ClassVar[tuple[str, ...]] = ("content",)

    path: str = Field(
        max_length=4096,
        nullable=False,
        schema_extra={"pattern": "^/"},
        description="Absolute, normalized path of the file on the worker's host; one File per path.",
    )

    content: str = Field(
        default="", description="What the file holds.", sa_column_kwargs={"server_default": text("''")}
    )
    mode: str = Field(
        default="0644",
        max_length=4,
        schema_extra={"pattern": "^0?[0-7]{3}$"},
        description="Permission bits in octal, as chmod takes them: '0644', '600'.",
        sa_column_kwargs={"server_default": text("'0644'")},
    )
