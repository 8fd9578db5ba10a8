"""The detector-server team's web server, as their seed runs it: FastAPI, Redis between
it and the model workers, results found by polling.

``POST /predictor/`` (form fields ``model_type``, the worker's Redis list, and ``file``)
decodes the picture with Pillow into a float32 BGR array, base64-encodes it into a JSON
job ``{id, image, height, width}``, pushes the job onto the list, then reads the result
key ``id`` every ``CLIENT_SLEEP`` (0.25 s) until the worker has written it. The route is
a plain ``def``, so FastAPI runs each request on a thread of its pool, blocked while it
polls, as the seed's is. Written for the benchmark (bench/images.py starts it):

    REDIS_URL=redis://127.0.0.1:6379/0 uvicorn app:app --app-dir bench/peers/redis_queue
"""

from __future__ import annotations

import base64
import json
import os
import time
import uuid

import numpy as np
import redis
from fastapi import FastAPI, File, Form, UploadFile
from PIL import Image

CLIENT_SLEEP = float(os.environ.get("CLIENT_SLEEP", "0.25"))

app = FastAPI()
db = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))


@app.post("/predictor/")
def predict(model_type: str = Form(...), file: UploadFile = File(...)) -> dict[str, object]:
    image = Image.open(file.file)
    width, height = image.size
    if image.mode != "RGB":
        image = image.convert("RGB")
    pixels = np.ascontiguousarray(np.asarray(image, np.float32)[:, :, ::-1])  # BGR
    key = str(uuid.uuid4())
    job = {
        "id": key,
        "image": base64.b64encode(pixels.tobytes()).decode("ascii"),
        "height": height,
        "width": width,
    }
    db.rpush(model_type, json.dumps(job))
    while True:
        found = db.get(key)
        if found is not None:
            db.delete(key)
            return {"success": True, "predictions": json.loads(found)}
        time.sleep(CLIENT_SLEEP)
