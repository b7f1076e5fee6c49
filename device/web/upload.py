"""Browser upload (one or many slices, drag-and-drop) and camera capture."""
from __future__ import annotations

import logging

from flask import Blueprint, flash, redirect, render_template, request, url_for

from device.analysis import analyse
from device.exc import CameraUnavailableError, InputError
from device.web import MAX_FILES_PER_UPLOAD, services
from device.web.auth import login_required

logger = logging.getLogger(__name__)
bp = Blueprint("upload", __name__)


@bp.route("/")
@login_required
def index():
    svc = services()
    return render_template("index.html", model=svc.slot.current.bundle.manifest,
                           camera=svc.camera is not None,
                           max_mb=svc.settings.max_upload_mb)


@bp.route("/upload", methods=["POST"])
@login_required
def upload():
    files = [f for f in request.files.getlist("images") if f and f.filename]
    if not files:
        flash("Choose at least one image.")
        return redirect(url_for("upload.index")), 303
    if len(files) > MAX_FILES_PER_UPLOAD:
        raise InputError(f"at most {MAX_FILES_PER_UPLOAD} files per upload")
    svc = services()
    results = []
    for number, f in enumerate(files, start=1):
        # The uploaded file name may hold a patient name: show it back, never store it.
        try:
            case = analyse(svc, f.read(), "upload")
            results.append({"number": number, "name": f.filename, "case": case})
        except InputError as exc:
            svc.telemetry.record_error(type(exc).__name__)
            results.append({"number": number, "name": f.filename, "error": str(exc),
                            "status": exc.status})
    if len(results) == 1 and "case" in results[0]:
        return redirect(url_for("cases.detail", case_id=results[0]["case"].id), 303)
    status = 200 if any("case" in r for r in results) else results[0]["status"]
    return render_template("results.html", results=results), status


@bp.route("/capture", methods=["POST"])
@login_required
def capture():
    svc = services()
    if svc.camera is None:  # disabled, picamera2 missing or no sensor: see detect_camera
        raise CameraUnavailableError("no camera on this appliance")
    case = analyse(svc, svc.camera.capture(), "camera")
    return redirect(url_for("cases.detail", case_id=case.id), 303)
