"""Multipart uploads saved to disk under a size limit counted as the bytes arrive."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect

from modelport.errors import InvalidInput, TooLarge
from modelport.tasks.service import Upload

MAX_FILES = 1000


@dataclass(frozen=True, slots=True)
class Form:
    fields: dict[str, str]
    files: dict[str, list[Upload]]

    def all_files(self) -> list[Upload]:
        return [u for uploads in self.files.values() for u in uploads]


def _too_large(limit: int) -> TooLarge:
    return TooLarge(
        f"the upload is over the limit of {limit} bytes (task_max_upload_bytes); send "
        "fewer or smaller files, or the operator can raise the limit"
    )


@asynccontextmanager
async def read_form(request: Request, limit: int) -> AsyncIterator[Form]:
    """The request's form, its files in a temporary folder removed afterwards; TooLarge as
    soon as more than ``limit`` bytes came (or were announced)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    seen = 0

    async def receive() -> Any:
        nonlocal seen
        message = await request.receive()
        seen += len(message.get("body", b""))
        if seen > limit:
            raise _too_large(limit)
        return message

    counted = Request(request.scope, receive)
    try:
        form = await counted.form(max_files=MAX_FILES, max_fields=MAX_FILES)
    except (TooLarge, ClientDisconnect):
        raise
    except Exception as exc:  # the multipart parser's errors: a malformed body
        raise InvalidInput(f"cannot read the form: {exc}") from None
    with TemporaryDirectory(prefix="modelport-upload-") as scratch:
        fields: dict[str, str] = {}
        files: dict[str, list[Upload]] = {}
        try:
            for i, (key, value) in enumerate(form.multi_items()):
                if isinstance(value, UploadFile):
                    path = Path(scratch) / f"{i}"
                    with path.open("wb") as out:
                        shutil.copyfileobj(value.file, out)
                    files.setdefault(key, []).append(Upload(value.filename or f"file{i}", path))
                else:
                    fields[key] = value
        finally:
            await form.close()
        yield Form(fields, files)
