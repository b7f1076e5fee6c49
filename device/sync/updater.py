"""Bundle updates from the coordinator: download, verify, smoke test, local gate, swap.

:meth:`BundleUpdater.check_and_install` takes the coordinator's answer to
``GET /api/v1/bundles/latest`` and a ``fetch(url, dest)`` function (the HTTP client's),
and either installs the bundle and swaps it into the model slot, or refuses it with a
reason the caller reports to the coordinator. In order:

1. not newer than the version in service, or rolled back by an operator -> "none"/refused
   (while the shipped bundle is in service, the coordinator's bundle of the same version
   is taken: the coordinator starts its versions from the shipped model re-signed with
   its own key, or from another initial model, and devices train on its base);
2. download every listed file into a fresh staging folder;
3. :func:`models.core.bundle.verify_bundle` (signature, every SHA-256, no extra files, newer);
4. same architecture, input, head shapes and labels as the bundle in service (devices
   train that head; its embeddings must stay comparable);
5. smoke test: the candidate loads and gives finite probabilities in [0, 1] on a
   synthetic head slice and the latest stored case, and its ``head.npz`` agrees with
   its model (devices train from ``head.npz``; LiteRT serves ``model.tflite``);
6. the local gate on held-out confirmed cases (:mod:`device.gate`, margin
   ``settings.gate_margin``); skipped, and said so, with fewer than
   :data:`~device.gate.MIN_GATE_CASES`;
7. :meth:`InstalledBundles.install`, then ``slot.swap``: requests in flight finish on
   the old predictor.
"""
from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import re
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from device.config import Settings
from device.gate import MIN_GATE_CASES, gate_cases, judge
from device.hw.status import Indicator, State
from device.imaging import stored_model_input
from device.inference.predictor import Predictor, create_predictor
from device.inference.slot import ModelSlot
from device.store.base import Case, CaseStore
from device.sync.bundles import InstalledBundles
from models.core.head import predict as head_predict
from models.core.bundle import (
    MANIFEST, SIGNATURE, Bundle, BundleError, canonical_bytes, verify_bundle,
)
from models.core.preprocess import InputSpec, preprocess

logger = logging.getLogger(__name__)

HEAD_TOLERANCE = 0.15     # mean |p(model.tflite) - p(head.npz)|; int8 gives ~0.01
MAX_FILES = 16
_BATCH = 16
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

Fetch = Callable[[str, Path], int]


def _copy_if_same(current: Bundle, name: str, offered: Any, dest: Path) -> bool:
    """Copy ``name`` from the bundle in service if the offered manifest lists the same
    SHA-256 for it; False (fetch it) otherwise, or if the local copy fails its hash."""
    ours = current.manifest["files"].get(name)
    theirs = offered.get(name) if isinstance(offered, dict) else None
    if not (isinstance(theirs, dict) and ours and theirs.get("sha256") == ours["sha256"]):
        return False
    try:
        dest.write_bytes(current.read_file(name))  # re-checked against its hash
    except (BundleError, OSError) as exc:
        logger.warning("fetching %s: the copy in service is unusable (%s)", name, exc)
        return False
    return True


