"""Browser upload (one or many slices, a series as a ``.zip``, drag-and-drop) and camera
capture.

Each rendering of the upload form carries a one-time ``form_id``. A second post of the
same form with the same files (a double click, or a refresh of the answer) is answered
with the first post's results instead of storing the cases again; a batch's results are
shown by a GET (post/redirect/get), so refreshing them sends nothing.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from flask import (Blueprint, abort, current_app, flash, redirect, render_template, request,
                   url_for)
from werkzeug.datastructures import FileStorage

from device.exc import CameraUnavailableError, InputError, StorageFullError, TooLargeError
from device.imaging import archive
from device.store.base import CaseInfo, check_info
from device.studies import verdict
from device.web import MAX_FILES_PER_UPLOAD, services
from device.web.auth import current_user, login_required

logger = logging.getLogger(__name__)
bp = Blueprint("upload", __name__)
FORM_ID = re.compile(r"[0-9a-f]{32}")
KEEP_SUBMISSIONS = 200       # answered upload forms remembered (in memory only: the
SUBMISSION_TTL_S = 3600.0    # results hold uploaded file names, never stored)


@dataclass
class Submission:
    """One posted upload form: its results once analysed."""

    user: str
    at: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    results: list = field(default_factory=list)


class Submissions:
    """Upload forms answered recently, by form id and a digest of their files."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: OrderedDict[str, Submission] = OrderedDict()

    def claim(self, key: str, user: str) -> tuple[Submission, bool]:
        """The submission under ``key``, and whether this caller must analyse it."""
        with self._lock:
            now = time.monotonic()
            while self._items and (len(self._items) >= KEEP_SUBMISSIONS or now - next(
                    iter(self._items.values())).at > SUBMISSION_TTL_S):
                self._items.popitem(last=False)
            found = self._items.get(key)
            if found is not None and found.user == user:
                return found, False
            self._items[key] = Submission(user)
            return self._items[key], True

    def get(self, key: str, user: str) -> Submission | None:
        with self._lock:
            found = self._items.get(key)
        return found if found is not None and found.user == user else None


def _submissions() -> Submissions:
    return current_app.extensions.setdefault("neuroedge.uploads", Submissions())


@bp.route("/")
@login_required
def index():
    svc = services()
    response = current_app.make_response(render_template(
        "index.html", model=svc.slot.current.bundle.manifest, camera=svc.camera is not None,
        max_mb=svc.settings.max_upload_mb, form_id=secrets.token_hex(16),
        max_files=MAX_FILES_PER_UPLOAD))
    response.headers["Cache-Control"] = "no-store"  # Back shows a fresh form id
    return response


@bp.route("/upload", methods=["POST"])
@login_required
def upload():
    files = [f for f in request.files.getlist("images") if f and f.filename]
    if not files:
        flash("Choose at least one image.")
        return redirect(url_for("upload.index")), 303
    if len(files) > MAX_FILES_PER_UPLOAD:
        raise InputError(f"at most {MAX_FILES_PER_UPLOAD} files per upload")
    case_info("")  # a bad reference or note refuses the upload before any file
    form_id = request.form.get("form_id", "")
    key = f"{form_id if FORM_ID.fullmatch(form_id) else secrets.token_hex(16)}-" \
          f"{_digest(files)}"
    submission, first = _submissions().claim(key, current_user())
    if first:
        try:
            _analyse_all(files, submission.results)
        finally:
            submission.done.set()
    elif not submission.done.wait(timeout=600):
        abort(503, "the same upload is still being analysed; open the case list shortly")
    results = submission.results
    if not results:  # the first post was interrupted before its first file
        abort(503, "that upload was interrupted; send it again")
    if not any("case" in r for r in results):  # nothing stored: nothing to repeat
        return render_template("results.html", results=results, studies=[], names={}), \
            results[0]["status"]
    if len(results) == 1:
        return redirect(url_for("cases.detail", case_id=results[0]["case"].id), 303)
    return redirect(url_for("upload.results", key=key), 303)


def _digest(files: list) -> str:
    """Of the files' contents, read in chunks (Werkzeug keeps large parts on disk)."""
    total = hashlib.sha256()
    for f in files:
        one = hashlib.sha256()
        for chunk in iter(lambda: f.stream.read(1 << 20), b""):
            one.update(chunk)
        f.stream.seek(0)
        total.update(one.digest())
    return total.hexdigest()[:32]


