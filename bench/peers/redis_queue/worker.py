"""The detector-server team's model worker, as their seed runs it: one process per model,
popping jobs off its Redis list one at a time, running the model, writing the result.

    REDIS_URL=redis://127.0.0.1:6379/0 python bench/peers/redis_queue/worker.py MODEL_DIR

``MODEL_DIR`` is a modelport example's folder (``text-detector``, ``face-detector``): its
``1/model.py`` is the same detector modelport serves, handed the picture the job carries
(float32 BGR pixels, as the web server sent them). The list is named after the folder.
Each result is the detector-server's ``predictions`` list, under the job's id.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import sys
import types
from pathlib import Path

import numpy as np
import redis
from PIL import Image

from modelport.spec import parse_spec


def load_detector(folder: Path) -> tuple[object, list[str], float]:
    """The example's Model, set up from its model.yaml; its labels and score threshold."""
    spec = parse_spec(folder.name, (folder / "model.yaml").read_text(), str(folder))
    module_spec = importlib.util.spec_from_file_location("detector", folder / "1" / "model.py")
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    model = module.Model()
    model.setup(types.SimpleNamespace(spec=spec, version_dir=folder / "1", model_dir=folder))
    (output,) = spec.outputs
    threshold = output.detections.score_threshold if output.detections else 0.0
    return model, list(spec.labels), float(threshold or 0.0)


def main() -> None:
    folder = Path(sys.argv[1])
    model, labels, threshold = load_detector(folder)
    db = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    print(f"worker for {folder.name} ready", flush=True)
    while True:
        _, raw = db.blpop([folder.name])
        job = json.loads(raw)
        shape = (job["height"], job["width"], 3)
        bgr = np.frombuffer(base64.b64decode(job["image"]), np.float32).reshape(shape)
        picture = Image.fromarray(np.ascontiguousarray(bgr[:, :, ::-1]).astype(np.uint8))
        rows = model.detect_picture(picture)  # type: ignore[attr-defined]
        predictions = [
            {
                "category_id": labels[int(c)] if int(c) < len(labels) else str(int(c)),
                "scores": [float(s)],
                "bbox": [float(x1), float(y1), float(x2), float(y2)],
            }
            for x1, y1, x2, y2, s, c in rows
            if s >= threshold
        ]
        db.set(job["id"], json.dumps(predictions))


if __name__ == "__main__":
    main()
