"""Slices grouped into studies, and what a study's slices amount to.

A DICOM slice carries its StudyInstanceUID and SeriesInstanceUID. They identify an
examination (a PACS can link them to the patient), so the appliance never stores them:
:class:`StudyKeys` turns them into keyed hashes with a secret salt kept in this
appliance's database, the same UID always giving the same study here and nowhere else.
Slices without a StudyInstanceUID (PNG, JPEG, DICOM without it) are grouped by the
archive they came in, which is one series by contract; sent as separate files they are
not grouped (they may be several patients).
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from device.imaging.dicom import SliceIds
from device.store.base import AccountStore, Case, StudyRef

SALT_SETTING = "study_salt"
RULE = "a study counts as tumour suspected if any of its slices is at or above the " \
       "model's threshold"
MOST_SUSPICIOUS = 5


@dataclass(frozen=True)
class StudyKeys:
    """Keyed hashes of study and series UIDs (HMAC-SHA-256 with this appliance's salt)."""

    salt: bytes

    @classmethod
    def of(cls, settings: AccountStore) -> StudyKeys:
        """The appliance's salt, kept in its settings, made once at first use."""
        return cls(bytes.fromhex(settings.setting_once(SALT_SETTING, secrets.token_hex(32))))

    def _hash(self, kind: str, uid: str) -> str:
        return hmac.new(self.salt, f"{kind}:{uid}".encode(), hashlib.sha256).hexdigest()

    def ref(self, ids: SliceIds | None, archive: str | None) -> StudyRef | None:
        """Where a slice goes: the study of its UID, else the ``archive``'s group (a
        32-hex id the caller made for the archive), else nowhere."""
        if ids is not None:
            series = self._hash("series", ids.series_uid)[:16] if ids.series_uid else ""
            return StudyRef(self._hash("study", ids.study_uid)[:32], "study_uid", series,
                            ids.instance)
        return None if archive is None else StudyRef(archive, "archive")


def verdict(cases: list[Case]) -> dict:
    """What the slices of one study amount to, by :data:`RULE`: counts, and the most
    suspicious slices first."""
    ranked = sorted(cases, key=lambda c: c.probability, reverse=True)
    suspected = sum(bool(c.predicted_label) for c in cases)
    return {"slices": len(cases), "suspected": suspected,
            "series_suspected": suspected > 0,
            "uncertain": sum(bool(c.uncertain) for c in cases), "rule": RULE,
            "most_suspicious": ranked[:MOST_SUSPICIOUS]}
