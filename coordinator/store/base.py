"""Interface and records of the coordinator's persistent state.

One store, an ABC so that another implementation can run the same contract suite
(``tests/coordinator/test_store.py``): enrolled devices (token hashes only), rounds, the
head updates received in them (metadata as rows, payloads as ``.npz`` files), published
bundles, an audit trail, and the dashboard's admin accounts with login throttling. The
input rules every implementation enforces (identifier shapes, enumerations) live here
too, so they are part of the contract.
"""
from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Optional, TextIO

from coordinator.exc import InputError, NotFoundError

ROUND_STATUSES = ("open", "closed", "expired")
CLOSED_STATUSES = ("closed", "expired")
AUDIT_FIELDS = ("id", "at", "kind", "device_id", "detail")
MAX_LIST_LIMIT = 10_000
# Device ids, admin names, audit kinds: short, printable, no separators, safe in logs,
# paths and CSV cells.
NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
# uuid4().hex: the only update id shape ever accepted, so an id can never reach a path.
UPDATE_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class Device:
    """An enrolled appliance; the store keeps its token's hash, which is never shown."""

    id: str
    enrolled_at: str
    revoked_at: Optional[str] = None
    last_seen_at: Optional[str] = None
    model_version: Optional[int] = None

    @property
    def active(self) -> bool:
        """False once the device has been revoked (until it is enrolled again)."""
        return self.revoked_at is None


@dataclass(frozen=True)
class Round:
    """One collection round. ``n_updates``/``bytes_received`` count the updates the round
    holds now (:meth:`CoordinatorStore.carry_over` moves them with the updates);
    ``published_version``, ``metrics``, ``epsilon`` are set by ``record_outcome``."""

    id: int
    opened_at: str
    closed_at: Optional[str]
    status: str
    base_version: int
    n_updates: int
    bytes_received: int
    published_version: Optional[int]
    reason: Optional[str]
    metrics: dict[str, Any]
    epsilon: Optional[float]


@dataclass(frozen=True)
class Update:
    """Metadata of one device's head update; the payload is read with ``load_payload``."""

    id: str
    round_id: int
    device_id: str
    base_version: int
    examples: int
    norm: float
    metrics: dict[str, Any]
    received_at: str
    bytes: int
    meta: dict[str, Any]


@dataclass(frozen=True)
class BundleRecord:
    """A model bundle built by the coordinator; ``published`` is False for one that was
    built but withheld (e.g. it failed the evaluation gate), ``reason`` says why."""

    version: int
    parent_version: Optional[int]
    created_at: str
    path: str
    metrics: dict[str, Any]
    published: bool
    reason: str


@dataclass(frozen=True)
class AuditEvent:
    """One audit record: what happened (``kind``), to which device, with details."""

    id: int
    at: str
    kind: str
    device_id: Optional[str]
    detail: dict[str, Any]


@dataclass(frozen=True)
class Admin:
    """A dashboard account; ``password_hash`` is produced by the caller."""

    name: str
    password_hash: str
    created_at: str


