"""A bundle made ready for clinics to train a low-rank adapter on its last block.

The adapter starts with no effect (its B factor is zero), so the new bundle predicts
exactly as its source; from then on clinics train the head and the adapter and share both
(:mod:`models.core.adapt`, mode ``adapter``), and the coordinator averages both.
"""
from __future__ import annotations

import os
from pathlib import Path

import nacl.signing

from models.core.adapt import with_adapter
from models.core.bundle import ADAPTER, MODEL, Bundle, write_bundle, written_fields
from models.core.manifest import load_checked_manifest

ADAPTER_RANK = 4  # measured against other modes: docs/experiments.md, issue 23


def add_adapter(src_dir: str | os.PathLike, out_dir: str | os.PathLike,
                key: nacl.signing.SigningKey, rank: int = ADAPTER_RANK, seed: int = 0) -> dict:
    """Write ``src_dir``'s bundle with a zero-effect rank-``rank`` adapter to ``out_dir``,
    signed by ``key``, same version; returns its manifest.

    Raises ValueError for a bundle without a NumPy block (format 3), or with an adapter.
    The source's file hashes are checked, not its signature (as when re-signing).
    """
    manifest, _ = load_checked_manifest(Path(src_dir))
    src = Bundle(Path(src_dir), manifest)
    block = src.load_block()
    if block is None:
        raise ValueError(f"{src_dir} has no last block in NumPy (format 3): nothing to adapt")
    if src.adapter_shapes:
        raise ValueError(f"{src_dir} already has an adapter of rank "
                         f"{manifest['block']['adapter_rank']}")
    if rank < 1:
        raise ValueError(f"the adapter's rank must be at least 1, got {rank}")
    fields = written_fields(manifest)
    fields["block"] = {**manifest["block"], "adapter_rank": rank, "adapter_file": ADAPTER}
    fields["training"] = {**manifest.get("training", {}),
                          "adapter": {"rank": rank, "seed": seed, "trained": False}}
    check = src.load_slice_check()
    return write_bundle(out_dir, src.read_file(MODEL), src.load_head(), fields, key,
                        slice_head=check[0] if check else None,
                        block=with_adapter(block, rank, seed))
