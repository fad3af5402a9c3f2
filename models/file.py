"""The built-in File kind: a file on the worker's host with the given content and mode."""

from __future__ import annotations

from typing import ClassVar

from sqlalchemy import CheckConstraint, text
from sqlmodel import Field

from models.base import Resource, common_constraints


class File(Resource, table=True):
    __tablename__: ClassVar[str] = "files"  # type: ignore[misc]
    __table_args__ = (
        *common_constraints("files"),
        CheckConstraint("path LIKE '/%'", name="path_absolute"),
        CheckConstraint("mode ~ '^0?[0-7]{3}$'", name="mode_octal"),
    )
    kind: ClassVar[str] = "File"

    path: str = Field(max_length=4096, nullable=False)
    """Absolute path of the file on the worker's host."""

    content: str = Field(default="", sa_column_kwargs={"server_default": text("''")})
    mode: str = Field(default="0644", max_length=4, sa_column_kwargs={"server_default": text("'0644'")})
    """Permission bits in octal, as chmod takes them: '0644', '600'."""
