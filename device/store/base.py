"""Interfaces and records of the appliance's persistent state.

Two stores, each an ABC so another implementation can run the same contract suite
(``tests/device/test_store.py``): :class:`CaseStore` (cases, their images on local disk,
the embedding cache used by on-device training) and :class:`AccountStore` (users, API
tokens, login throttling, settings). The input rules every implementation must enforce
(identifier shapes, enumerations) live here too, so they are part of the contract.
"""
from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, TextIO

import numpy as np

from device.exc import InputError, NotFoundError

SOURCES = ("upload", "api", "camera")
ROLES = ("clinician", "admin")
STATUSES = ("all", "unconfirmed", "confirmed", "disagreed")
MAX_LIST_LIMIT = 1000
MAX_LIST_OFFSET = 2**63 - 1  # SQLite's largest INTEGER: larger offsets are InputError
# uuid4().hex: the only case id shape ever accepted, so an id can never reach a path.
CASE_ID = re.compile(r"[0-9a-f]{32}")
# User and token names: short, printable, no separators, safe in logs and CSV cells.
MAX_NAME = 64
KEY_TTL_S = 86400.0  # idempotency keys are forgotten after a day
NAME = re.compile(rf"[A-Za-z0-9._-]{{1,{MAX_NAME}}}")
EXPORT_FIELDS = ("id", "created_at", "source", "width", "height", "probability",
                 "predicted_label", "threshold", "uncertain", "model_version", "latency_ms",
                 "confirmed_label", "confirmed_by", "confirmed_at", "status")


MAX_REFERENCE, MAX_NOTE, MAX_FILE_NAME = 64, 500, 255
_CONTROL, STUDY_ID = re.compile(r"[\x00-\x1f\x7f]"), re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class StudyRef:
    """A new slice's study id, what grouped it (``"study_uid"``, salted hash of its UID,
    or ``"archive"``), its series' salted hash and its instance number."""

    id: str
    grouped_by: str
    series_hash: str = ""
    instance: int | None = None


@dataclass(frozen=True)
class CaseInfo:
    """What ties a case to the clinic's own records: a reference (e.g. an accession
    number), a note, the uploaded file's name, the study it belongs to. On this
    appliance only: never sent to the coordinator, never logged, not in the CSV export."""

    reference: str = ""
    note: str = ""
    file_name: str = ""
    study: StudyRef | None = None


def check_info(info: object) -> CaseInfo:
    """A valid CaseInfo (InputError otherwise): each field a string within its length,
    the reference and file name on one line; the file name without its folders."""
    if not isinstance(info, CaseInfo):
        raise InputError("case info must be a CaseInfo")
    name = info.file_name.replace("\\", "/").rsplit("/", 1)[-1] \
        if isinstance(info.file_name, str) else info.file_name
    for value, what, most, one_line in ((info.reference, "reference", MAX_REFERENCE, True),
                                        (info.note, "note", MAX_NOTE, False),
                                        (name, "file name", MAX_FILE_NAME, True)):
        if not isinstance(value, str) or len(value) > most:
            raise InputError(f"{what} must be text of at most {most} characters")
        lines = value if one_line else value.replace("\r\n", "").replace("\n", "")
        if _CONTROL.search(lines):
            raise InputError(f"{what} holds control characters")
    study = info.study
    if study is not None and not (isinstance(study, StudyRef) and STUDY_ID.fullmatch(
            study.id) and study.grouped_by in ("study_uid", "archive")):
        raise InputError("study must be a StudyRef with a 32-hex id")
    return CaseInfo(info.reference.strip(), info.note.strip(), name, study)


@dataclass(frozen=True)
class Case:
    """One screened slice. ``image_name``/``heatmap_name`` are store-chosen file names
    (``<id>.png`` or ``<id>.jpg``), never the uploaded file name, which may contain a
    patient name."""

    id: str
    created_at: str
    source: str
    image_name: str
    image_sha256: str
    width: int
    height: int
    probability: float
    predicted_label: int
    threshold: float
    uncertain: bool
    model_version: int
    latency_ms: float
    confirmed_label: Optional[int] = None
    confirmed_by: Optional[str] = None
    confirmed_at: Optional[str] = None
    heatmap_name: Optional[str] = None

    @property
    def status(self) -> str:
        """``"unconfirmed"``, ``"confirmed"``, or ``"disagreed"`` (clinician label differs
        from the model's prediction)."""
        if self.confirmed_label is None:
            return "unconfirmed"
        return "confirmed" if self.confirmed_label == self.predicted_label else "disagreed"


@dataclass(frozen=True)
class User:
    """An account of the web UI; ``password_hash`` is produced by the caller."""

    name: str
    role: str
    password_hash: str
    created_at: str
    disabled: bool = False


@dataclass(frozen=True)
class Token:
    """An API token's metadata; the store keeps only the token's hash, never shown."""

    name: str
    user: str
    created_at: str
    last_used_at: Optional[str] = None


