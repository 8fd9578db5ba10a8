"""Converting an upload between volume types needs SimpleITK (the ``medical`` extra).
The dev extra installs it, so the server tests convert for real; this in-process test
hides it to check what a server without it answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelport.errors import InvalidInput
from modelport.server.build import build_ablinfer_sessions, build_task_service
from modelport.settings import Settings
from modelport.tasks import ablinfer_sessions
from support.ablinfer_fixtures import nifti_gz, nrrd


def _sessions(tmp_path: Path) -> ablinfer_sessions.AblinferSessions:
    settings = Settings(
        repository=str(tmp_path / "repository"),
        data_dir=str(tmp_path / "data"),
        task_slots=0,
    )
    return build_ablinfer_sessions(settings, build_task_service(settings))


def test_without_simpleitk_another_volume_type_is_refused_naming_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sessions = _sessions(tmp_path)
    assert sessions._filetype(nrrd()[:1024], ".nii.gz") == ".nrrd"  # SimpleITK is here
    monkeypatch.setattr(ablinfer_sessions, "simpleitk_installed", lambda: False)
    with pytest.raises(InvalidInput) as refused:
        sessions._filetype(nrrd()[:1024], ".nii.gz")
    first, second = refused.value.message.splitlines()
    assert first == "Expected filetype .nii.gz"
    assert "needs SimpleITK" in second and "modelport[medical]" in second
    # The type the spec asks for needs no conversion, with or without SimpleITK.
    assert sessions._filetype(nifti_gz()[:1024], ".nii.gz") == ".nii.gz"
