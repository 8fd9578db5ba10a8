"""Multipart uploads saved to disk under a size limit counted as the bytes arrive.

Files are copied into the server's upload spool (``data_dir/spool``, see
:mod:`modelport.tasks.spool`) off the event loop: a 1 GiB upload must not stall the
online requests the same loop answers.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect

from modelport.errors import InvalidInput, TooLarge
from modelport.numbers import declared_over
from modelport.tasks.service import Upload
from modelport.tasks.spool import Spool

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
async def read_form(request: Request, *, limit: int, spool: Spool) -> AsyncIterator[Form]:
    """The request's form, its files in a folder of ``spool`` removed afterwards; TooLarge
    as soon as more than ``limit`` bytes came (or were announced)."""
    declared = request.headers.get("content-length", "")
    if declared_over(declared, limit):
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
    with spool.scratch() as scratch:
        fields: dict[str, str] = {}
        files: dict[str, list[Upload]] = {}
        try:
            for i, (key, value) in enumerate(form.multi_items()):
                if isinstance(value, UploadFile):
                    path = scratch / f"{i}"
                    await asyncio.to_thread(_save, value, path)
                    files.setdefault(key, []).append(Upload(value.filename or f"file{i}", path))
                else:
                    fields[key] = value
        finally:
            await form.close()
        yield Form(fields, files)


def _save(upload: UploadFile, path: Path) -> None:
    with path.open("wb") as out:
        shutil.copyfileobj(upload.file, out)
