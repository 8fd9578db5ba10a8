"""What the server writes under ``data_dir`` is its own: the folder 0700 and every file
without group or other bits by default; ``data_dir_mode = "group"`` lets a group read
(0750, files 0640). A real server is started and everything it made is stat'ed."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.timeout(60)


def modes_under(folder: Path) -> dict[str, int]:
    return {
        str(path.relative_to(folder)): stat.S_IMODE(path.lstat().st_mode)
        for path in folder.rglob("*")
        if not path.is_symlink() and not path.is_socket()
    }


@pytest.mark.parametrize(
    ("mode", "folder_mode", "forbidden"),
    [("private", 0o700, 0o077), ("group", 0o750, 0o027)],
)
def test_data_dir_and_its_files_are_closed_to_other_users(
    server_factory: Any, tmp_path: Path, mode: str, folder_mode: int, forbidden: int
) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)  # as an older version left it: closed at start
    data.chmod(0o755)
    server = server_factory(env={"MODELPORT_DATA_DIR": str(data), "MODELPORT_DATA_DIR_MODE": mode})
    # A request that reaches the task store, so its database is there.
    httpx.get(f"{server.url}/api/tasks", timeout=10)
    assert stat.S_IMODE(data.stat().st_mode) == folder_mode
    found = modes_under(data)
    assert any(name.startswith("tasks.db") for name in found), found
    opened = {name: oct(m) for name, m in found.items() if m & forbidden}
    assert not opened, opened
