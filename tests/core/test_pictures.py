"""The picture pool: ``image`` inputs prepared off the event loop, on threads that yield
to it (a lower priority than the loop's own thread)."""

from __future__ import annotations

import io
import os
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from modelport.codecs.image import encode_image_input
from modelport.core.pictures import PICTURE_NICENESS, PicturePool
from modelport.spec import TensorSpec


def _jpeg(height: int, width: int) -> bytes:
    rng = np.random.default_rng(18)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, format="JPEG", quality=90)
    return out.getvalue()


SPEC = TensorSpec.model_validate(
    {"name": "images", "datatype": "FP32", "shape": [16, 16, 3], "codec": "image"}
)


async def test_a_picture_prepared_on_the_pool_is_the_codecs_own() -> None:
    pool = PicturePool(threads=2)
    try:
        data = _jpeg(48, 64)
        array, frame = await pool.encode(data, SPEC)
        expected, expected_frame = encode_image_input(data, SPEC)
        np.testing.assert_array_equal(array, expected)
        assert frame == expected_frame
        assert pool.threads == 2
    finally:
        pool.close()


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread priorities are Linux's")
async def test_the_pool_threads_yield_to_the_event_loop() -> None:
    pool = PicturePool(threads=2)
    try:
        await pool.encode(_jpeg(32, 32), SPEC)
        workers = [t for t in threading.enumerate() if t.name.startswith("pictures")]
        assert workers, "the pool started no thread"
        loop_niceness = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        for worker in workers:
            assert worker.native_id is not None
            niceness = os.getpriority(os.PRIO_PROCESS, worker.native_id)
            assert niceness == min(loop_niceness + PICTURE_NICENESS, 19), worker.name
    finally:
        pool.close()
