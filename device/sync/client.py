"""HTTP transport of the :class:`~device.sync.link.CoordinatorLink` (see docs/protocol.md).

Every failure is one of the link's two kinds, because the caller must act differently:

- :class:`CoordinatorUnavailable` (5xx, connection refused, timeout, TLS failure, an
  answer that is not JSON, 401/408/429): *retry later*, keep the update.
- :class:`CoordinatorRefused` / :class:`UpdateRefused` (any other 4xx): the coordinator
  read the request and said no. Retrying the same bytes cannot help; never retry.

Traffic counters ``bytes_up`` / ``bytes_down`` count HTTP *bodies* only (the multipart or
JSON request body, the response body as received); headers, TLS and TCP overhead are
excluded, so they are a lower bound of what crossed the wire (a few hundred bytes per
request short). Only exchanges that got an answer are counted.

The bearer token is never logged and is left out of ``repr``.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
import urllib3

from device.exc import ConfigError
from device.sync.link import (CoordinatorRefused, CoordinatorUnavailable, UnsafeDownload,
                              UpdateRefused)

logger = logging.getLogger(__name__)

API = "/api/v1"
# 401: the token is wrong or revoked -- the operator fixes it and the update stays valid;
# 408/425/429: the server asks to come back later.
RETRYABLE_4XX = frozenset({401, 408, 425, 429})
DEFAULT_REASONS = {400: "malformed", 409: "conflict", 413: "too_large", 422: "rejected"}
CHUNK = 64 * 1024
# A JSON answer (an acknowledgement, the latest bundle's listing) is a few KB: more, or
# one that has not fully arrived within this many read timeouts, is not the coordinator's.
MAX_ANSWER = 1 << 20
ANSWER_TIMEOUTS = 2


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or {"http": 80, "https": 443}.get(scheme, 0)
    return scheme, (parts.hostname or "").lower(), port


class CoordinatorClient:
    """One device's connection to the coordinator.

    Parameters
    ----------
    url
        Base URL of the coordinator, e.g. ``https://coord.example:8443``.
    token
        The device's bearer token (``Authorization: Bearer ...``).
    ca_cert
        CA certificate that signed the coordinator's TLS certificate; ``None`` uses the
        system's trust store. Verification is never switched off.
    timeout
        Seconds for connecting and for each read.
    """

    def __init__(self, url: str, token: str, ca_cert: Path | None = None,
                 timeout: float = 30) -> None:
        if _origin(url)[0] not in ("http", "https") or not _origin(url)[1]:
            raise ConfigError(f"coordinator_url: {url!r} is not http(s)://host[:port]")
        if ca_cert is not None and not Path(ca_cert).is_file():
            # requests would raise a bare OSError at the first request instead
            raise ConfigError(f"coordinator_ca: {ca_cert} is not a file")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.bytes_up = 0
        self.bytes_down = 0
        self._count_lock = threading.Lock()
        self._session = requests.Session()
        self._session.verify = str(ca_cert) if ca_cert is not None else True
        self._session.headers["Authorization"] = f"Bearer {token}"
        self._session.headers["User-Agent"] = "neuroedge-device"

    def __repr__(self) -> str:
        return f"CoordinatorClient({self.url!r})"

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> "CoordinatorClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- protocol ---------------------------------------------------------------------

    def post_update(self, payload: bytes, meta: dict) -> dict:
        """Send one head update (multipart ``weights`` npz + ``meta`` JSON).

        Returns
        -------
        The coordinator's answer ``{"update_id", "round", "duplicate", "round_closed"}``
        (202 accepted, 200 duplicate of an ``update_id`` already received).

        Raises
        ------
        UpdateRefused
            4xx other than 401/408/425/429: malformed, refused content (``reason``
            ``payload``, ``norm``, ``examples``, ``base_version``, ``stale``), a second
            update in the round (409), too large (413). Do not retry.
        CoordinatorUnavailable
            Retry later with the same ``update_id``.
        """
        files = {"weights": ("update.npz", payload, "application/octet-stream")}
        data = {"meta": json.dumps(meta)}
        response = self._send("POST", f"{API}/updates", refused=UpdateRefused,
                              files=files, data=data)
        answer = self._json(response)
        if answer.get("update_id") != meta.get("update_id"):
            # Deleting the update on an answer that does not name it would lose it.
            raise CoordinatorUnavailable("coordinator answer does not acknowledge the "
                                         "update", response.status_code)
        return answer

    def latest(self, model_version: int | None = None) -> dict:
        """The latest bundle: ``{"version", "manifest", "signature", "files"}``.

        ``model_version`` (the version this device runs) is sent as ``X-Model-Version``
        so the coordinator's dashboard shows it.
        """
        headers = {"X-Model-Version": str(int(model_version))} \
            if model_version is not None else {}
        answer = self._json(self._send("GET", f"{API}/bundles/latest", headers=headers))
        version, files = answer.get("version"), answer.get("files", {})
        if type(version) is not int or version < 1 or not isinstance(files, dict):
            raise CoordinatorUnavailable("coordinator answer has no valid version and "
                                         "file list")
        return answer

    def report(self, kind: str, version: int | None, reason: str = "") -> dict:
        """Tell the coordinator what happened to a bundle (``bundle_refused``,
        ``bundle_installed`` or ``rollback``), or why this appliance did not train on it
        (``training_skipped``); recorded in its audit log."""
        body = {"kind": kind, "version": version, "reason": reason}
        return self._json(self._send("POST", f"{API}/reports", json=body))

    def download(self, url_or_path: str, dest: Path, max_bytes: int) -> int:
        """Stream a file of the coordinator to ``dest``; returns its size in bytes.

        The bytes go to ``dest`` + ``.tmp`` first and are renamed into place only when
        complete, so ``dest`` is never half-written. Only URLs of the coordinator's own
        origin (scheme, host, port) are fetched -- a tampered ``files`` map cannot make
        the device send its token elsewhere -- and redirects are not followed.

        Raises
        ------
        UnsafeDownload
            Another origin, or more than ``max_bytes``.
        CoordinatorRefused, CoordinatorUnavailable
            As for the other requests (e.g. 404 for a file that does not exist).
        """
        target = urljoin(self.url + "/", url_or_path)
        if _origin(target) != _origin(self.url):
            raise UnsafeDownload(f"refusing to download from another origin than "
                                 f"{self.url}", "origin")
        dest = Path(dest)
        tmp = dest.with_name(dest.name + ".tmp")
        response = self._send("GET", target, stream=True)
        size = 0
        try:
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise UnsafeDownload(f"file of {declared} bytes exceeds {max_bytes}", "size")
            with open(tmp, "wb") as fh:
                for chunk in response.iter_content(CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        raise UnsafeDownload(f"file exceeds {max_bytes} bytes", "size")
                    fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, dest)
        except requests.RequestException as exc:
            tmp.unlink(missing_ok=True)
            raise CoordinatorUnavailable(f"download interrupted: {type(exc).__name__}") \
                from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            response.close()
            self._count(0, size)
        return size

    # -- plumbing ---------------------------------------------------------------------

    def _send(self, method: str, path_or_url: str, *, refused: type = CoordinatorRefused,
              stream: bool = False, **kwargs: Any) -> requests.Response:
        url = path_or_url if "://" in path_or_url else self.url + path_or_url
        request = self._session.prepare_request(requests.Request(method, url, **kwargs))
        body = request.body
        sent = len(body) if isinstance(body, (bytes, str)) else 0
        try:
            response = self._session.send(request, timeout=self.timeout, stream=True,
                                          allow_redirects=False)
        except requests.RequestException as exc:
            # The exception text holds the URL, never the headers; still keep it short.
            logger.info("coordinator %s %s failed: %s", method, urlsplit(url).path,
                        type(exc).__name__)
            raise CoordinatorUnavailable(f"coordinator unreachable: {type(exc).__name__}") \
                from None
        status = response.status_code
        if stream and 200 <= status < 300:
            self._count(sent, 0)
            return response  # the caller reads the body, bounded (download)
        _read_answer(response, self.timeout * ANSWER_TIMEOUTS)
        self._count(sent, len(response.content))
        if 200 <= status < 300:
            return response
        if status >= 500 or status in RETRYABLE_4XX:
            logger.warning("coordinator %s %s answered %d", method, urlsplit(url).path,
                           status)
            raise CoordinatorUnavailable(f"coordinator answered {status}: "
                                         f"{_error_of(response)[0]}", status)
        error, reason = _error_of(response)
        if 300 <= status < 400:
            error, reason = "unexpected redirect", "redirect"
        logger.warning("coordinator refused %s %s: %d %s", method, urlsplit(url).path,
                       status, reason)
        raise refused(status, error, reason or DEFAULT_REASONS.get(status, "refused"))

    def _json(self, response: requests.Response) -> dict:
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            # e.g. a captive portal or proxy page: not the coordinator, try again later.
            raise CoordinatorUnavailable("coordinator answer is not a JSON object",
                                         response.status_code)
        return body

    def _count(self, up: int, down: int) -> None:
        with self._count_lock:
            self.bytes_up += up
            self.bytes_down += down


def _read_answer(response: requests.Response, seconds: float) -> None:
    """Read a JSON answer's body into ``response`` (``.content``/``.json()`` then work),
    bounded in size and in time: a coordinator, or something in its place, that drips
    bytes or never ends the body cannot hold the sync. CoordinatorUnavailable if so."""
    deadline = time.monotonic() + seconds
    body, late = bytearray(), False
    try:
        # read1 returns what has arrived; iter_content would wait for a full chunk.
        while chunk := response.raw.read1(CHUNK, decode_content=True):
            body += chunk
            late = time.monotonic() > deadline
            if late or len(body) > MAX_ANSWER:
                break
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise CoordinatorUnavailable(f"coordinator answer interrupted: {type(exc).__name__}",
                                     response.status_code) from None
    finally:
        response.close()
    if len(body) > MAX_ANSWER:
        raise CoordinatorUnavailable("coordinator answer is too large", response.status_code)
    if late:
        raise CoordinatorUnavailable(f"coordinator answer took longer than {seconds:g} s",
                                     response.status_code)
    response._content = bytes(body)  # what requests does when it reads the body itself


def _error_of(response: requests.Response) -> tuple[str, str | None]:
    """(error message, reason) from a JSON error body, else from the status."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        reason = body.get("reason")
        return str(body.get("error", ""))[:300], reason if isinstance(reason, str) else None
    return (response.reason or f"HTTP {response.status_code}")[:300], None