@dataclass(frozen=True)
class IdempotencyKey:
    """The ``Idempotency-Key`` of an API request: the same key from the same user
    answers with the case it created, if the request (``request_sha256``) is the same."""

    user: str
    key: str
    request_sha256: str


class DuplicateKey(Exception):
    """:meth:`CaseStore.add_case` found its idempotency key taken (a concurrent retry)."""

    def __init__(self, case_id: str) -> None:
        super().__init__(case_id)
        self.case_id = case_id


def check_case_id(case_id: object) -> str:
    """Return ``case_id`` if it is 32 lowercase hex characters, else NotFoundError: a
    malformed id cannot name a case, and never builds a path or a query."""
    if not isinstance(case_id, str) or not CASE_ID.fullmatch(case_id):
        raise NotFoundError("no such case")
    return case_id


def check_name(name: object, what: str = "name") -> str:
    """Return ``name`` if it is 1-64 characters of ``[A-Za-z0-9._-]``, else InputError."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise InputError(f"{what} must be 1-64 characters of letters, digits, '.', '_', '-'")
    return name


def check_label(label: object) -> int:
    """Return ``label`` as an int if it is 0 or 1 (not a bool), else InputError."""
    if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or label not in (0, 1):
        raise InputError("label must be 0 or 1")
    return int(label)


def check_status(status: object) -> str:
    """Return ``status`` if it is one of :data:`STATUSES`, else InputError."""
    if status not in STATUSES:
        raise InputError(f"status must be one of {', '.join(STATUSES)}")
    return str(status)


class CaseStore(ABC):
    """Cases, their images (local disk only) and the embedding cache."""

    @abstractmethod
    def add_case(self, image: bytes, *, source: str, width: int, height: int,
                 probability: float, predicted_label: int, threshold: float,
                 uncertain: bool, model_version: int, latency_ms: float,
                 heatmap_png: bytes | None = None, backbone_id: str | None = None,
                 embedding: np.ndarray | None = None,
                 idempotency: IdempotencyKey | None = None, info: CaseInfo | None = None,
                 raw: tuple[bytes, int] | None = None, head: str | None = None) -> Case:
        """Store a new case, with its embedding for ``backbone_id`` when given, in one
        durable step: when it returns, the record, the image (PNG or JPEG bytes, kept
        as given), the embedding, the idempotency key, the case's ``info``
        (:func:`check_info`), a DICOM's ``raw`` values (16-bit PNG, offset) and the id of
        the clinic's own ``head`` that made the prediction (None: the bundle's) survive a
        power cut together.

        Raises InputError on invalid arguments, StoreError if nothing could be stored
        (then no file is left behind either), DuplicateKey if another case holds the
        idempotency key (nothing is stored).
        """

    @abstractmethod
    def case_for_key(self, user: str, key: str) -> tuple[Case, str] | None:
        """The case an idempotency key of ``user`` created and the sha256 of its request,
        or None (keys are kept :data:`KEY_TTL_S` seconds)."""

    @abstractmethod
    def get(self, case_id: str) -> Case:
        """Return the case; NotFoundError if missing or ``case_id`` is malformed."""

    @abstractmethod
    def ids_starting_with(self, prefix: str, limit: int = 2) -> list[str]:
        """Up to ``limit`` case ids that start with ``prefix`` (lowercase hex, 1-32
        characters; InputError otherwise): what the case page shows is the first 8."""

    @abstractmethod
    def list(self, status: str = "all", limit: int = 50, offset: int = 0,
             reference: str = "") -> list[Case]:
        """Cases with that status (and, if given, a reference that contains
        ``reference``, ignoring case), newest first; InputError on a bad
        status/limit/offset."""

    @abstractmethod
    def count(self, status: str = "all", reference: str = "") -> int:
        """Number of cases :meth:`list` would give without a limit."""

    @abstractmethod
    def get_info(self, case_id: str) -> CaseInfo:
        """The case's :class:`CaseInfo` (empty fields if none); NotFoundError if no case."""

    @abstractmethod
    def set_info(self, case_id: str, reference: str, note: str) -> CaseInfo:
        """Replace the case's reference and note (its file name stays); NotFoundError,
        InputError as :func:`check_info`."""

    @abstractmethod
    def confirm(self, case_id: str, label: int, user: str) -> Case:
        """Record the clinician's label (0/1, else InputError); re-confirming overwrites."""

    @abstractmethod
    def delete(self, case_id: str) -> None:
        """Remove the case, its embedding and its image files; NotFoundError if missing."""

    @abstractmethod
    def image_path(self, case: Case) -> Path:
        """Local path of the case's image."""

    @abstractmethod
    def heatmap_path(self, case: Case) -> Path | None:
        """Local path of the case's heat map, or None if it has none."""

    @abstractmethod
    def set_heatmap(self, case_id: str, png: bytes) -> Case:
        """Store (or replace) the case's heat map PNG, written durably; the updated case
        (NotFoundError if the case is gone, then nothing is kept)."""

    @abstractmethod
    def heatmaps_valid_since(self, drawn_by: str) -> float:
        """Epoch seconds since which stored heat maps count as drawn by ``drawn_by`` (the
        model and colour scale in service; InputError if not a non-empty string). A
        change is recorded with the current time, so older maps are drawn again."""

    @abstractmethod
    def set_embedding(self, case_id: str, backbone_id: str, vector: np.ndarray) -> None:
        """Cache the case's 1-D embedding, replacing any earlier one (any backbone)."""

    @abstractmethod
    def get_embedding(self, case_id: str, backbone_id: str) -> np.ndarray | None:
        """The cached float32 embedding, or None if missing or from another backbone."""

    @abstractmethod
    def confirmed_examples(self, backbone_id: str
                           ) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Confirmed cases with an embedding for ``backbone_id``, oldest first.

        Returns
        -------
        (case_ids, embeddings float32 (N, D), labels int64 (N,)); with no examples the
        embeddings have shape (0, 0).
        """

    @abstractmethod
    def gate_keys(self, case_ids: list[str]) -> list[str]:
        """Each case's study id, else its image's SHA-256, else (gone) its id."""

    @abstractmethod
    def cases_missing_embedding(self, backbone_id: str) -> list[str]:
        """Ids of confirmed cases with no embedding for ``backbone_id``, oldest first."""

    @abstractmethod
    def export_csv(self, fh: TextIO) -> int:
        """Write :data:`EXPORT_FIELDS` of every case (no image bytes, no paths) to ``fh``;
        return the number of data rows."""

    @abstractmethod
    def recover(self) -> int:
        """Remove partial and unreferenced image files; return how many were removed."""

    @abstractmethod
    def ping(self) -> bool:
        """True if the store answers a trivial query (health checks)."""

    @abstractmethod
    def close(self) -> None:
        """Release the store's resources; later calls raise StoreError."""


