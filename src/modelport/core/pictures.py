"""Pictures off the event loop: the ``image`` codec's decoding, resizing and normalising
run on a pool of threads, one per core, so a large photo never holds up the requests of
other models, and several pictures are prepared at once and alongside the models.

Pillow decodes and resizes, and numpy normalises, with the GIL released, so threads
use every core here without the copies a process pool would make. A BYTES image input
(a pipeline decodes the file itself) reads only the file's header, which is cheap
enough for the loop.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from modelport.codecs.image import ImageFrame, encode_image_input
from modelport.spec import TensorSpec


def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


class PicturePool:
    """Prepares ``image`` inputs on ``threads`` threads (0: one per core)."""

    def __init__(self, threads: int = 0) -> None:
        self.threads = threads or cores()
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="pictures")

    async def encode(self, data: bytes, spec: TensorSpec) -> tuple[np.ndarray, ImageFrame]:
        """One file as the value of an image input, prepared on a pool thread (see
        :func:`~modelport.codecs.image.encode_image_input`)."""
        if spec.datatype == "BYTES":
            return encode_image_input(data, spec)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, encode_image_input, data, spec)

    def close(self) -> None:
        """Let the threads finish what they run, then stop them."""
        self._pool.shutdown(wait=True)
