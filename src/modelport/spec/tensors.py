"""Inputs and outputs in model.yaml: name, datatype, shape, and an optional codec
(``image``, ``detections``, ``classification``) with its options."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from modelport.spec.base import Strict as _Strict
from modelport.tensors import DATATYPES

CODECS = ("image", "detections", "classification")


class ImageSpec(_Strict):
    """How the ``image`` codec turns an uploaded PNG or JPEG into this input (``codec:
    image``). On a BYTES input the file is passed as it is; on a numeric one it is
    decoded, resized to ``height`` x ``width`` (default: the fixed dimensions of
    ``shape``), put in ``channels`` order and ``layout``, then each value is
    ``(pixel * scale - mean) / std``::

        inputs:
          - name: images
            datatype: FP32
            shape: [3, 224, 224]
            codec: image
            image: {channels: RGB, layout: CHW, scale: 0.00392157,
                    mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}
    """

    height: int | None = Field(default=None, ge=1)
    width: int | None = Field(default=None, ge=1)
    channels: Literal["RGB", "BGR", "GRAY"] = "RGB"
    layout: Literal["HWC", "CHW"] = "HWC"
    scale: float = 1.0
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> ImageSpec:
        if (self.height is None) != (self.width is None):
            raise ValueError("give both 'height' and 'width', or neither")
        count = 1 if self.channels == "GRAY" else 3
        for field_name in ("mean", "std"):
            values = getattr(self, field_name)
            if len(values) not in (0, 1, count):
                raise ValueError(
                    f"'{field_name}' has {len(values)} values; give 1, or one per channel "
                    f"({count} for {self.channels})"
                )
        if any(v == 0 for v in self.std):
            raise ValueError("'std' values divide the pixels, so none may be 0")
        return self

    @property
    def channel_count(self) -> int:
        return 1 if self.channels == "GRAY" else 3


class DetectionsSpec(_Strict):
    """How the ``detections`` codec reads this output: rows of ``x1, y1, x2, y2, score,
    class`` (more columns are ignored; a row whose class is negative is padding).
    ``coordinates`` says what the numbers are relative to: ``image`` (the original
    picture's pixels), ``input`` (the pixels of the resized model input, mapped back)
    or ``normalized`` (0..1 of the picture). Rows under ``score_threshold`` are dropped
    unless a request asks for another threshold."""

    coordinates: Literal["image", "input", "normalized"] = "image"
    score_threshold: float = Field(default=0.0, ge=0.0, le=1.0)


class ClassificationSpec(_Strict):
    """How the ``classification`` codec reads this output: one score per label; the
    answer is the ``top_k`` labels with the highest scores."""

    top_k: int = Field(default=5, ge=1)


class TensorSpec(_Strict):
    """One named input or output. ``shape`` excludes the batch dimension; -1 is variable.
    ``reshape`` is the shape the model itself takes or gives, where it differs (Triton's
    ``reshape``); an ``optional`` input may be left out of a request; ``labels`` name an
    output's classes (a list, or a file in the model's folder, one label a line), for
    Triton's classification extension."""

    name: str = Field(min_length=1)
    datatype: str
    shape: tuple[int, ...] = ()
    reshape: tuple[int, ...] | None = None
    optional: bool = False
    labels: tuple[str, ...] | str = ()
    codec: str | None = None
    description: str = ""
    image: ImageSpec | None = None
    detections: DetectionsSpec | None = None
    classification: ClassificationSpec | None = None

    @field_validator("datatype")
    @classmethod
    def _known_datatype(cls, value: str) -> str:
        upper = value.upper()
        if upper not in DATATYPES:
            raise ValueError(f"expected one of {', '.join(DATATYPES)}, got {value!r}")
        return upper

    @field_validator("shape", "reshape")
    @classmethod
    def _valid_dims(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if value is not None and any(d < -1 or d == 0 for d in value):
            raise ValueError("dimensions are positive integers, or -1 for a variable one")
        return value

    @model_validator(mode="after")
    def _codec_fits(self) -> TensorSpec:
        if self.codec is not None and self.codec not in CODECS:
            raise ValueError(f"unknown codec {self.codec!r}; expected one of {', '.join(CODECS)}")
        for block in ("image", "detections", "classification"):
            if getattr(self, block) is not None and self.codec != block:
                raise ValueError(f"an '{block}:' block needs 'codec: {block}'")
        numeric = self.datatype not in ("BYTES", "BOOL")
        if self.codec == "image" and self.datatype != "BYTES":
            self._image_shape_fits()
        elif self.codec == "detections" and (
            not numeric or len(self.shape) != 2 or 0 < self.shape[1] < 6
        ):
            raise ValueError(
                "codec 'detections' needs a numeric tensor of shape [-1, 6] (or more "
                f"columns): one row of x1, y1, x2, y2, score, class a box; got {self.datatype} "
                f"{list(self.shape)}"
            )
        elif self.codec == "classification" and (not numeric or len(self.shape) != 1):
            raise ValueError(
                "codec 'classification' needs a numeric tensor of shape [classes] (one "
                f"score per label); got {self.datatype} {list(self.shape)}"
            )
        return self

    def _image_shape_fits(self) -> None:
        options = self.image or ImageSpec()
        if len(self.shape) != 3:
            raise ValueError(
                f"codec 'image' on a {self.datatype} input needs a shape of 3 dimensions "
                f"({options.layout}, batch excluded), got {list(self.shape)}; or make it "
                "BYTES [1] to pass the file as it is"
            )
        if options.layout == "HWC":
            height, width, channels = self.shape
        else:
            channels, height, width = self.shape
        if channels not in (-1, options.channel_count):
            raise ValueError(
                f"shape {list(self.shape)} ({options.layout}) has {channels} channels, but "
                f"'image.channels' is {options.channels} ({options.channel_count})"
            )
        for dim, want, label in (
            (height, options.height, "height"),
            (width, options.width, "width"),
        ):
            if want is not None and dim not in (-1, want):
                raise ValueError(f"'image.{label}' {want} differs from the shape's {dim}")
        if options.height is None and -1 in (height, width):
            raise ValueError(
                f"shape {list(self.shape)} leaves the image size open; give "
                "'image: {height: H, width: W}' to say what to resize to"
            )
