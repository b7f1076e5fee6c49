"""Administrator dashboard: rounds, model quality per version, devices, audit log."""
from __future__ import annotations

import io

from flask import Blueprint, Response, render_template

from coordinator.api import services
from coordinator.api.auth import admin_required

bp = Blueprint("dashboard", __name__)


def quality_points(bundles) -> list[dict]:
    """(version, validation AUC, accuracy) of each published bundle, for the plot."""
    points = []
    for b in bundles:
        m = b.metrics or {}
        m = m.get("candidate") or m.get("validation") or m.get("test") or m
        auc, accuracy = m.get("auc"), m.get("accuracy")
        if isinstance(auc, (int, float)) and isinstance(accuracy, (int, float)):
            points.append({"version": b.version, "auc": auc, "accuracy": accuracy})
    return sorted(points, key=lambda p: p["version"])


def clinic_quality(store, rounds) -> tuple[list[int], dict[str, dict[int, dict]]]:
    """What each clinic reported of the version it trained from, on its own held-out
    cases: the versions, and per device ``{version: {"accuracy", "n", "round"}}`` (its
    latest update from that version), or ``{"skipped": reason}`` when it said it could
    not train on that version (too few confirmed cases, one class only)."""
    per_device: dict[str, dict[int, dict]] = {}
    for rnd in sorted(rounds, key=lambda r: r.id):
        for u in store.updates_for_round(rnd.id):
            m = u.metrics or {}
            accuracy, n = m.get("local_accuracy_before"), m.get("local_n")
            if isinstance(accuracy, (int, float)) and isinstance(n, int) and n > 0:
                per_device.setdefault(u.device_id, {})[u.base_version] = {
                    "accuracy": float(accuracy), "n": n, "round": rnd.id}
    for event in store.audit_events(kind="training_skipped"):  # newest first
        version = event.detail.get("version")
        if event.device_id and isinstance(version, int):
            per_device.setdefault(event.device_id, {}).setdefault(
                version, {"skipped": event.detail.get("reason") or "no reason given"})
    versions = sorted({v for points in per_device.values() for v in points})
    return versions, dict(sorted(per_device.items()))


@bp.route("/")
@admin_required
def index():
    store = services().store
    rounds = store.list_rounds()
    versions, clinics = clinic_quality(store, rounds)
    return render_template("dashboard.html", rounds=rounds,
                           devices=store.list_devices(),
                           points=quality_points(store.list_bundles()),
                           versions=versions, clinics=clinics,
                           latest=services().bundles.latest().version)


@bp.route("/audit")
@admin_required
def audit():
    return render_template("audit.html", events=services().store.audit_events())


@bp.route("/audit.csv")
@admin_required
def audit_csv():
    buf = io.StringIO()
    services().store.export_audit_csv(buf)
    return Response(buf.getvalue(), mimetype="text/csv",
                    headers={"Content-Disposition": "attachment; filename=audit.csv"})
