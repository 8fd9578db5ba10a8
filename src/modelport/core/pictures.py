"""Pictures off the event loop: the ``image`` codec's decoding, resizing and normalising
run on a pool of threads, one per core, so a large photo never holds up the requests of
other models, and several pictures are prepared at once and alongside the models.

Pillow decodes and resizes, and numpy normalises, with the GIL released, so threads
use every core here without the copies a process pool would make. The threads run at a
lower priority than the event loop (Linux ``nice`` +``PICTURE_NICENESS``, per thread):
they still take every core the loop leaves idle, but when a request of another model
wakes the loop, the kernel runs it first instead of slicing its time with the pictures.

A BYTES image input (a pipeline decodes the file itself) reads only the file's header,
which is cheap enough for the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from modelport.codecs.image import ImageFrame, encode_image_input
from modelport.core.runtime import available_cores
from modelport.spec import TensorSpec

PICTURE_NICENESS = 5


def _yield_to_the_loop() -> None:
    """A pool thread's start: lower its own priority (Linux threads have their own)."""
    with contextlib.suppress(AttributeError, OSError):  # not Linux: the default priority
        me = threading.get_native_id()
        niceness = os.getpriority(os.PRIO_PROCESS, me) + PICTURE_NICENESS
        os.setpriority(os.PRIO_PROCESS, me, min(niceness, 19))


class PicturePool:
    """Prepares ``image`` inputs on ``threads`` threads (0: one per core)."""

    def __init__(self, threads: int = 0) -> None:
        self.threads = threads or available_cores()
        self._pool = ThreadPoolExecutor(
            self.threads, thread_name_prefix="pictures", initializer=_yield_to_the_loop
        )

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
