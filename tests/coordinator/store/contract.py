"""What the coordinator store contract tests share: how to open each implementation,
an update to send, enrolled devices, the payload files on disk."""
from __future__ import annotations

import io
import sqlite3
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from coordinator.store import CoordinatorStore, SQLiteCoordinatorStore, Update

ROOT = Path(__file__).resolve().parents[3]


def npz(seed: int = 0, size: int = 8) -> bytes:
    """A real head delta as ``.npz`` bytes (what a device uploads)."""
    buf = io.BytesIO()
    rng = np.random.default_rng(seed)
    np.savez(buf, kernel=rng.normal(size=(size, 1)).astype(np.float32),
             bias=np.zeros(1, np.float32))
    return buf.getvalue()


def _break_sqlite_inserts(state_dir: Path) -> None:
    conn = sqlite3.connect(state_dir / "coordinator.db")
    conn.execute("CREATE TRIGGER fail_insert BEFORE INSERT ON updates "
                 "BEGIN SELECT RAISE(ABORT, 'disk full (simulated)'); END")
    conn.commit()
    conn.close()


@dataclass
class Impl:
    """How to open one implementation on a directory, where its payload files live, and
    how to make its update inserts fail."""

    open: Callable[[Path], CoordinatorStore]
    payload_dir: Callable[[Path], Path]
    break_inserts: Callable[[Path], None]


IMPLS = {"sqlite": Impl(SQLiteCoordinatorStore, lambda d: d / "updates",
                        _break_sqlite_inserts)}


def uid() -> str:
    return uuid.uuid4().hex


def send(store: CoordinatorStore, round_id: int, device_id: str, update_id: str | None = None,
         payload: bytes | None = None, **kw: Any) -> tuple[Update, bool]:
    """add_update with plausible defaults."""
    args: dict[str, Any] = dict(base_version=0, examples=12, norm=0.5,
                                metrics={"loss": 0.3}, meta={"arch": "paper"})
    args.update(kw)
    return store.add_update(update_id or uid(), round_id, device_id,
                            payload=npz() if payload is None else payload, **args)


def enrolled(store: CoordinatorStore, *ids: str) -> None:
    for device_id in ids:
        store.enroll(device_id, f"hash-{device_id}")


def payload_files(impl: Impl, state_dir: Path) -> set[str]:
    return {p.name for p in impl.payload_dir(state_dir).iterdir()}
