"""Studies: the list, a study's page (its verdict by a stated rule, a strip of its
slices' probabilities in slice order, the most suspicious first) and the clinician's
label for the whole study (:mod:`device.store.studies`)."""
from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for

from device.studies import verdict
from device.web import services
from device.web.auth import current_user, login_required
from device.web.cases import form_label

bp = Blueprint("studies", __name__, url_prefix="/studies")
PAGE = 50
STRIP_BAR, STRIP_HEIGHT = 12, 80  # px per slice, px of a probability of 1


@bp.route("/")
@login_required
def index():
    store = services().store
    total = store.count_studies()
    last = max(1, -(-total // PAGE))
    page = min(max(request.args.get("page", 1, type=int) or 1, 1), last)
    return render_template("studies.html", studies=store.list_studies(PAGE, (page - 1) * PAGE),
                           total=total, page=page, pages=last)


@bp.route("/<study_id>")
@login_required
def detail(study_id: str):
    store = services().store
    study = store.study(study_id)
    return render_template("study.html", study=study, summary=verdict(study.cases),
                           references=store.study_references(study_id), bar=STRIP_BAR,
                           height=STRIP_HEIGHT)


@bp.route("/<study_id>/label", methods=["POST"])
@login_required
def label(study_id: str):
    study = services().store.label_study(
        study_id, form_label("0 (no tumour in any slice) or 1 (tumour)"), current_user())
    flash("Study labelled no tumour: its unlabelled slices are labelled no tumour too."
          if study.label == 0 else
          "Study labelled tumour. Label the slices that show it: they train the model.")
    return redirect(url_for("studies.detail", study_id=study_id), 303)