def read_upload(part: FileStorage, limit: int) -> bytes:
    """The bytes of one uploaded file, measured before it is read: Werkzeug keeps a large
    part in a spool file, and one over ``limit`` must not come into memory (issue 26,
    finding 2). TooLargeError (413) names the limit."""
    stream = part.stream
    stream.seek(0, os.SEEK_END)
    size = stream.tell()
    stream.seek(0)
    if size > limit:
        raise TooLargeError(f"file too large: {size / 2**20:.1f} MB, the limit is "
                            f"{limit / 2**20:g} MB")
    return stream.read()


def case_info(file_name: str) -> CaseInfo:
    """The form's reference and note, and ``file_name`` unless the administrator turned
    keeping file names off (they may hold a patient name: they stay on this appliance,
    like the images). InputError (400) if a field is too long or not text."""
    return check_info(CaseInfo(request.form.get("reference", ""),
                               request.form.get("note", ""),
                               file_name if services().settings.keep_file_names else ""))


def _analyse_all(files: list, results: list) -> None:
    """Analyse each file in turn into ``results`` (each slice of a ``.zip`` as one more
    file); one failing never loses the others' cases, and is never analysed twice (a
    repeated post shows these results)."""
    limit = services().settings.max_upload_bytes
    for f in files:
        try:
            data = read_upload(f, limit)
            if not archive.is_zip(data):
                analyse_one(f.filename, data, f.filename, results)
                continue
            group = secrets.token_hex(16)
            for member, body in archive.members(data, limit):
                analyse_one(f"{f.filename}: {member}", body, member, results, archive=group)
        except InputError as exc:  # the file, or the archive as a whole
            services().telemetry.record_error(type(exc).__name__)
            results.append({"number": len(results) + 1, "name": f.filename,
                            "error": str(exc), "status": exc.status})


def analyse_one(name: str, data: bytes | InputError, file_name: str, results: list,
                source: str = "upload", archive: str | None = None) -> None:
    """One slice into ``results``: its case and study, or why it has none; ``archive``:
    the id of the archive it came from (its slices without a StudyInstanceUID are one
    study)."""
    svc = services()
    line = {"number": len(results) + 1, "name": name}
    try:
        if isinstance(data, InputError):  # a member the archive could not give
            raise data
        case = svc.analyser.analyse(data, source, info=case_info(file_name[-255:]),
                                    archive=archive)
        results.append({**line, "case": case, "study": svc.store.study_of(case.id)})
    except (InputError, StorageFullError) as exc:
        svc.telemetry.record_error(type(exc).__name__)
        results.append({**line, "error": str(exc), "status": exc.status})
    except Exception as exc:  # e.g. a full disk: say so, and go on with the rest
        logger.exception("upload file %d could not be analysed", line["number"])
        svc.telemetry.record_error(type(exc).__name__)
        results.append({**line, "status": 500,
                        "error": f"not analysed ({type(exc).__name__}): send this file "
                                 "again later, or tell the administrator"})


def study_summaries(results: list) -> list[dict]:
    """Each study the slices of ``results`` went to, in order: its verdict over all its
    slices (earlier uploads of the same study included; :func:`device.studies.verdict`),
    its id, how it was grouped, and how many slices this upload added."""
    store = services().store
    ids = list(dict.fromkeys(r["study"] for r in results if r.get("study")))
    summaries = []
    for study_id in ids:
        study = store.study(study_id)
        summaries.append({**verdict(study.cases), "id": study_id,
                          "grouped_by": study.grouped_by,
                          "added": sum(r.get("study") == study_id for r in results)})
    return summaries


@bp.route("/upload/results/<key>")
@login_required
def results(key: str):
    submission = _submissions().get(key, current_user())
    if submission is None or not submission.done.is_set():
        abort(404, "these upload results are no longer kept; the cases are in the case list")
    return render_template("results.html", results=submission.results,
                           studies=study_summaries(submission.results),
                           names={r["case"].id: r["name"] for r in submission.results
                                  if "case" in r})


@bp.route("/capture", methods=["POST"])
@login_required
def capture():
    svc = services()
    if svc.camera is None:  # disabled, picamera2 missing or no sensor: see detect_camera
        raise CameraUnavailableError("no camera on this appliance")
    case = svc.analyser.analyse(svc.camera.capture(), "camera")
    return redirect(url_for("cases.detail", case_id=case.id), 303)
