"""Which offered bundle versions a device tries again, and when.

A refusal of the model itself (it does not fit this appliance, fails the smoke test or
the local gate, was rolled back) is final: that version is never fetched again. A
failure on the way (a download cut off, a file whose size, hash or signature does not
verify) is retried with exponential backoff, at once when a person asks for a sync.
"""
from __future__ import annotations

from device.sync.updater import UpdateResult

RETRY_FIRST_S = 60.0
RETRY_MAX_S = 3600.0


def retry_delay(failures: int) -> float:
    """Seconds to wait after the ``failures``-th failed attempt at one version."""
    return min(RETRY_FIRST_S * 2 ** (failures - 1), RETRY_MAX_S)


def why_not_now(state: dict, version: object, now: float, force: bool) -> str | None:
    """Why the offered ``version`` is not tried at this sync, or None to try it."""
    if version in state.get("refused_versions", []):
        return "refused before"
    retry = state.get("retry") or {}
    # A wait longer than the longest backoff means the clock went back: try now.
    if not force and retry.get("version") == version and \
            now < retry["next_at"] <= now + RETRY_MAX_S:
        return (f"v{version} failed {retry['failures']} time(s) on the way; next try in "
                f"{retry['next_at'] - now:.0f} s")
    return None


def after_refusal(state: dict, outcome: UpdateResult, current: int, now: float) -> dict:
    """The state fields to save after ``outcome`` (a refusal) while ``current`` serves."""
    if not outcome.final:
        retry = state.get("retry") or {}
        failures = retry["failures"] + 1 if retry.get("version") == outcome.version else 1
        return {"retry": {"version": outcome.version, "failures": failures,
                          "next_at": now + retry_delay(failures)}}
    if outcome.version == current:  # the coordinator's copy of the shipped version is
        return {}  # tried at each sync: a refusal of it (a missing key) is mended by
    # the configuration, not by a newer version
    return {"refused_versions": [*state.get("refused_versions", []), outcome.version],
            "retry": None}
