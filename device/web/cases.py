"""Cases: list with filters, detail with result and heat map, confirm/correct, delete,
CSV export (metadata and metrics only, never images)."""
from __future__ import annotations

import io
import logging

from flask import (Blueprint, Response, abort, flash, redirect, render_template, request,
                   send_file, session, url_for)

from device.admission import analysis_bytes
from device.exc import InputError, UnusableImageError
from device.imaging.thumbnail import stored_gray, thumbnail_png
from device.inference.heatmap import FULL_SCALE_DROP
from device.web import services
from device.web.auth import current_user, login_required

logger = logging.getLogger(__name__)
bp = Blueprint("cases", __name__, url_prefix="/cases")
FILTERS = ("all", "unconfirmed", "confirmed", "disagreed")
# What each status means to a clinician ("confirmed" is the store's name for a label
# that agrees with the model; both labelled statuses are confirmed cases).
STATUS_TEXT = {"all": "all", "unconfirmed": "not labelled yet",
               "confirmed": "labelled, agrees with the model",
               "disagreed": "labelled, corrects the model"}
PAGE = 50


def form_label(meaning: str) -> int:
    """The posted ``label``, 0 or 1; InputError (400) saying what they mean otherwise."""
    label = request.form.get("label", "")
    if label not in ("0", "1"):
        raise InputError(f"label must be {meaning}")
    return int(label)


@bp.route("/")
@login_required
def index():
    wanted = request.args.get("id", "").strip().lower()
    if wanted:  # "go to case": the 8 characters the pages show are enough
        found = services().store.ids_starting_with(wanted)
        if len(found) == 1:
            return redirect(url_for("cases.detail", case_id=found[0]))
        flash(f"More than one case starts with {wanted}: type more of its id."
              if found else f"No case starts with {wanted}.")
    status = request.args.get("status", "all")
    if status not in FILTERS:
        raise InputError(f"unknown filter {status!r}; choose from {', '.join(FILTERS)}")
    reference = request.args.get("reference", "").strip()
    store = services().store
    total = store.count(status, reference)
    # A page that is not a number, or before the first, shows the first; one past the
    # last (however large: it must never reach SQLite) shows the last.
    last = max(1, -(-total // PAGE))
    page = min(max(request.args.get("page", 1, type=int) or 1, 1), last)
    cases = store.list(status, PAGE, (page - 1) * PAGE, reference)
    return render_template("cases.html", cases=cases, status=status, filters=FILTERS,
                           page=page, pages=last, total=total, page_size=PAGE,
                           reference=reference,
                           infos={c.id: store.get_info(c.id) for c in cases})


@bp.route("/<case_id>")
@login_required
def detail(case_id: str):
    store = services().store
    study_id = store.study_of(case_id)
    return render_template("case.html", case=store.get(case_id), info=store.get_info(case_id),
                           study=None if study_id is None else store.study(study_id),
                           head=store.head_of(case_id),
                           full_scale_drop=FULL_SCALE_DROP,
                           heatmap_version=services().slot.current.version,
                           heatmap_head=services().slot.current.head_id)


@bp.route("/<case_id>/confirm", methods=["POST"])
@login_required
def confirm(case_id: str):
    label = form_label("0 (no tumour) or 1 (tumour)")
    store = services().store
    before = store.get(case_id)
    store.confirm(case_id, label, current_user())
    if before.confirmed_label is not None:  # who replaced whose label: in the journal
        logger.info("case %s: label %d by %s replaces %d by %s", case_id, label,
                    current_user(), before.confirmed_label, before.confirmed_by)
    flash("Label recorded.")
    study = request.form.get("return_to", "")  # labelled from its study's page
    if study and study == store.study_of(case_id):
        return redirect(url_for("studies.detail", study_id=study), 303)
    return redirect(url_for("cases.detail", case_id=case_id), 303)


@bp.route("/<case_id>/info", methods=["POST"])
@login_required
def info(case_id: str):
    """The clinic's reference and note for the case (they never leave the appliance)."""
    services().store.set_info(case_id, request.form.get("reference", ""),
                              request.form.get("note", ""))
    flash("Reference and note saved.")
    return redirect(url_for("cases.detail", case_id=case_id), 303)


@bp.route("/<case_id>/delete", methods=["POST"])
@login_required
def delete(case_id: str):
    """A clinician may delete an unlabelled case (a wrong upload); a labelled one is
    training data, which only an administrator may remove. Each deletion is logged."""
    store = services().store
    if store.get(case_id).confirmed_label is not None and session.get("role") != "admin":
        abort(403, "this case is labelled and trains the model: only an administrator can "
                   "delete it")
    store.delete(case_id)
    logger.info("case %s deleted by %s", case_id, current_user())
    flash("Case deleted (image removed).")
    return redirect(url_for("cases.index"), 303)


@bp.route("/<case_id>/image")
@login_required
def image(case_id: str):
    """The slice as stored: the uploaded PNG or JPEG without its metadata."""
    store = services().store
    path = store.image_path(store.get(case_id))
    return _image(path, "image/jpeg" if path.suffix == ".jpg" else "image/png")


@bp.route("/<case_id>/pixels")
@login_required
def pixels(case_id: str):
    """The slice's grey values for the viewer's window/level: a DICOM's stored values
    (before any LUT), else the stored image's (a 16-bit PNG keeps its depth); little-
    endian ``uint8`` or ``uint16``, row by row; the size, depth and the offset that
    restores a signed DICOM's values in headers."""
    svc = services()
    case = svc.store.get(case_id)
    raw = svc.store.raw_values(case.id)
    data, offset = raw if raw is not None else (svc.store.image_path(case).read_bytes(), 0)
    with svc.analyser.memory.hold(analysis_bytes(data)):  # large images take turns
        try:
            values = stored_gray(data)
        except ValueError as exc:
            raise UnusableImageError(f"the slice's values cannot be read: {exc}") from None
        response = Response(values.astype("<" + values.dtype.str[1:], copy=False).tobytes(),
                            mimetype="application/octet-stream")
    response.headers.update({"X-Width": str(values.shape[1]),
                             "X-Height": str(values.shape[0]),
                             "X-Bits": str(8 * values.itemsize), "X-Offset": str(offset),
                             "Cache-Control": "private, no-store"})
    return response


@bp.route("/<case_id>/thumbnail.png")
@login_required
def thumbnail(case_id: str):
    """A 64-pixel preview for the case list."""
    store = services().store
    response = Response(thumbnail_png(store.image_path(store.get(case_id)).read_bytes()),
                        mimetype="image/png")
    response.headers["Cache-Control"] = "private, no-store"
    return response


@bp.route("/<case_id>/heatmap.png")
@login_required
def heatmap(case_id: str):
    svc = services()
    return _image(svc.analyser.heatmap(svc.store.get(case_id)), "image/png")


def _image(path, mimetype: str) -> Response:
    response = send_file(path, mimetype=mimetype, max_age=0)
    response.headers["Cache-Control"] = "private, no-store"
    return response


@bp.route("/export.csv")
@login_required
def export_csv():
    buf = io.StringIO()
    services().store.export_csv(buf)
    return Response(buf.getvalue(), mimetype="text/csv",
                    headers={"Content-Disposition": "attachment; filename=cases.csv"})
