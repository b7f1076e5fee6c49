"""The bench's bare durable peer, on the shipped model: it answers a real slice, keeps the
upload's bytes committed, and feeds LiteRT a plain resize, or with
``training_preprocessing`` exactly the input the training preprocessing makes (the
bench's second yardstick)."""
from __future__ import annotations

import io
import sqlite3

import cv2
import numpy as np
import pytest

from device.bench.__main__ import BUNDLE
from device.bench.peer import create_peer
from models.core.preprocess import InputSpec, preprocess_bytes

MODEL = BUNDLE / "model.tflite"


def _output(x: np.ndarray) -> float:
    """What the peer answers for model input ``x``: the model's smallest output."""
    from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_path=str(MODEL))
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    out = min(interpreter.get_output_details(), key=lambda o: o["shape"][-1])["index"]
    return float(interpreter.get_tensor(out).reshape(-1)[0])


@pytest.mark.parametrize("training_preprocessing", [False, True])
def test_the_peer_answers_and_commits_the_upload(data_dir, tmp_path, training_preprocessing):
    data = (data_dir / "yes" / "Y1.jpg").read_bytes()
    client = create_peer(MODEL, tmp_path, training_preprocessing).test_client()
    spec = InputSpec(128, 128, 1)
    gray = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    resized = cv2.resize(gray, (128, 128), interpolation=cv2.INTER_AREA)
    expected = {False: _output(resized.astype(np.float32)[None, :, :, None]),
                True: _output(preprocess_bytes(data, spec)[None])}
    # Execute
    answer = client.post("/predict", data={"image": (io.BytesIO(data), "slice.jpg")},
                         content_type="multipart/form-data")
    # Assert: the answer comes from the chosen input, and the bytes were committed
    assert answer.status_code == 201, answer.data
    assert expected[False] != expected[True]
    assert answer.json["probability"] == expected[training_preprocessing]
    with sqlite3.connect(tmp_path / "peer.db") as db:
        assert db.execute("SELECT image FROM uploads").fetchall() == [(data,)]
