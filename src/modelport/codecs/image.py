"""The ``image`` codec: a PNG or JPEG file in, the tensor a model's input declares out.

A BYTES input takes the file as it is (the model decodes it, as a python pipeline
does); a numeric input gets the picture decoded, resized, put in channel order and
layout, and normalised as its ``image:`` block in model.yaml says
(:class:`~modelport.spec.ImageSpec`). Either way the picture's own size is kept in an
:class:`ImageFrame`, so boxes a model finds can be mapped back to the original pixels.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from modelport.errors import InvalidInput
from modelport.spec import ImageSpec, TensorSpec
from modelport.tensors import numpy_dtype

# A decompression bomb is refused before its pixels are allocated.
MAX_PIXELS = 64_000_000
# A JPEG that is resized anyway is decoded at a reduced scale (1/2, 1/4, 1/8: libjpeg's
# DCT scaling) down to this many times the target size at least, then resized with the
# filter as usual: Pillow's thumbnail() default, whose results it calls
# indistinguishable from a full decode, for about half the decoding time of a photo.
REDUCING_GAP = 2


@dataclass(frozen=True, slots=True)
class ImageFrame:
    """The uploaded picture's size and the size the model saw (equal when not resized)."""

    width: int
    height: int
    input_width: int
    input_height: int


def decode_image(
    data: bytes, what: str = "image", *, at_least: tuple[int, int] | None = None
) -> Image.Image:
    """Decode an image file (PNG, JPEG, anything Pillow reads) to RGB, upright as its
    EXIF orientation says, with transparent pixels on white. ``what`` names the input in
    errors. ``at_least`` (height, width): the picture is about to be resized to this, so
    a JPEG may be decoded at a reduced scale no smaller than ``REDUCING_GAP`` times it
    (the returned picture is then smaller than the file's)."""
    return _decode(data, what, at_least)[0]


def _decode(
    data: bytes, what: str, at_least: tuple[int, int] | None
) -> tuple[Image.Image, tuple[int, int]]:
    """The decoded picture and the file's own (width, height), upright."""
    try:
        with Image.open(io.BytesIO(data)) as opened:
            if opened.width * opened.height > MAX_PIXELS:
                raise InvalidInput(
                    f"input '{what}': {opened.width}x{opened.height} is over the limit of "
                    f"{MAX_PIXELS} pixels"
                )
            turned = opened.getexif().get(0x0112, 1) in (5, 6, 7, 8)
            size = (opened.height, opened.width) if turned else opened.size
            if at_least is not None and opened.format == "JPEG":
                height, width = at_least
                wanted = (height, width) if turned else (width, height)  # as stored
                opened.draft(opened.mode, (wanted[0] * REDUCING_GAP, wanted[1] * REDUCING_GAP))
            image = ImageOps.exif_transpose(opened)
            image.load()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        why = "" if isinstance(exc, UnidentifiedImageError) else f": {exc}"
        raise InvalidInput(
            f"input '{what}': {len(data)} bytes that are not an image "
            f"(send a PNG or JPEG file){why}"
        ) from None
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        paper = Image.new("RGBA", image.size, "white")
        image = Image.alpha_composite(paper, image.convert("RGBA"))
    return image.convert("RGB"), size


def image_size(data: bytes, what: str = "image") -> tuple[int, int]:
    """(width, height) of an image file as it will be seen upright, reading only its header."""
    try:
        with Image.open(io.BytesIO(data)) as opened:
            width, height = opened.size
            orientation = opened.getexif().get(0x0112, 1)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        why = "" if isinstance(exc, UnidentifiedImageError) else f": {exc}"
        raise InvalidInput(
            f"input '{what}': {len(data)} bytes that are not an image "
            f"(send a PNG or JPEG file){why}"
        ) from None
    # EXIF orientations 5..8 turn the picture by 90 degrees.
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def target_size(spec: TensorSpec) -> tuple[int, int] | None:
    """(height, width) a numeric image input is resized to, or None to keep the size."""
    options = spec.image or ImageSpec()
    if options.height is not None and options.width is not None:
        return options.height, options.width
    if len(spec.shape) != 3:
        return None
    h, w = spec.shape[:2] if options.layout == "HWC" else spec.shape[1:]
    return (h, w) if h > 0 and w > 0 else None


def to_array(
    image: Image.Image, options: ImageSpec, size: tuple[int, int] | None, dtype: np.dtype
) -> np.ndarray:
    """An RGB picture as an array: resized to ``size`` (height, width), in the options'
    channel order and layout, normalised, cast to ``dtype``."""
    if size is not None and (image.height, image.width) != size:
        image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    if options.channels == "GRAY":
        pixels = np.asarray(image.convert("L"))[:, :, np.newaxis]
    else:
        pixels = np.asarray(image)
        if options.channels == "BGR":
            pixels = pixels[:, :, ::-1]
    normalise = options.scale != 1.0 or options.mean or options.std
    if normalise or dtype.kind == "f":
        values = pixels.astype(np.float32) * np.float32(options.scale)
        if options.mean:
            values -= np.asarray(options.mean, np.float32)
        if options.std:
            values /= np.asarray(options.std, np.float32)
    else:
        values = pixels
    if options.layout == "CHW":
        values = values.transpose(2, 0, 1)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = np.clip(np.rint(values), info.min, info.max)
    return np.ascontiguousarray(values, dtype=dtype)


def encode_image_input(data: bytes, spec: TensorSpec) -> tuple[np.ndarray, ImageFrame]:
    """One uploaded file as the value of an ``image`` input (batch dimension excluded),
    and the frame that maps the model's coordinates back to the file's pixels."""
    if spec.datatype == "BYTES":
        width, height = image_size(data, spec.name)
        value = np.empty(spec.shape or (1,), dtype=np.object_)
        if value.size != 1:
            raise InvalidInput(
                f"input '{spec.name}' is BYTES {list(spec.shape)}; an image input holds one "
                "file, so its shape is [1]"
            )
        value.flat[0] = data
        return value, ImageFrame(width, height, width, height)
    size = target_size(spec)
    image, (width, height) = _decode(data, spec.name, size)
    array = to_array(image, spec.image or ImageSpec(), size, numpy_dtype(spec.datatype))
    in_h, in_w = size if size is not None else (image.height, image.width)
    return array, ImageFrame(width, height, in_w, in_h)
