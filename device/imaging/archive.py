"""A series uploaded as one ``.zip``: its slices, one by one, within bounds.

A PACS or a viewer exports a series as a folder of DICOM files, which a browser sends
as a ``.zip``. The archive is read in memory (never unpacked to disk) member by member:
at most :data:`MAX_MEMBERS` slices, each at most the upload limit once inflated, all
together at most :data:`MAX_TOTAL_FACTOR` times it, each member's inflated size checked
as it is read (a zip's own size fields can lie). Folders, and the ``__MACOSX/`` and
``._name`` files macOS adds, are skipped. An archive with a member named outside it
(``../x``, ``/x``, ``C:\\x``), encrypted, or with a zip inside, is refused as a whole.
"""
from __future__ import annotations

import io
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import PurePosixPath

from device.exc import InputError, TooLargeError

ZIP_MAGIC = b"PK\x03\x04"
MAX_MEMBERS = 400         # a series of slices; more is not one series
MAX_TOTAL_FACTOR = 20     # all members together: this many times the upload limit


def is_zip(data: bytes) -> bool:
    return data[:4] == ZIP_MAGIC


def _skipped(name: str) -> bool:
    """Folders and what macOS adds to an archive: not slices, and not worth a line."""
    parts = PurePosixPath(name).parts
    return name.endswith("/") or (bool(parts) and (parts[0] == "__MACOSX"
                                                   or parts[-1].startswith("._")
                                                   or parts[-1] == ".DS_Store"))


def _check_name(name: str) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise InputError(f"the archive has a member outside it ({name[:80]!r}): refused")


def members(data: bytes, limit: int) -> Iterator[tuple[str, bytes | InputError]]:
    """(name, bytes) of each slice in the archive ``data``, or (name, the error) for a
    member that cannot be read, so that the others still are; ``limit``: the upload
    limit per file. Raises InputError (400) for a damaged, encrypted or unsafe archive
    and TooLargeError (413) past its bounds, before the first member or, for the total,
    when it is reached."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = [i for i in archive.infolist() if not _skipped(i.filename)]
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise InputError(f"not a readable .zip archive: {exc}") from None
    for info in infos:
        _check_name(info.filename)
        if info.flag_bits & 0x1:
            raise InputError("the archive is encrypted: export the series without a password")
    if not infos:
        raise InputError("the archive holds no file")
    if len(infos) > MAX_MEMBERS:
        raise TooLargeError(f"the archive holds {len(infos)} files; at most {MAX_MEMBERS} "
                            "slices per archive")
    total = 0
    for info in infos:
        try:
            with archive.open(info) as fh:
                body = fh.read(limit + 1)  # never more than the limit comes into memory
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError,
                NotImplementedError) as exc:
            yield info.filename, InputError(f"damaged in the archive: {exc}")
            continue
        total += len(body)
        if total > MAX_TOTAL_FACTOR * limit:
            raise TooLargeError(f"the archive unpacks to more than "
                                f"{MAX_TOTAL_FACTOR * limit / 2**20:g} MB")
        if len(body) > limit:
            yield info.filename, TooLargeError(f"more than {limit / 2**20:g} MB once "
                                               "unpacked")
        elif is_zip(body):
            yield info.filename, InputError("an archive inside the archive: not unpacked")
        else:
            yield info.filename, body
