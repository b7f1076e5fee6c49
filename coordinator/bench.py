"""``python -m coordinator.bench``: aggregation, publishing and update-intake figures.

- Aggregation of 1,000 ``paper``-head updates (692,289 parameters) streamed, and the
  robust methods on 50 (see :mod:`coordinator.aggregation.bench`).
- Publishing: rebuild + int8 + evaluate + sign of the shipped model with a new head (the
  default settings: no pruning), on the shared dataset as the coordinator's own data.
- Intake: a real server process; 4 client threads POST one int8 update per enrolled
  device (a device may send one per round) and the rate is measured.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "brain_tumor_dataset"
DEVICES = 300


def publish_seconds(state: Path) -> float:
    from coordinator.config import load_settings
    from coordinator.services import build_services
    svc = build_services(load_settings(state_dir=state, data=DATA, min_updates=10**6))
    try:
        current = svc.bundles.latest()
        head = current.load_head()
        start = time.perf_counter()
        svc.rounds.publisher({k: np.zeros_like(v) for k, v in head.items()}, 0)
        return time.perf_counter() - start
    finally:
        svc.close()


def intake_rate(state: Path) -> float:
    import requests

    from coordinator.api.auth import hash_token
    from coordinator.store.sqlite import SQLiteCoordinatorStore
    from models.core.bundle import read_manifest
    from models.core.update_codec import encode
    from models.core.weights import head_shapes
    store = SQLiteCoordinatorStore(state)
    tokens = {}
    for i in range(DEVICES):
        tokens[f"bench-{i}"] = f"nd_bench_{i}_{uuid.uuid4().hex}"
        store.enroll(f"bench-{i}", hash_token(tokens[f"bench-{i}"]))
    store.close()
    head = read_manifest(state / "bundles" / "v1")["head"]
    shapes = head_shapes(head["embedding_dim"], head["hidden"])
    rng = np.random.default_rng(0)
    payload, extra = encode({k: rng.normal(0, 0.01, s).astype(np.float32)
                             for k, s in shapes.items()}, "int8")
    port = 18000 + os.getpid() % 1000
    server = subprocess.Popen([sys.executable, "-m", "coordinator", "serve", "--state-dir",
                               str(state), "--port", str(port)],
                              env={**os.environ, "NEUROEDGE_COORD_MIN_UPDATES": "1000000"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                requests.get(f"{url}/healthz", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.5)

        def post(device: str) -> int:
            meta = {"device_id": device, "base_version": 1, "examples": 20,
                    "update_id": uuid.uuid4().hex, **extra}
            return requests.post(f"{url}/api/v1/updates",
                                 headers={"Authorization": f"Bearer {tokens[device]}"},
                                 files={"weights": ("u.npz", payload)},
                                 data={"meta": json.dumps(meta)},
                                 timeout=30).status_code

        start = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            codes = list(pool.map(post, tokens))
        seconds = time.perf_counter() - start
    finally:
        server.terminate()
        server.wait(timeout=30)
    if set(codes) != {202}:
        raise RuntimeError(f"unexpected statuses {sorted(set(codes))}")
    return DEVICES / seconds


def main() -> int:
    from coordinator.aggregation.bench import bench_robust, bench_streaming
    streaming = bench_streaming()
    robust = bench_robust()
    print("coordinator bench")
    print(f"  FedAvg, 1,000 paper-head updates streamed  {streaming['seconds']:7.2f} s "
          f"(target <= 10 s), peak {streaming['peak_bytes_estimate'] / 2**20:.1f} MiB "
          f"= {streaming['peak_bytes_estimate'] / (692_289 * 4):.1f} updates")
    for name, fig in robust.items():
        mib = {k: fig[k] / 2**20 for k in ("inputs_bytes", "peak_bytes_estimate")}
        print(f"  {name}, 50 updates                         {fig['seconds']:7.2f} s, "
              f"inputs {mib['inputs_bytes']:.0f} MiB + {mib['peak_bytes_estimate']:.1f} "
              "MiB working memory")
    with tempfile.TemporaryDirectory() as tmp:
        print(f"  publish (rebuild+int8+evaluate+sign)       "
              f"{publish_seconds(Path(tmp) / 'p'):7.1f} s (target <= 60 s)")
        print(f"  POST /api/v1/updates, 4 clients           "
              f"{intake_rate(Path(tmp) / 'p'):7.1f} updates/s (target >= 20)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
