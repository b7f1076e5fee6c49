"""LiteRT inference on a bundle's model: probability and embedding. No TensorFlow.

The appliance and ``models evaluate`` run models through this module, so the figures
that evaluation prints are those of the device path.
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np


def interpreter_class() -> type:
    """LiteRT's ``Interpreter``: ``ai_edge_litert`` first, ``tflite_runtime`` as fallback.

    ``tflite_runtime`` 2.14 cannot load dynamic-range models from TF 2.21 and has no int8
    XNNPACK; it is only a fallback for images that cannot install ai-edge-litert.
    """
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        from tflite_runtime.interpreter import Interpreter
    return Interpreter


class TFLiteModel:
    """A TFLite classifier with two outputs: probability (N, 1) and embedding (N, D).

    Outputs are told apart by shape, not by converter-generated names. One interpreter
    is not thread-safe, so calls are serialised with a lock.
    """

    def __init__(self, model: str | Path | bytes, num_threads: int = 2, batch: int = 1) -> None:
        cls = interpreter_class()
        if isinstance(model, bytes):
            self._interp = cls(model_content=model, num_threads=num_threads)
        else:
            self._interp = cls(model_path=str(model), num_threads=num_threads)
        (inp,) = self._interp.get_input_details()
        self._input = inp["index"]
        self.input_shape = tuple(int(d) for d in inp["shape"][1:])
        self.batch = batch
        if batch != 1:
            self._interp.resize_tensor_input(self._input, (batch, *self.input_shape))
        self._interp.allocate_tensors()
        self._lock = threading.Lock()
        outs = self._interp.get_output_details()
        if len(outs) != 2:
            raise ValueError(f"model has {len(outs)} outputs; expected probability and "
                             "embedding")
        by_width = sorted(outs, key=lambda o: int(o["shape"][-1]))
        self._prob, self._emb = by_width[0]["index"], by_width[1]["index"]
        self.embedding_dim = int(by_width[1]["shape"][-1])

    def run_batch(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities (B,) and embeddings (B, D) for exactly ``self.batch`` images."""
        if images.shape != (self.batch, *self.input_shape):
            raise ValueError(f"input shape {images.shape} != model input "
                             f"{(self.batch, *self.input_shape)}")
        with self._lock:
            self._interp.set_tensor(self._input, images.astype(np.float32))
            self._interp.invoke()
            prob = self._interp.get_tensor(self._prob).reshape(-1).copy()
            emb = self._interp.get_tensor(self._emb).reshape(self.batch, -1).copy()
        return prob, emb

    def run(self, image: np.ndarray) -> tuple[float, np.ndarray]:
        """Probability and embedding for one preprocessed image (H, W, C)."""
        prob, emb = self.predict(image[None])
        return float(prob[0]), emb[0]

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities (N,) and embeddings (N, D) for any number of images."""
        probs, embs = [], []
        for start in range(0, len(images), self.batch):
            chunk = images[start:start + self.batch]
            pad = self.batch - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.zeros((pad, *self.input_shape), chunk.dtype)])
            p, e = self.run_batch(chunk)
            probs.append(p[:self.batch - pad])
            embs.append(e[:self.batch - pad])
        return np.concatenate(probs).astype(np.float32), np.concatenate(embs).astype(np.float32)
