"""What the store contract tests share: how to open each implementation, a case to add,
the files a case owns."""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from device.store import AccountStore, CaseStore, SQLiteAccountStore, SQLiteCaseStore

# The store checks only the PNG signature; decoding is device/imaging's job.
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
HEATMAP = b"\x89PNG\r\n\x1a\n" + b"heat" * 100
ROOT = Path(__file__).resolve().parents[3]


def _break_sqlite_inserts(data_dir: Path) -> None:
    conn = sqlite3.connect(data_dir / "neuroedge.db")
    conn.execute("CREATE TRIGGER fail_insert BEFORE INSERT ON cases "
                 "BEGIN SELECT RAISE(ABORT, 'disk full (simulated)'); END")
    conn.commit()
    conn.close()


@dataclass
class Impl:
    """How to open one implementation on a directory, and how to make its inserts fail."""

    open_cases: Callable[[Path], CaseStore]
    open_accounts: Callable[[Path], AccountStore]
    break_inserts: Callable[[Path], None]


IMPLS = {"sqlite": Impl(SQLiteCaseStore, SQLiteAccountStore, _break_sqlite_inserts)}


def add(store: CaseStore, **overrides: Any) -> Any:
    args: dict[str, Any] = dict(source="upload", width=224, height=224, probability=0.9,
                                predicted_label=1, threshold=0.5, uncertain=False,
                                model_version=3, latency_ms=41.5)
    return store.add_case(overrides.pop("png", PNG), **{**args, **overrides})


def files(store: CaseStore, case: Any) -> set[str]:
    return {p.name for p in store.image_path(case).parent.iterdir()}
