"""Administrator page: model and federation status, train and sync now."""
from __future__ import annotations

import logging

from flask import Blueprint, flash, redirect, render_template, url_for

from device.web import services
from device.web.auth import admin_required, current_user

logger = logging.getLogger(__name__)
bp = Blueprint("admin", __name__, url_prefix="/admin")


@bp.route("/")
@admin_required
def index():
    svc = services()
    return render_template("admin.html", model=svc.slot.current.bundle.manifest,
                           federation=svc.federation.overview() if svc.federation else None,
                           settings=svc.settings, telemetry=svc.telemetry,
                           camera=svc.camera is not None,
                           personal=svc.slot.current.personal,
                           users=svc.accounts.list_users(), tokens=svc.accounts.list_tokens())


@bp.route("/train", methods=["POST"])
@admin_required
def train():
    fed = services().federation
    if fed is None:
        flash("No coordinator is configured on this appliance.")
    else:
        result = fed.train_now()
        if result["action"] in ("skipped", "busy"):  # too few cases, one class, running
            flash(f"Training not possible now: {result['reason']}.")
        else:
            flash(f"Training: {result['action']} ({result.get('examples', 0)} cases).")
    return redirect(url_for("admin.index"), 303)


@bp.route("/sync", methods=["POST"])
@admin_required
def sync():
    fed = services().federation
    if fed is None:
        flash("No coordinator is configured on this appliance.")
    else:
        try:
            result = fed.sync_now()
            flash(f"Sync: {result['sent']} update(s) sent, bundle {result['bundle']}"
                  + (f" ({result['reason']})" if result.get("reason") else "") + ".")
        except Exception as exc:  # coordinator down: the outbox keeps the update
            logger.warning("sync from the admin page failed: %s", exc)
            settings = services().settings
            flash(f"Sync with {settings.coordinator_url} failed "
                  f"({str(exc)[:200] or type(exc).__name__}); "
                  "waiting updates stay queued and are retried every "
                  f"{settings.sync_interval_s / 60:g} minutes.")
    return redirect(url_for("admin.index"), 303)


@bp.route("/serve-global", methods=["POST"])
@admin_required
def serve_global():
    """Drop this clinic's own head and serve the bundle's (audited)."""
    fed = services().federation
    if fed is not None and fed.personalisation.serve_global(
            f"an administrator ({current_user()}) asked for the global head"):
        flash("Serving the global head. This clinic's own head is served again only after "
              "a training run where it does better on the held-out cases.")
    else:
        flash("The global head was already served.")
    return redirect(url_for("admin.index"), 303)
