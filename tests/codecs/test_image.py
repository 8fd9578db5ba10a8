"""The image codec: decoding, resizing, channel order, layout and normalisation as
model.yaml declares them, and the errors bad files and bad declarations give."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from modelport.codecs.image import decode_image, encode_image_input, image_size
from modelport.errors import InvalidInput, SpecError
from modelport.spec import TensorSpec, parse_spec


def _png(array: np.ndarray, mode: str = "RGB", **save: object) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array, mode).save(out, format=str(save.pop("format", "PNG")), **save)
    return out.getvalue()


def _picture(height: int = 4, width: int = 6) -> np.ndarray:
    """A picture whose every pixel is unique: R = row, G = column, B = 200."""
    rows, cols = np.mgrid[0:height, 0:width]
    return np.stack([rows * 10, cols * 10, np.full_like(rows, 200)], axis=2).astype(np.uint8)


def _spec(**fields: object) -> TensorSpec:
    return TensorSpec.model_validate({"name": "images", "codec": "image", **fields})


def test_hwc_uint8_keeps_the_pixels() -> None:
    picture = _picture()
    array, frame = encode_image_input(_png(picture), _spec(datatype="UINT8", shape=[4, 6, 3]))
    np.testing.assert_array_equal(array, picture)
    assert (frame.width, frame.height, frame.input_width, frame.input_height) == (6, 4, 6, 4)


def test_chw_bgr_normalised_floats() -> None:
    picture = _picture()
    spec = _spec(
        datatype="FP32",
        shape=[3, 4, 6],
        image={"channels": "BGR", "layout": "CHW", "scale": 1 / 255,
               "mean": [0.5, 0.25, 0.0], "std": [0.5]},
    )  # fmt: skip
    array, _ = encode_image_input(_png(picture), spec)
    assert array.dtype == np.float32 and array.shape == (3, 4, 6)
    # BGR: channel 0 is blue, 2 is red; each (x / 255 - mean) / std.
    np.testing.assert_allclose(array[0], (200 / 255 - 0.5) / 0.5, rtol=1e-6)
    np.testing.assert_allclose(array[1], (picture[:, :, 1] / 255 - 0.25) / 0.5, rtol=1e-5)
    np.testing.assert_allclose(array[2], (picture[:, :, 0] / 255) / 0.5, rtol=1e-5)


def test_resizes_to_the_declared_size_and_keeps_the_frame() -> None:
    picture = np.full((40, 60, 3), 120, np.uint8)
    spec = _spec(datatype="FP32", shape=[-1, -1, 1],
                 image={"height": 10, "width": 20, "channels": "GRAY"})  # fmt: skip
    array, frame = encode_image_input(_png(picture, format="JPEG", quality=95), spec)
    assert array.shape == (10, 20, 1)
    np.testing.assert_allclose(array, 120, atol=2)
    assert (frame.width, frame.height, frame.input_width, frame.input_height) == (60, 40, 20, 10)


def test_a_large_jpeg_resized_anyway_is_decoded_at_a_reduced_scale() -> None:
    # A smooth 480x320 photo-like gradient; the model reads 40x60, so the JPEG decoder
    # may scale by 1/4 (120x80, twice the target), and the answer stays the full decode's.
    rows, cols = np.mgrid[0:320, 0:480]
    picture = np.stack([rows * 255 // 320, cols * 255 // 480, (rows + cols) % 256], axis=2)
    data = _png(picture.astype(np.uint8), format="JPEG", quality=95)
    spec = _spec(datatype="FP32", shape=[40, 60, 3])
    assert decode_image(data, at_least=(40, 60)).size == (120, 80)
    array, frame = encode_image_input(data, spec)
    full = np.asarray(decode_image(data).resize((60, 40), Image.Resampling.BILINEAR))
    assert (frame.width, frame.height, frame.input_width, frame.input_height) == (480, 320, 60, 40)
    assert np.abs(array - full).mean() < 0.5 and np.abs(array - full).max() < 8


def test_the_reduced_scale_follows_the_exif_rotation() -> None:
    image = Image.fromarray(np.full((320, 480, 3), 90, np.uint8))
    exif = image.getexif()
    exif[0x0112] = 6  # stored 480 wide, seen 320 wide
    out = io.BytesIO()
    image.save(out, format="JPEG", exif=exif)
    decoded = decode_image(out.getvalue(), at_least=(60, 40))  # seen: 60 high, 40 wide
    assert decoded.size == (80, 120)
    array, frame = encode_image_input(out.getvalue(), _spec(datatype="UINT8", shape=[60, 40, 3]))
    assert array.shape == (60, 40, 3) and (frame.width, frame.height) == (320, 480)


def test_fixed_shape_is_the_resize_target() -> None:
    array, frame = encode_image_input(
        _png(_picture(8, 8)), _spec(datatype="UINT8", shape=[3, 2, 4], image={"layout": "CHW"})
    )
    assert array.shape == (3, 2, 4)
    assert (frame.input_width, frame.input_height) == (4, 2)


def test_bytes_input_takes_the_file_as_it_is() -> None:
    data = _png(_picture())
    array, frame = encode_image_input(data, _spec(datatype="BYTES", shape=[1]))
    assert array.shape == (1,) and array[0] == data
    assert (frame.width, frame.height) == (6, 4)


def test_transparent_pixels_become_white_paper() -> None:
    rgba = np.zeros((2, 2, 4), np.uint8)  # fully transparent black
    image = decode_image(_png(rgba, "RGBA"))
    assert image.mode == "RGB"
    assert np.asarray(image).min() == 255


def test_exif_rotation_is_applied() -> None:
    image = Image.fromarray(_picture(4, 6))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    out = io.BytesIO()
    image.save(out, format="JPEG", exif=exif)
    assert decode_image(out.getvalue()).size == (4, 6)
    assert image_size(out.getvalue()) == (4, 6)


def test_not_an_image_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match=r"input 'images': 9 bytes that are not an image"):
        encode_image_input(b"not a png", _spec(datatype="UINT8", shape=[4, 6, 3]))


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        ("{name: x, datatype: FP32, shape: [3, 4, 4], codec: image, image: {layout: HWC}}",
         "has 4 channels"),
        ("{name: x, datatype: FP32, shape: [224, 224], codec: image}", "3 dimensions"),
        ("{name: x, datatype: FP32, shape: [-1, -1, 3], codec: image}", "leaves the image size"),
        ("{name: x, datatype: FP32, shape: [4, 4, 3], codec: image, image: {height: 5, "
         "width: 4}}", "'image.height' 5 differs"),
        ("{name: x, datatype: BYTES, shape: [1], codec: image, image: {height: 5}}",
         "give both 'height' and 'width'"),
        ("{name: x, datatype: BYTES, shape: [1], codec: image, image: {mean: [1, 2]}}",
         "'mean' has 2 values"),
        ("{name: x, datatype: BYTES, shape: [1], codec: image, image: {std: [0]}}",
         "none may be 0"),
        ("{name: x, datatype: BYTES, shape: [1], image: {channels: RGB}}",
         "needs 'codec: image'"),
        ("{name: x, datatype: BYTES, shape: [1], codec: picture}", "unknown codec 'picture'"),
        ("{name: x, datatype: BYTES, shape: [1], codec: image, image: {layout: NHWC}}",
         "image.layout"),
    ],
)  # fmt: skip
def test_bad_declarations_name_the_field(tensor: str, message: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec("m", f"runtime: python\ninputs: [{tensor}]\n", "models/m/model.yaml")
    assert info.value.message.startswith("models/m/model.yaml: field 'inputs.0")
    assert message in info.value.message
