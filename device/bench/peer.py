"""The bare durable peer of ``make bench``: what a user could write in 40 lines.

Flask on waitress; OpenCV decode and resize; one LiteRT invoke on the same model file;
the upload's bytes and its result committed to SQLite (WAL, ``synchronous = FULL``)
before the answer. No sign-in, no brain mask, no validation: it does less than the
appliance, and is the yardstick the appliance is measured against. With
``--training-preprocessing`` it prepares the model input as the appliance must (the
brain mask and normalisation the models were trained with, :mod:`models.core.preprocess`)
instead of a plain resize: what is left between it and the appliance is the appliance's
own machinery (sign-in, validation, the case store, the last block and the head).
``python -m device.bench.peer MODEL.tflite DATA_DIR PORT [THREADS]
[--training-preprocessing]``.
"""
from __future__ import annotations

import sqlite3
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
from flask import Flask, jsonify, request

from models.core.preprocess import InputSpec, preprocess_bytes


def create_peer(model: Path, data_dir: Path, training_preprocessing: bool = False) -> Flask:
    """The peer's app: ``POST /predict`` with a multipart ``image``."""
    from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_path=str(model))
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    _, height, width, channels = inp["shape"]
    spec = InputSpec(int(height), int(width), int(channels))
    prob_out = min(interpreter.get_output_details(), key=lambda o: o["shape"][-1])["index"]
    data_dir.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(data_dir / "peer.db", check_same_thread=False)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    db.execute("CREATE TABLE IF NOT EXISTS uploads (id INTEGER PRIMARY KEY, image BLOB, "
               "probability REAL)")
    model_lock, db_lock = threading.Lock(), threading.Lock()
    app = Flask(__name__)

    @app.post("/predict")
    def predict():
        data = request.files["image"].read()
        if training_preprocessing:
            x = preprocess_bytes(data, spec)[None]
        else:
            gray = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
            x = cv2.resize(gray, (int(width), int(height)), interpolation=cv2.INTER_AREA)
            x = np.repeat(x.astype(np.float32)[None, :, :, None], channels, axis=3)
        with model_lock:
            interpreter.set_tensor(inp["index"], x)
            interpreter.invoke()
            probability = float(interpreter.get_tensor(prob_out).reshape(-1)[0])
        with db_lock:
            cursor = db.execute("INSERT INTO uploads (image, probability) VALUES (?, ?)",
                                (data, probability))
            db.commit()
        return jsonify(id=cursor.lastrowid, probability=probability), 201

    @app.get("/healthz")
    def healthz():
        return jsonify(ok=True)
    return app


def main(argv: list[str]) -> int:
    import waitress
    prepare = "--training-preprocessing" in argv
    argv = [a for a in argv if a != "--training-preprocessing"]
    model, data_dir, port = Path(argv[0]), Path(argv[1]), int(argv[2])
    threads = int(argv[3]) if len(argv) > 3 else 4
    waitress.serve(create_peer(model, data_dir, prepare), host="127.0.0.1", port=port,
                   threads=threads, ident="peer")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