def synthetic_slice(size: int = 256) -> np.ndarray:
    """A head-like axial slice (uint8): skull ring, textured brain, ventricles, lesion."""
    yy, xx = (np.mgrid[:size, :size].astype(np.float32) / (size - 1)) * 2 - 1
    r = (xx / 0.8) ** 2 + (yy / 0.9) ** 2
    img = np.zeros((size, size), np.float32)
    img[r <= 1.0] = 200.0
    brain = r <= 0.85
    img[brain] = 110.0 + 12.0 * (np.sin(xx * 23) * np.cos(yy * 19))[brain]
    img[((np.abs(xx) - 0.12) / 0.08) ** 2 + (yy / 0.25) ** 2 <= 1] = 40.0
    img[((xx - 0.35) / 0.15) ** 2 + ((yy + 0.3) / 0.15) ** 2 <= 1] = 230.0
    return np.clip(img, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class UpdateResult:
    """What a check decided: ``action`` is "none", "installed" or "refused". A refusal is
    ``final`` when the model itself was refused, not when it failed on the way (a
    download, a size, hash or signature check): that is tried again."""

    action: str
    version: int | None
    reason: str
    metrics: dict[str, Any] = field(default_factory=dict)
    final: bool = True

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (NaN already mapped to None) for the report to the coordinator."""
        return asdict(self)


class _Refused(Exception):
    def __init__(self, reason: str, metrics_: dict[str, Any] | None = None,
                 final: bool = True) -> None:
        super().__init__(reason)
        self.reason, self.metrics, self.final = reason, metrics_ or {}, final


class BundleUpdater:
    """Decides whether the coordinator's latest bundle replaces the one in service.

    Parameters
    ----------
    settings : Settings
        Uses ``predictor`` (the registry name) and ``gate_margin``.
    slot : ModelSlot
        The serving slot; its current predictor is the baseline, and is swapped.
    store : CaseStore
        Confirmed cases for the gate, the latest case for the smoke test.
    installed : InstalledBundles
        Where bundles are staged and installed; its trusted keys verify downloads.
    status : Indicator, optional
        Shows SYNCING while a check runs.
    make_predictor : callable, optional
        ``Bundle -> Predictor``; default ``create_predictor(settings.predictor, b)``.
    """

    def __init__(self, settings: Settings, slot: ModelSlot, store: CaseStore,
                 installed: InstalledBundles, status: Indicator | None = None,
                 make_predictor: Callable[[Bundle], Predictor] | None = None) -> None:
        self.settings, self.slot, self.store = settings, slot, store
        self.installed, self.status = installed, status
        self.make_predictor = make_predictor or (
            lambda b: create_predictor(settings.predictor, b))
        self._lock = threading.Lock()  # one check or rollback at a time

    @contextlib.contextmanager
    def _activity(self) -> Iterator[None]:
        if self.status is None:
            yield
        else:
            with self.status.activity(State.SYNCING):
                yield

    def check_and_install(self, latest: dict, fetch: Fetch) -> UpdateResult:
        """Install the coordinator's latest bundle if it passes every check.

        Parameters
        ----------
        latest : dict
            ``{"version", "manifest", "signature", "files": {name: url}}`` as served by
            ``GET /api/v1/bundles/latest``.
        fetch : callable
            ``fetch(url, dest)`` downloads one file to ``dest``, returns its size.

        Returns
        -------
        UpdateResult
            "none" (nothing newer), "installed" (swapped in) or "refused" (reason and
            metrics for the coordinator; the old bundle keeps serving).

        Raises
        ------
        Exception
            What ``fetch`` raises other than ValueError (network errors: try again
            later; a ValueError refuses the bundle), and OSError if the disk fails while
            installing; the staging folder is removed and nothing is swapped.
        """
        with self._lock, self._activity():
            try:
                result = self._check(latest, fetch)
            finally:
                self.installed.cleanup_staging()
        log = logger.warning if result.action == "refused" else logger.info
        log("bundle update %s (v%s): %s", result.action, result.version, result.reason)
        return result

    def rollback(self) -> Predictor:
        """Operator rollback: PREVIOUS becomes CURRENT and is swapped into the slot.

        Raises ``RollbackError`` (nothing changed) if there is no usable previous bundle.
        """
        with self._lock:
            bundle = verify_bundle(self.installed.rollback(), self.installed.trusted_keys)
            predictor = self.make_predictor(bundle)
            self.slot.swap(predictor)
            return predictor

    # -- the steps -----------------------------------------------------------------------

    def _check(self, latest: dict, fetch: Fetch) -> UpdateResult:
        current = self.slot.current.global_predictor  # a clinic's own head is not judged
        version = latest.get("version") if isinstance(latest, dict) else None
        if type(version) is not int or version < 1:
            return UpdateResult("refused", None, "coordinator answer has no valid version")
        # The shipped bundle is signed with the development key and may not be the model
        # the coordinator's versions start from: an offer of its version (with files: a
        # Flower reply without any only echoes the version) counts as newer.
        replaces_shipped = bool(latest.get("files")) and self._serving_shipped(current)
        floor = current.version - 1 if replaces_shipped else current.version
        if version <= floor:
            return UpdateResult("none", version, f"v{version} is not newer than "
                                f"v{current.version} in service")
        if version in self.installed.rejected_versions():
            return UpdateResult("refused", version, f"v{version} was rolled back by an "
                                "operator; not installing it again")
        staged = self.installed.staging_dir(version)
        try:
            self._download(latest, fetch, staged, current.bundle)
            bundle = verify_bundle(staged, self.installed.trusted_keys, min_version=floor)
            if bundle.version != version:
                raise _Refused(f"coordinator announced v{version} but the bundle is "
                               f"v{bundle.version}")
            self._check_compatible(current.bundle, bundle)
            found = self._evaluate(current, bundle)
            path = self.installed.install(staged, version)
        except BundleError as exc:  # size, hash, signature: maybe the transport's fault
            return UpdateResult("refused", version, f"bundle refused: {exc}", final=False)
        except _Refused as exc:
            return UpdateResult("refused", version, exc.reason, exc.metrics, exc.final)
        # The tested predictor names the staging path; serve one of the installed folder.
        predictor = self.make_predictor(verify_bundle(path, self.installed.trusted_keys))
        self.slot.swap(predictor)
        return UpdateResult("installed", version, found["note"], found["metrics"])

    def _serving_shipped(self, current: Predictor) -> bool:
        return current.bundle.path.resolve() == self.installed.shipped.resolve()

    def _download(self, latest: dict, fetch: Fetch, staged: Path, current: Bundle) -> None:
        """Every listed file into ``staged``; a file the bundle in service holds with
        the hash the offer's manifest gives is copied, not fetched (a round changes
        the head only). The result is verified as a whole either way."""
        files = latest.get("files")
        offered = latest.get("manifest")
        offered = offered.get("files") if isinstance(offered, dict) else None
        if not isinstance(files, dict) or not files or len(files) > MAX_FILES:
            raise _Refused(f"coordinator must list 1-{MAX_FILES} bundle files")
        for name, url in files.items():
            # Names become paths: only flat, safe names (no separators, no dot files).
            if not (isinstance(name, str) and _SAFE_NAME.fullmatch(name)
                    and isinstance(url, str) and url):
                raise _Refused(f"coordinator lists an unsafe file name {name!r:.80}")
            if _copy_if_same(current, name, offered, staged / name):
                continue
            try:
                fetch(url, staged / name)
            except ValueError as exc:  # refused or unsafe download: tried again later
                raise _Refused(f"download of {name} failed: {exc}", final=False) from exc
        # Older coordinators send manifest and signature inline only.
        if MANIFEST not in files and isinstance(latest.get("manifest"), dict):
            (staged / MANIFEST).write_bytes(canonical_bytes(latest["manifest"]) + b"\n")
        if SIGNATURE not in files and isinstance(latest.get("signature"), str):
            try:
                signature = base64.b64decode(latest["signature"], validate=True)
            except (binascii.Error, ValueError) as exc:
                raise _Refused(f"signature is not base64: {exc}") from exc
            (staged / SIGNATURE).write_bytes(signature)

    @staticmethod
    def _check_compatible(current: Bundle, candidate: Bundle) -> None:
        diffs = [f"{key} {candidate.manifest[key]!r} (serving {current.manifest[key]!r})"
                 for key in ("architecture", "head", "labels")
                 if candidate.manifest[key] != current.manifest[key]]
        cur_in = InputSpec.from_dict(current.manifest["input"])
        new_in = InputSpec.from_dict(candidate.manifest["input"])
        if cur_in != new_in:
            diffs.append(f"input {new_in} (serving {cur_in})")
        if diffs:
            raise _Refused("bundle does not fit this appliance: " + "; ".join(diffs))

    def _evaluate(self, current: Predictor, bundle: Bundle) -> dict[str, Any]:
        """Smoke test, head check and local gate; raises _Refused, returns note+metrics."""
        try:
            candidate = self.make_predictor(bundle)
            head = bundle.load_head()
        except Exception as exc:  # any runtime failure: this bundle cannot serve
            raise _Refused(f"candidate does not load: {exc}") from exc
        smoke = [preprocess(synthetic_slice(), candidate.input_spec)]
        newest = self.store.list("all", limit=1)
        smoke += self._case_images(newest, candidate.input_spec)[0]
        outputs = [self._run(candidate, np.stack(smoke), head, "smoke test")]
        cases = gate_cases(self.store)
        labels: list[int] = []
        p_cur: list[np.ndarray] = []
        unreadable = 0
        for start in range(0, len(cases), _BATCH):
            images, ok = self._case_images(cases[start:start + _BATCH], candidate.input_spec)
            unreadable += len(cases[start:start + _BATCH]) - len(ok)
            if not images:
                continue
            x = np.stack(images)
            outputs.append(self._run(candidate, x, head, "local gate"))
            p_cur.append(current.probabilities(x)[0])
            labels += [int(c.confirmed_label) for c in ok]  # type: ignore[arg-type]
        prob = np.concatenate([o[0] for o in outputs])
        mismatch = float(np.mean(np.abs(np.concatenate([o[1] for o in outputs]) - prob)))
        info: dict[str, Any] = {"gate_cases": len(labels), "unreadable_cases": unreadable,
                                "head_mismatch": round(mismatch, 4)}
        if mismatch > HEAD_TOLERANCE:
            raise _Refused(f"head.npz does not match model.tflite (mean probability "
                           f"difference {mismatch:.3f} > {HEAD_TOLERANCE})", info)
        if len(labels) < MIN_GATE_CASES:
            info["gate"] = "skipped"
            return {"note": f"installed; local gate skipped: {len(labels)} held-out "
                            f"confirmed cases, need {MIN_GATE_CASES}", "metrics": info}
        return self._gate(current, candidate, np.array(labels), np.concatenate(p_cur),
                          prob[len(smoke):], info)

    def _gate(self, current: Predictor, candidate: Predictor, y: np.ndarray,
              p_cur: np.ndarray, p_new: np.ndarray, info: dict[str, Any]) -> dict[str, Any]:
        verdict = judge(y, p_cur, p_new, (current.threshold, candidate.threshold),
                        float(self.settings.gate_margin))
        info.update(current=verdict.current, candidate=verdict.candidate,
                    gate="passed" if verdict.passed else "failed")
        if not verdict.passed:
            raise _Refused(f"local gate: v{candidate.version} worse than "
                           f"v{current.version}: {verdict.figures}", info)
        return {"note": f"installed; local gate passed: {verdict.figures}", "metrics": info}

    @staticmethod
    def _run(predictor: Predictor, x: np.ndarray, head: dict[str, np.ndarray],
             step: str) -> tuple[np.ndarray, np.ndarray]:
        """Candidate probabilities and head.npz's probabilities; _Refused if unusable."""
        try:
            prob, emb = predictor.probabilities(x)
        except Exception as exc:
            raise _Refused(f"candidate fails the {step}: {exc}") from exc
        prob, emb = np.asarray(prob, np.float64).reshape(-1), np.asarray(emb, np.float32)
        dim = head["hidden/kernel"].shape[0]
        if prob.shape != (len(x),) or emb.shape != (len(x), dim):
            raise _Refused(f"candidate fails the {step}: outputs {prob.shape} and "
                           f"{emb.shape}, expected ({len(x)},) and ({len(x)}, {dim})")
        if not (np.isfinite(prob).all() and np.isfinite(emb).all()):
            raise _Refused(f"candidate fails the {step}: non-finite output")
        if (prob < 0).any() or (prob > 1).any():
            raise _Refused(f"candidate fails the {step}: probability outside [0, 1]")
        return prob, head_predict(head, emb)

    def _case_images(self, cases: list[Case], spec: InputSpec
                     ) -> tuple[list[np.ndarray], list[Case]]:
        """Preprocessed images of the cases that still decode, and those cases."""
        images, ok = [], []
        for case in cases:
            try:
                images.append(stored_model_input(self.store.image_path(case), spec))
                ok.append(case)
            except (OSError, ValueError) as exc:  # deleted or unusable: skip, never fail
                logger.info("a stored case image is unusable for the update check: %s",
                            type(exc).__name__)
        return images, ok
