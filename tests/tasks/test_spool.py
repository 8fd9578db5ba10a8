"""The upload spool: a folder per server process, leftovers of killed ones removed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import modelport
from modelport.tasks.spool import Spool


def _spool_in_child(root: Path) -> subprocess.Popen[str]:
    """A process that claims a spool folder under ``root``, says so, and waits."""
    code = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from modelport.tasks.spool import Spool
        spool = Spool(Path({str(root)!r}))
        (spool.folder / "part").write_bytes(b"x" * 1000)
        print(spool.folder.name, flush=True)
        sys.stdin.read()
    """)
    source = Path(modelport.__file__).parent.parent  # this modelport, whichever it is
    return subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(source)},
    )


def test_a_killed_process_s_folder_goes_and_a_live_one_stays(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    with _spool_in_child(root) as killed, _spool_in_child(root) as live:
        assert killed.stdout is not None and live.stdout is not None
        killed_folder = killed.stdout.readline().strip()
        live_folder = live.stdout.readline().strip()
        killed.kill()  # SIGKILL: no clean-up runs
        killed.wait(10)
        assert (root / killed_folder / "part").exists()
        (root / "left-by-an-old-version").mkdir()

        spool = Spool(root)
        try:
            names = sorted(p.name for p in root.iterdir())
            assert names == sorted([live_folder, spool.folder.name])
            with spool.scratch() as scratch:
                assert scratch.parent == spool.folder and scratch.is_dir()
            assert not scratch.exists()
        finally:
            spool.close()
            live.communicate("", timeout=10)
    assert not spool.folder.exists()