def check_name(name: object, what: str = "name") -> str:
    """Return ``name`` if it is 1-64 characters of ``[A-Za-z0-9._-]``, else InputError."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise InputError(f"{what} must be 1-64 characters of letters, digits, '.', '_', '-'")
    return name


def check_update_id(update_id: object) -> str:
    """Return ``update_id`` if it is 32 lowercase hex characters (``uuid4().hex``), else
    InputError; it is never used to build a path before this check."""
    if not isinstance(update_id, str) or not UPDATE_ID.fullmatch(update_id):
        raise InputError("update id must be 32 lowercase hex characters")
    return update_id


def known_device_id(device_id: object) -> str:
    """Return ``device_id`` if it could name a device, else NotFoundError (a malformed id
    cannot name a device and is never used in a query)."""
    if not isinstance(device_id, str) or not NAME.fullmatch(device_id):
        raise NotFoundError("no such device")
    return device_id


class CoordinatorStore(ABC):
    """Devices, rounds, updates (+ payload files), bundles, audit trail, admins.

    Every method raises StoreError if the backing store fails or is closed; nothing is
    then half-written.
    """

    # --- devices ----------------------------------------------------------------------

    @abstractmethod
    def enroll(self, device_id: str, token_hash: str) -> Device:
        """Enroll a device under the hash of its API token.

        Re-enrolling a revoked id re-activates it with the new hash (``enrolled_at`` is
        reset; ``last_seen_at``/``model_version`` are kept as history).

        Raises
        ------
        InputError
            ``device_id`` is not 1-64 chars of ``[A-Za-z0-9._-]`` or the hash is empty.
        ConflictError
            An active device has that id, or another device has that token hash.
        """

    @abstractmethod
    def revoke(self, device_id: str) -> Device:
        """Revoke a device (its token stops working); idempotent for a revoked one.

        Returns the revoked device; NotFoundError if there is no such device.
        """

    @abstractmethod
    def device_by_token(self, token_hash: str) -> Device | None:
        """The ACTIVE device enrolled with that token hash, or None."""

    @abstractmethod
    def get_device(self, device_id: str) -> Device:
        """The device (active or revoked); NotFoundError if unknown or malformed."""

    @abstractmethod
    def list_devices(self) -> list[Device]:
        """All devices, active and revoked, by id."""

    @abstractmethod
    def touch_device(self, device_id: str, model_version: int | None = None) -> None:
        """Set ``last_seen_at`` to now and, unless None, the model version the device
        reports running; NotFoundError if no such device."""

    # --- rounds -----------------------------------------------------------------------

    @abstractmethod
    def open_round(self, base_version: int) -> Round:
        """Open a new round on top of bundle ``base_version`` (int >= 0).

        Ids strictly increase and are never reused. ConflictError if a round is open.
        """

    @abstractmethod
    def current_round(self) -> Round | None:
        """The open round, or None."""

    @abstractmethod
    def get_round(self, round_id: int) -> Round:
        """The round; NotFoundError if there is none with that id."""

    @abstractmethod
    def list_rounds(self, limit: int = 100) -> list[Round]:
        """At most ``limit`` rounds, newest first; InputError on a bad limit."""

    @abstractmethod
    def close_round(self, round_id: int, status: str, reason: str) -> Round:
        """Close the open round as ``"closed"`` or ``"expired"`` with a reason.

        Raises InputError (bad status/reason), NotFoundError, ConflictError (not open).
        """

    @abstractmethod
    def record_outcome(self, round_id: int, published_version: int | None,
                       metrics: dict[str, Any], reason: str,
                       epsilon: float | None = None) -> Round:
        """Record what a closed round produced: the published bundle version (None if
        nothing was published), aggregate metrics, the reason (replaces the closing
        reason) and the DP epsilon spent (None without DP). May be repeated.

        Raises InputError, NotFoundError, ConflictError (the round is still open).
        """

    # --- updates ----------------------------------------------------------------------

    @abstractmethod
    def add_update(self, update_id: str, round_id: int, device_id: str, base_version: int,
                   examples: int, norm: float, metrics: dict[str, Any], payload: bytes,
                   meta: dict[str, Any]) -> tuple[Update, bool]:
        """Store a head update; idempotent on ``update_id``.

        The payload file is durable before the row commits; the round's ``n_updates``
        and ``bytes_received`` grow in the same transaction.

        Returns
        -------
        (update, created)
            ``created`` is False when the same device already sent this ``update_id``
            (a retry): the existing update is returned, nothing is rewritten, even if
            its round has closed or its update was carried to another round since.

        Raises
        ------
        InputError
            Malformed id/arguments, payload not ``.npz`` bytes, dicts not JSON objects.
        NotFoundError
            No such round or device.
        AuthError
            The device is revoked.
        ConflictError
            The round is not open; the device already has another update in the round
            ("one update per device per round"); the id belongs to another device.
        """

    @abstractmethod
    def get_update(self, update_id: str) -> Update:
        """The update; NotFoundError if unknown or malformed."""

    @abstractmethod
    def updates_for_round(self, round_id: int) -> list[Update]:
        """The round's updates, oldest first; NotFoundError if no such round."""

    @abstractmethod
    def load_payload(self, update: Update) -> bytes:
        """The update's ``.npz`` bytes, checked against the stored size and SHA-256.

        NotFoundError if the payload was deleted; StoreError if it is corrupt.
        """

    @abstractmethod
    def carry_over(self, from_round: int, to_round: int) -> int:
        """Move the updates of ``from_round`` (e.g. an under-quorum round) into the open
        ``to_round``, with their counters; return how many moved.

        An update whose device already has one in ``to_round``, or whose payload was
        deleted, stays where it is. Raises InputError (same round), NotFoundError,
        ConflictError (``to_round`` not open).
        """

    @abstractmethod
    def delete_payloads(self, round_id: int) -> int:
        """Delete the payload files of a closed round's updates (rows stay as history);
        return how many files were removed. NotFoundError, ConflictError (still open)."""

    # --- bundles ----------------------------------------------------------------------

    @abstractmethod
    def add_bundle(self, version: int, parent_version: int | None, path: str,
                   metrics: dict[str, Any], published: bool, reason: str) -> BundleRecord:
        """Record a built bundle; ConflictError unless ``version`` is greater than every
        recorded version (published or not); InputError on bad arguments."""

    @abstractmethod
    def latest_bundle(self) -> BundleRecord | None:
        """The highest-versioned PUBLISHED bundle, or None."""

    @abstractmethod
    def get_bundle(self, version: int) -> BundleRecord:
        """The bundle with that version; NotFoundError if none."""

    @abstractmethod
    def list_bundles(self) -> list[BundleRecord]:
        """All bundles, newest (highest version) first."""

    # --- audit ------------------------------------------------------------------------

    @abstractmethod
    def audit(self, kind: str, device_id: str | None, detail: dict[str, Any]) -> None:
        """Append an audit event; ``kind`` and ``device_id`` follow the name rule."""

    @abstractmethod
    def audit_events(self, limit: int = 500, kind: str | None = None) -> list[AuditEvent]:
        """At most ``limit`` events (of ``kind`` if given), newest first."""

    @abstractmethod
    def export_audit_csv(self, fh: TextIO) -> int:
        """Write :data:`AUDIT_FIELDS` of every event, oldest first (``detail`` as JSON);
        return the number of data rows."""

    # --- dashboard admins and their sessions ------------------------------------------

    @abstractmethod
    def add_admin(self, name: str, password_hash: str) -> None:
        """Create an admin; InputError on a bad name/hash, ConflictError if it exists."""

    @abstractmethod
    def get_admin(self, name: str) -> Admin | None:
        """The admin, or None."""

    @abstractmethod
    def count_admins(self) -> int:
        """Number of admins (0 means first-run setup is pending)."""

    @abstractmethod
    def set_admin_password(self, name: str, password_hash: str) -> None:
        """Replace an admin's password hash and end their sessions; NotFoundError if
        there is no such admin."""

    @abstractmethod
    def add_session(self, sid_hash: str, admin: str, expires_at: float) -> None:
        """Record a dashboard session (epoch seconds of its end); expired ones are
        pruned."""

    @abstractmethod
    def session_admin(self, sid_hash: str, now: float) -> str | None:
        """The admin of a session that has not ended nor expired at ``now``, or None."""

    @abstractmethod
    def end_session(self, sid_hash: str) -> None:
        """End one session (sign-out); no-op for an unknown hash."""

    # --- lifecycle --------------------------------------------------------------------

    @abstractmethod
    def recover(self) -> int:
        """Remove temp files and payload files without a row; return how many."""

    @abstractmethod
    def ping(self) -> bool:
        """True if the store answers a trivial query (health checks)."""

    @abstractmethod
    def close(self) -> None:
        """Release the store's resources; idempotent; later calls raise StoreError."""
