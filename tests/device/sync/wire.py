"""What the sync tests send: a device id, a small head update, the files of a folder."""
from __future__ import annotations

import uuid

import numpy as np

from models.core.update_codec import encode


DEVICE = "pi-1"


def update(coord, *, nan: bool = False, seed: int = 0) -> tuple[str, bytes, dict]:
    """(update_id, payload, meta) of a small valid head delta (or one holding a NaN)."""
    rng = np.random.default_rng(seed)
    delta = {k: rng.normal(0, 0.01, s).astype(np.float32)
             for k, s in coord.bundles.latest().head_shapes.items()}
    if nan:
        delta["output/bias"] = np.array([np.nan], np.float32)
    payload, extra = encode(delta, "float32" if nan else "int8")
    update_id = uuid.uuid4().hex
    meta = {"device_id": DEVICE, "base_version": coord.bundles.latest().version,
            "examples": 20, "update_id": update_id, "metrics": {"accuracy": 0.9}, **extra}
    return update_id, payload, meta


def files(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file())
