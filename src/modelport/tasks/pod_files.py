"""A Kubernetes task pod's side of its files: what its two modelport containers run.

A task run as a Kubernetes Job (``task_executor = "kubernetes"``) cannot see the
worker's disk, so its files travel through the blob store (``task_files``, a bucket):

- ``fetch``, the first init container, unpacks the task's ``input.zip`` into ``/input``
  and, when the worker packed one, the model's version folder (``job-model.zip``) into
  ``/model``;
- the task's own container runs next (the second init container), reading ``/input``
  and ``/model`` and writing ``/output``;
- ``upload``, the pod's main container, starts only once the task's container exited 0,
  and packs ``/output`` into ``job-output.zip`` for the worker to take.

Run as ``python -m modelport.tasks.pod_files fetch|upload`` in the modelport image, with
the blob store's URL in ``MODELPORT_TASK_FILES``, the task id in ``MODELPORT_TASK_ID``
and the store's credentials (``AWS_*`` for S3) in the environment.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from modelport.runtimes.container import PROGRESS_FILE
from modelport.tasks.archives import ZipLimits, extract_zip, zip_folder
from modelport.tasks.blobs import BlobStore, TaskBlob


def fetch(
    blobs: BlobStore, task_id: str, *, input_dir: Path, model_dir: Path, limits: ZipLimits
) -> None:
    """Unpack the task's input into ``input_dir``, and its model's files (when the worker
    packed them) into ``model_dir``; both checked as the worker checks an input."""
    with tempfile.TemporaryDirectory() as scratch:
        packed = Path(scratch) / TaskBlob.INPUT.value
        blobs.get_file(TaskBlob.INPUT.key(task_id), packed)
        extract_zip(packed, input_dir, limits)
        packed.unlink()
        if blobs.exists(TaskBlob.JOB_MODEL.key(task_id)):
            model = Path(scratch) / TaskBlob.JOB_MODEL.value
            blobs.get_file(TaskBlob.JOB_MODEL.key(task_id), model)
            extract_zip(model, model_dir, limits)


def upload(blobs: BlobStore, task_id: str, *, output_dir: Path) -> int:
    """Pack ``output_dir`` (less the progress file) into the task's ``job-output.zip``;
    how many files it held."""
    with tempfile.TemporaryDirectory() as scratch:
        packed = Path(scratch) / TaskBlob.JOB_OUTPUT.value
        count = zip_folder(output_dir, packed, skip=frozenset({PROGRESS_FILE}))
        blobs.put_file(TaskBlob.JOB_OUTPUT.key(task_id), packed)
    return count


def main(argv: Sequence[str] | None = None) -> int:
    defaults = ZipLimits()
    parser = argparse.ArgumentParser(prog="python -m modelport.tasks.pod_files")
    parser.add_argument("step", choices=("fetch", "upload"))
    parser.add_argument("--input", default="/input", type=Path)
    parser.add_argument("--model", default="/model", type=Path)
    parser.add_argument("--output", default="/output", type=Path)
    parser.add_argument("--max-members", type=int, default=defaults.max_members)
    parser.add_argument("--max-unpacked-bytes", type=int, default=defaults.max_unpacked_bytes)
    parser.add_argument("--max-ratio", type=float, default=defaults.max_ratio)
    args = parser.parse_args(argv)
    blobs = BlobStore(os.environ["MODELPORT_TASK_FILES"])
    task_id = os.environ["MODELPORT_TASK_ID"]
    if args.step == "fetch":
        limits = ZipLimits(
            max_members=args.max_members,
            max_unpacked_bytes=args.max_unpacked_bytes,
            max_ratio=args.max_ratio,
        )
        fetch(blobs, task_id, input_dir=args.input, model_dir=args.model, limits=limits)
        print(f"fetched the files of task {task_id}")
    else:
        count = upload(blobs, task_id, output_dir=args.output)
        print(f"uploaded {count} output files of task {task_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
