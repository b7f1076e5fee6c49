"""Administrator page: model and federation status, train and sync now."""
from __future__ import annotations

import logging

from flask import Blueprint, flash, redirect, render_template, url_for

from device.web import services
from device.web.auth import admin_required

logger = logging.getLogger(__name__)
bp = Blueprint("admin", __name__, url_prefix="/admin")


@bp.route("/")
@admin_required
def index():
    svc = services()
    fed = svc.federation
    return render_template("admin.html", model=svc.slot.current.bundle.manifest,
                           federation=fed, outbox=len(fed.outbox.pending()) if fed else 0,
                           refused=len(fed.outbox.refused()) if fed else 0,
                           users=svc.accounts.list_users(), tokens=svc.accounts.list_tokens())


@bp.route("/train", methods=["POST"])
@admin_required
def train():
    fed = services().federation
    if fed is None:
        flash("No coordinator is configured on this appliance.")
    else:
        try:
            result = fed.train_now()
            flash(f"Training: {result.get('action')} ({result.get('examples', 0)} cases).")
        except ValueError as exc:  # too few confirmed cases, one class only
            flash(f"Training not possible yet: {exc}")
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
            flash(f"Sync failed, will retry: {type(exc).__name__}")
    return redirect(url_for("admin.index"), 303)
