"""A bundle with a 'not a brain MRI slice' check whose decision a test chooses."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from models.core.bundle import Bundle, verify_bundle, write_bundle
from device.config import DEV_PUBLIC_KEY
from models.core.signing import load_public_key, load_signing_key

DEV_SIGNING_KEY = DEV_PUBLIC_KEY.with_suffix("")  # trusted by the default settings


def with_slice_check(bundle: Bundle, out: Path, threshold: float | None) -> Bundle:
    """``bundle``'s model and head re-signed with a slice head whose score is the sigmoid
    of the first embedding feature (hidden unit 0 copies it, the rest are off): a
    threshold near 0 passes every image, one near 1 refuses every image; None: without
    a slice check. Signed with the development key, which the default settings trust."""
    key = load_signing_key(DEV_SIGNING_KEY)
    head = bundle.load_head()
    dim = head["hidden/kernel"].shape[0]
    slice_head = {"hidden/kernel": np.zeros((dim, 32), np.float32),
                  "hidden/bias": np.zeros(32, np.float32),
                  "output/kernel": np.zeros((32, 1), np.float32),
                  "output/bias": np.zeros(1, np.float32)}
    slice_head["hidden/kernel"][0, 0] = 1.0
    slice_head["output/kernel"][0, 0] = 1.0
    fields = {k: bundle.manifest[k] for k in ("version", "architecture", "input", "threshold")}
    fields["uncertain_logit_band"] = bundle.uncertain_logit_band
    if threshold is not None:
        fields["slice_check"] = {"file": "slice_head.npz", "threshold": threshold}
    if "block" in bundle.manifest:
        fields["block"] = bundle.manifest["block"]
    write_bundle(out, bundle.model_path.read_bytes(), head, fields, key,
                 slice_head=slice_head if threshold is not None else None,
                 block=bundle.load_block())
    return verify_bundle(out, [load_public_key(DEV_PUBLIC_KEY)])
