""""About this model": what the model in service is, from its signed manifest: version,
what it learned from (sites, slices, licences), how it did on held-out patients of each
site, its "not a brain MRI slice" check, and its known limits."""
from __future__ import annotations

from flask import Blueprint, render_template

from device.web import services
from device.web.auth import login_required

bp = Blueprint("model", __name__, url_prefix="/model")


@bp.route("/")
@login_required
def about():
    current = services().slot.current
    manifest = current.bundle.manifest
    metrics = manifest.get("metrics") or {}
    return render_template("model.html", model=manifest, personal=current.personal,
                           sites=(manifest.get("data") or {}).get("sites", {}),
                           tested=metrics.get("test_by_site") or {},
                           overall=metrics.get("test") or metrics.get("validation"),
                           slice_check=metrics.get("slice_check") or {},
                           training=manifest.get("training") or {})
