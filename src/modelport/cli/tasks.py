"""``modelport tasks``: submit files to a container model, follow, fetch, cancel, list.

modelport tasks submit segmenter scans/ --wait --output results/
modelport tasks status <id>
modelport tasks logs <id> -f
modelport tasks cancel <id>
modelport tasks list --model segmenter --status running
"""

from __future__ import annotations

import json
import tempfile
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
from rich.table import Table

from modelport.cli.client import call, check, request_options
from modelport.errors import ModelportError
from modelport.tasks.archives import ZipLimits, extract_zip

tasks_app = typer.Typer(
    help="Long jobs: files in, files out, run in containers.", no_args_is_help=True
)
console = Console()
err = Console(stderr=True)
UrlOption = Annotated[
    str, typer.Option("--url", envvar="MODELPORT_URL", help="The server's base address.")
]
DEFAULT_URL = "http://127.0.0.1:8000"
FINISHED = {"succeeded", "failed", "cancelled"}
CHUNK = 256 * 1024


def _pack(paths: list[Path], scratch: Path) -> Path:
    """One zip to upload: a lone .zip as is; folders and files packed (folders keep their
    inside layout, files go at the top)."""
    if len(paths) == 1 and paths[0].is_file() and paths[0].suffix.lower() == ".zip":
        return paths[0]
    packed = scratch / "input.zip"
    with zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in paths:
            if path.is_dir():
                for file in sorted(p for p in path.rglob("*") if p.is_file()):
                    archive.write(file, file.relative_to(path).as_posix())
            elif path.is_file():
                archive.write(path, path.name)
            else:
                raise typer.BadParameter(f"{path}: no such file or folder")
    return packed


def _multipart(
    fields: dict[str, str], path: Path, progress: Progress
) -> tuple[Iterator[bytes], int, str]:
    """A streamed multipart body (so the bar follows the bytes sent), its length, its type."""
    boundary = uuid.uuid4().hex
    head = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    )
    disposition = f'form-data; name="files"; filename="{path.name}"'
    head += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
    head += b"Content-Type: application/zip\r\n\r\n"
    tail = f"\r\n--{boundary}--\r\n".encode()
    size = path.stat().st_size
    bar = progress.add_task("upload", total=size)

    def body() -> Iterator[bytes]:
        yield head
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                progress.advance(bar, len(chunk))
                yield chunk
        yield tail

    return body(), len(head) + size + len(tail), f"multipart/form-data; boundary={boundary}"


@tasks_app.command()
def submit(
    model: Annotated[str, typer.Argument(help="A container model.")],
    paths: Annotated[list[Path], typer.Argument(help="A zip, a folder, or files.")],
    *,
    url: UrlOption = DEFAULT_URL,
    parameters: Annotated[str, typer.Option(help="Task parameters, a JSON object.")] = "",
    version: Annotated[str, typer.Option(help="Model version (default: latest).")] = "",
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the task to end.")] = False,
    output: Annotated[
        Path | None, typer.Option(help="With --wait: unpack the output here [./<task id>].")
    ] = None,
) -> None:
    """Upload files for a model; print the task id (and with --wait, fetch the output)."""
    fields = {"model": model}
    if parameters:
        fields["parameters"] = parameters
    if version:
        fields["version"] = version
    with tempfile.TemporaryDirectory(prefix="modelport-cli-") as scratch:
        packed = _pack(paths, Path(scratch))
        columns = (
            *Progress.get_default_columns()[:2],
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
        )
        with Progress(*columns, console=err, transient=True) as progress:
            body, length, kind = _multipart(fields, packed, progress)
            headers = {"content-type": kind, "content-length": str(length)}
            record = call("POST", f"{url}/api/tasks", content=body, headers=headers, timeout=None)
    task_id = record["id"]
    console.print(task_id)
    if wait:
        final = _wait(url, task_id)
        if final["status"] != "succeeded":
            err.print(f"[red]task {final['status']}:[/red] {final.get('error', '')}")
            raise typer.Exit(1)
        _download(url, task_id, output or Path(task_id))


def _wait(url: str, task_id: str) -> dict[str, Any]:
    with err.status(f"task {task_id}: queued") as status:
        while True:
            record = call("GET", f"{url}/api/tasks/{task_id}")
            if record["status"] in FINISHED:
                return dict(record)
            shown = record["status"]
            if record.get("progress") is not None and shown == "running":
                shown += f" {record['progress'] * 100:.0f}%"
            status.update(f"task {task_id}: {shown}")
            time.sleep(0.5)


def _download(url: str, task_id: str, dest: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="modelport-cli-") as scratch:
        packed = Path(scratch) / "output.zip"
        output = f"{url}/api/tasks/{task_id}/output"
        with httpx.stream("GET", output, timeout=None, **request_options()) as response:
            if response.status_code != 200:
                response.read()
                check(response)
            with packed.open("wb") as out:
                for chunk in response.iter_bytes():
                    out.write(chunk)
        dest.mkdir(parents=True, exist_ok=True)
        try:
            # The output comes from the user's own server: no size or ratio limit.
            extract_zip(packed, dest, ZipLimits(max_unpacked_bytes=1 << 62, max_ratio=1e9))
        except ModelportError as exc:
            err.print(f"[red]error:[/red] the output cannot be unpacked: {exc.message}")
            raise typer.Exit(1) from None
    console.print(f"output in {dest}")


@tasks_app.command()
def status(task_id: str, url: UrlOption = DEFAULT_URL) -> None:
    """A task's status, attempts, exit code and error."""
    record = call("GET", f"{url}/api/tasks/{task_id}")
    record.pop("links", None)
    console.print_json(json.dumps(record))


@tasks_app.command()
def logs(
    task_id: str,
    url: UrlOption = DEFAULT_URL,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Follow until it ends.")] = False,
) -> None:
    """A task's container log (stdout and stderr)."""
    params = {"follow": str(follow).lower()}
    with httpx.stream(
        "GET",
        f"{url}/api/tasks/{task_id}/logs",
        params=params,
        timeout=None,
        **request_options(),
    ) as response:
        if response.status_code != 200:
            response.read()
            check(response)
        for chunk in response.iter_text():
            console.out(chunk, end="", highlight=False)


@tasks_app.command()
def cancel(task_id: str, url: UrlOption = DEFAULT_URL) -> None:
    """Cancel a queued or running task (its container is stopped)."""
    record = call("DELETE", f"{url}/api/tasks/{task_id}")
    console.print(f"{task_id} {record['status']}")


@tasks_app.command("list")
def list_tasks(
    *,
    url: UrlOption = DEFAULT_URL,
    model: Annotated[str | None, typer.Option(help="Only this model's tasks.")] = None,
    status: Annotated[str | None, typer.Option(help="Only these statuses (a,b).")] = None,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 50,
) -> None:
    """Tasks, newest first."""
    params: dict[str, Any] = {"limit": limit}
    params.update({k: v for k, v in (("model", model), ("status", status)) if v})
    page = call("GET", f"{url}/api/tasks", params=params)
    table = Table(
        "id",
        "model",
        "status",
        "progress",
        "created",
        "error",
        title=f"{len(page['tasks'])} of {page['total']} tasks",
    )
    for row in page["tasks"]:
        done = f"{row['progress'] * 100:.0f}%" if row["progress"] is not None else ""
        table.add_row(
            row["id"],
            row["model"],
            row["status"],
            done,
            row["created_at"][:19],
            (row["error"] or "").split("\n")[0][:60],
        )
    console.print(table)
