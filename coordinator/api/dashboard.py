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


@bp.route("/")
@admin_required
def index():
    store = services().store
    return render_template("dashboard.html", rounds=store.list_rounds(),
                           devices=store.list_devices(),
                           points=quality_points(store.list_bundles()),
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
