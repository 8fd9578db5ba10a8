"""Safe unpacking of uploaded zips, and packing of outputs."""

from __future__ import annotations

import io
import stat
import struct
import warnings
import zipfile
from pathlib import Path

import pytest

from modelport.errors import InvalidInput
from modelport.tasks.archives import ZipLimits, check_zip, extract_zip, verify_zip, zip_folder


def _zip(path: Path, members: dict[str, bytes], link: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        if link is not None:
            info = zipfile.ZipInfo(link)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, "/etc/passwd")
    return path


@pytest.mark.parametrize(
    ("members", "link", "words"),
    [
        ({"../evil.txt": b"x"}, None, "outside"),
        ({"a/../../evil.txt": b"x"}, None, "outside"),
        ({"/etc/evil": b"x"}, None, "absolute"),
        ({"C:\\evil": b"x"}, None, "absolute"),
        ({"ok.txt": b"x"}, "link", "symbolic link"),
        ({"bomb.bin": b"\0" * 5_000_000}, None, "ratio"),
    ],
)
def test_unsafe_zips_are_refused_before_anything_is_written(
    tmp_path: Path, members: dict[str, bytes], link: str | None, words: str
) -> None:
    path = _zip(tmp_path / "in.zip", members, link)
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(InvalidInput, match=words):
        extract_zip(path, dest, ZipLimits())
    assert list(dest.iterdir()) == []
    assert not (tmp_path / "evil.txt").exists()


def test_size_and_member_limits(tmp_path: Path) -> None:
    path = _zip(tmp_path / "in.zip", {f"f{i}": bytes(range(256)) * 8 for i in range(5)})
    with pytest.raises(InvalidInput, match="unpacks to 10240 bytes"):
        check_zip(path, ZipLimits(max_unpacked_bytes=10_000))
    with pytest.raises(InvalidInput, match="5 members"):
        check_zip(path, ZipLimits(max_members=4))
    with pytest.raises(InvalidInput, match="not a zip"):
        check_zip(tmp_path.joinpath("x").write_bytes(b"plain") and tmp_path / "x", ZipLimits())


def test_a_good_zip_unpacks_with_its_folders(tmp_path: Path) -> None:
    path = _zip(tmp_path / "in.zip", {"a/b/c.txt": b"deep", "top.txt": b"top", "d/": b""})
    dest = tmp_path / "out"
    assert extract_zip(path, dest, ZipLimits()) == 7
    assert (dest / "a/b/c.txt").read_bytes() == b"deep" and (dest / "d").is_dir()


def test_packing_leaves_out_links_and_skipped_files(tmp_path: Path) -> None:
    src = tmp_path / "output"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "r.txt").write_text("result")
    (src / ".progress").write_text("1")
    (src / "secret").symlink_to("/etc/passwd")
    (src / "linked_dir").symlink_to("/etc")
    dest = tmp_path / "out.zip"
    assert zip_folder(src, dest, skip=frozenset({".progress"})) == 1
    with zipfile.ZipFile(dest) as archive:
        assert archive.namelist() == ["sub/r.txt"]


def _zip_bytes(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytearray:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return bytearray(buffer.getvalue())


def _patched(local_at: int, central_at: int, value: int, form: str) -> bytes:
    """A one-member zip ('s.txt') with a field of its local and central headers set to
    ``value`` (offsets from each header's signature)."""
    data = _zip_bytes({"s.txt": b"hello " * 100})
    struct.pack_into(form, data, data.index(b"PK\x03\x04") + local_at, value)
    struct.pack_into(form, data, data.index(b"PK\x01\x02") + central_at, value)
    return bytes(data)


def _duplicate() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate it writes
        archive.writestr("a", b"x")
        archive.writestr("a", b"y")
    return buffer.getvalue()


def _with_link() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        info = zipfile.ZipInfo("link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, "/etc/passwd")
    return buffer.getvalue()


BAD_ZIPS = {
    # name: (the zip, words the refusal says, whether the headers alone tell)
    "encrypted": (_patched(6, 8, 0x1, "<H"), "'s.txt' is encrypted", True),
    "unknown method": (_patched(8, 10, 99, "<H"), "'s.txt' is compressed with method 99", True),
    "CRC lies": (_patched(14, 16, 1234, "<I"), "'s.txt' cannot be unpacked: Bad CRC", False),
    "size lies low": (_patched(22, 24, 10, "<I"), "'s.txt' cannot be unpacked", False),
    "size lies high": (_patched(22, 24, 10_000, "<I"), "'s.txt' holds 600 bytes", False),
    "absolute": (bytes(_zip_bytes({"/etc/x": b"x"})), "'/etc/x' has an absolute path", True),
    "climbs out": (bytes(_zip_bytes({"a/../../x": b"x"})), "'a/../../x' points outside", True),
    "dot": (bytes(_zip_bytes({".": b"x"})), "'.' has no name", True),
    "long segment": (bytes(_zip_bytes({"a" * 300: b"x"})), "name over 255 bytes", True),
    "long name": (bytes(_zip_bytes({"abc/" * 1100 + "x": b"x"})), "over 4096 bytes", True),
    "deep": (bytes(_zip_bytes({"a/" * 2000 + "x": b"x"})), "2000 folders deep", True),
    "file then folder": (
        bytes(_zip_bytes({"a": b"x", "a/b": b"y"})),
        "'a/b' is inside 'a', which is a file",
        True,
    ),
    "folder then file": (bytes(_zip_bytes({"a/b": b"y", "a": b"x"})), "'a' is also a folder", True),
    "folder entry and file": (bytes(_zip_bytes({"a": b"x", "a/": b""})), "'a/' comes twice", True),
    "duplicate": (_duplicate(), "'a' comes twice", True),
    "symlink": (_with_link(), "'link' is a symbolic link", True),
    "declared size": (
        bytes(_zip_bytes({"big": bytes(range(256)) * 80})),
        "unpacks to 20480 bytes",
        True,
    ),
}


@pytest.mark.parametrize("kind", list(BAD_ZIPS))
def test_every_zip_the_extractor_refuses_is_refused_before_naming_the_member(
    tmp_path: Path, kind: str
) -> None:
    data, words, by_headers = BAD_ZIPS[kind]
    path = tmp_path / "in.zip"
    path.write_bytes(data)
    limits = ZipLimits(max_unpacked_bytes=16_000)
    with pytest.raises(InvalidInput, match=words):
        verify_zip(path, limits)  # at submit
    if by_headers:
        with pytest.raises(InvalidInput, match=words):
            check_zip(path, limits)
    dest = tmp_path / "out"
    with pytest.raises(InvalidInput):
        extract_zip(path, dest, limits)
    assert str(tmp_path) not in _refusal(path, limits)


def _refusal(path: Path, limits: ZipLimits) -> str:
    try:
        verify_zip(path, limits)
    except InvalidInput as exc:
        return exc.message
    raise AssertionError("accepted")


def test_a_good_zip_passes_the_check_at_submit(tmp_path: Path) -> None:
    path = _zip(tmp_path / "in.zip", {"a/b/c.txt": b"deep", "a/": b"", "top.txt": b"top"})
    verify_zip(path, ZipLimits())
    for method in (zipfile.ZIP_STORED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA):
        other = tmp_path / f"{method}.zip"
        other.write_bytes(bytes(_zip_bytes({"x/y.txt": b"hello " * 100}, method)))
        verify_zip(other, ZipLimits())
