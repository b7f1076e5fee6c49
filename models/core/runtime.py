"""LiteRT inference on a bundle's model: probability and embedding. No TensorFlow.

A model may have a third output, the input of its last block; a bundle that carries
that block's weights (``block.npz``) is then run as LiteRT up to the block and NumPy
after it (:class:`BundleModel`), so that a device can serve a block it adapted.

The appliance and ``models evaluate`` run models through this module, so the figures
that evaluation prints are those of the device path.
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from models.core import block as B
from models.core import head as H


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
    """A TFLite classifier with outputs probability (N, 1), embedding (N, D) and
    optionally the last block's input (N, H, W, C).

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
        flat = [o for o in outs if len(o["shape"]) == 2]
        maps = [o for o in outs if len(o["shape"]) == 4]
        if len(flat) != 2 or len(maps) > 1 or len(outs) != len(flat) + len(maps):
            raise ValueError(f"model has {len(outs)} outputs; expected probability, "
                             "embedding and optionally its last block's input")
        by_width = sorted(flat, key=lambda o: int(o["shape"][-1]))
        self._prob, self._emb = by_width[0]["index"], by_width[1]["index"]
        self.embedding_dim = int(by_width[1]["shape"][-1])
        self._features = maps[0]["index"] if maps else None
        self.feature_shape = tuple(int(d) for d in maps[0]["shape"][1:]) if maps else None

    def run_batch(self, images: np.ndarray, features: bool = False
                  ) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities (B,) and embeddings (B, D) for exactly ``self.batch`` images;
        with ``features``, the last block's inputs (B, H, W, C) instead of embeddings."""
        if images.shape != (self.batch, *self.input_shape):
            raise ValueError(f"input shape {images.shape} != model input "
                             f"{(self.batch, *self.input_shape)}")
        if features and self._features is None:
            raise ValueError("this model has no block-input output")
        with self._lock:
            self._interp.set_tensor(self._input, images.astype(np.float32))
            self._interp.invoke()
            prob = self._interp.get_tensor(self._prob).reshape(-1).copy()
            second = self._interp.get_tensor(self._features if features else self._emb)
            second = second.reshape(self.batch, *second.shape[1:]).copy()
        return prob, second

    def run(self, image: np.ndarray) -> tuple[float, np.ndarray]:
        """Probability and embedding for one preprocessed image (H, W, C)."""
        prob, emb = self.predict(image[None])
        return float(prob[0]), emb[0]

    def predict(self, images: np.ndarray, features: bool = False
                ) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities (N,) and embeddings (N, D) for any number of images (with
        ``features``, the last block's inputs instead of embeddings)."""
        probs, seconds = [], []
        for start in range(0, len(images), self.batch):
            chunk = images[start:start + self.batch]
            pad = self.batch - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.zeros((pad, *self.input_shape), chunk.dtype)])
            p, e = self.run_batch(chunk, features)
            probs.append(p[:self.batch - pad])
            seconds.append(e[:self.batch - pad])
        return (np.concatenate(probs).astype(np.float32),
                np.concatenate(seconds).astype(np.float32))


class BundleModel:
    """A bundle's model as a device runs it: LiteRT throughout, or, when the bundle
    carries its last block's weights, LiteRT up to that block and the block and the
    float head in NumPy (:mod:`models.core.block`), so adapted weights take effect
    without TensorFlow."""

    def __init__(self, lite: TFLiteModel, head: dict[str, np.ndarray],
                 block: dict[str, np.ndarray] | None = None) -> None:
        if block is not None and lite.feature_shape is None:
            raise ValueError("a bundle with block weights needs a model with the block's "
                             "input as an output")
        self.lite, self.head, self.block = lite, head, block
        self.embedding_dim = lite.embedding_dim

    def features(self, images: np.ndarray) -> np.ndarray:
        """The last block's inputs (N, H, W, C): what a device keeps to adapt the block."""
        return self.lite.predict(images, features=True)[1]

    def from_features(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities and embeddings from block inputs, with this model's block."""
        emb = B.embed(self.block, features)
        return H.predict(self.head, emb).astype(np.float32), emb

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities (N,) and embeddings (N, D)."""
        if self.block is None:
            return self.lite.predict(images)
        return self.from_features(self.features(images))


def bundle_model(bundle, num_threads: int = 2, batch: int = 1) -> BundleModel:
    """The :class:`BundleModel` of a :class:`models.core.bundle.Bundle` (its files
    re-checked against the manifest's hashes as they are read)."""
    lite = TFLiteModel(bundle.read_file("model.tflite"), num_threads=num_threads, batch=batch)
    return BundleModel(lite, bundle.load_head(), bundle.load_block())
