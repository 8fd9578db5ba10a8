"""Safe unpacking of uploaded zips, and packing of outputs."""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path

import pytest

from modelport.errors import InvalidInput
from modelport.tasks.archives import ZipLimits, check_zip, extract_zip, zip_folder


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