class AccountStore(ABC):
    """Users, API tokens (hashes only), login throttling state and settings."""

    @abstractmethod
    def add_user(self, name: str, role: str, password_hash: str) -> None:
        """Create a user; InputError if the name exists or name/role/hash is invalid."""

    @abstractmethod
    def get_user(self, name: str) -> User | None:
        """The user, or None."""

    @abstractmethod
    def list_users(self) -> list[User]:
        """All users, by name."""

    @abstractmethod
    def set_password(self, name: str, password_hash: str) -> None:
        """Replace the user's password hash; NotFoundError if no such user."""

    @abstractmethod
    def set_disabled(self, name: str, disabled: bool) -> None:
        """Disable or re-enable a user; NotFoundError if no such user."""

    @abstractmethod
    def count_users(self) -> int:
        """Number of users (0 means first-run setup is pending)."""

    @abstractmethod
    def add_token(self, name: str, token_hash: str, user: str) -> None:
        """Register a token hash for ``user``; InputError if the name or hash exists,
        NotFoundError if the user does not."""

    @abstractmethod
    def find_token(self, token_hash: str) -> Token | None:
        """The token with that hash, or None."""

    @abstractmethod
    def touch_token(self, token_hash: str) -> None:
        """Set the token's ``last_used_at`` to now (no-op for an unknown hash)."""

    @abstractmethod
    def revoke_token(self, name: str) -> None:
        """Delete the token; NotFoundError if no such token."""

    @abstractmethod
    def list_tokens(self) -> list[Token]:
        """All tokens, oldest first."""

    @abstractmethod
    def revoke_user_tokens(self, user: str) -> int:
        """Delete every token of ``user``; returns how many."""

    @abstractmethod
    def add_session(self, sid_hash: str, user: str, expires_at: float) -> None:
        """Record a web session of ``user`` (epoch seconds of its end); expired sessions
        are pruned. NotFoundError if the user does not exist."""

    @abstractmethod
    def session_user(self, sid_hash: str, now: float) -> str | None:
        """The user of a session that has not ended nor expired at ``now``, or None."""

    @abstractmethod
    def end_session(self, sid_hash: str) -> None:
        """End one session (sign-out); no-op for an unknown hash."""

    @abstractmethod
    def end_user_sessions(self, user: str) -> int:
        """End every session of ``user``; returns how many."""

    @abstractmethod
    def get_setting(self, key: str) -> str | None:
        """The setting's value, or None."""

    @abstractmethod
    def set_setting(self, key: str, value: str) -> None:
        """Create or replace a setting."""

    @abstractmethod
    def setting_once(self, key: str, value: str) -> str:
        """The setting's value, set to ``value`` first if it had none (one value wins
        when processes race)."""

    @abstractmethod
    def close(self) -> None:
        """Release the store's resources."""
