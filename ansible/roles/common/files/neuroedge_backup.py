#!/usr/bin/python3
"""Back up and restore a NeuroEdge host's state folders, SQLite databases included.

    neuroedge-backup create --out ARCHIVE.tar FOLDER [FOLDER ...]
    neuroedge-backup restore ARCHIVE.tar [--force]
    neuroedge-backup show ARCHIVE.tar

Every SQLite database in the folders is copied with SQLite's online backup API while the
services run, and checked (``PRAGMA integrity_check``); everything else is copied as
is. The databases are copied first, so every row they hold finds its file (images,
payloads and bundles are written before the row naming them commits); a file written
after that is copied too and, having no row, removed by the service at its next start.
The archive (mode 0600: it holds keys and tokens) starts with NEUROEDGE-BACKUP.json:
the folders, and each database's tables with their row counts.

``restore`` refuses a folder that exists and is not empty unless ``--force``; then the
old folder is kept beside as FOLDER.pre-restore-TIME. Each folder is unpacked beside
its place, its databases checked against the manifest, and only then renamed into
place. Stop the services first (restore.yml does). Python standard library only: this
runs with the system python3 of a Pi or the coordinator, as root.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import socket
import sqlite3
import sys
import tarfile
import tempfile
import time
from pathlib import Path, PurePosixPath

MANIFEST = "NEUROEDGE-BACKUP.json"
SQLITE_MAGIC = b"SQLite format 3\x00"
SIDE_FILES = ("-wal", "-shm", "-journal")
BUSY_TIMEOUT_S = 30.0
# Members are checked by _folder_of; where Python has extraction filters, "tar" keeps
# owners and modes (the "data" filter would leave every file to root).
EXTRACT = {"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}


class BackupError(Exception):
    """A backup or restore that cannot go on; the message says why."""


def is_sqlite(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(16) == SQLITE_MAGIC
    except OSError:
        return False


def skipped(path: Path) -> bool:
    """SQLite's side files (the snapshot has their content) and durable-write temps."""
    name = path.name
    return name.endswith(SIDE_FILES) or name.startswith(".tmp-") or (
        name.startswith(".") and name.endswith(".tmp"))


def walk(folder: Path):
    """Every regular file under ``folder`` (symbolic links are not followed)."""
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            if path.is_file() and not path.is_symlink() and not skipped(path):
                yield path


def table_counts(db: sqlite3.Connection) -> dict[str, int]:
    names = [r[0] for r in db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
    return {n: db.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0] for n in sorted(names)}


def check_database(path: Path) -> dict[str, int]:
    """Row counts per table of a database copy that passes ``PRAGMA integrity_check``
    (immutable: no lock, no side file, as nothing else has the copy open)."""
    db = sqlite3.connect(f"{Path(path).resolve().as_uri()}?immutable=1", uri=True)
    try:
        result = db.execute("PRAGMA integrity_check").fetchone()[0]
        if result != "ok":
            raise BackupError(f"{path}: integrity check failed: {result}")
        return table_counts(db)
    finally:
        db.close()


def snapshot(path: Path, out: Path) -> dict[str, int]:
    """Copy a live database with the online backup API; side files SQLite creates on
    the way get the database's owner (root must not take them from the service)."""
    owner = path.stat()
    side = [Path(f"{path}{s}") for s in SIDE_FILES]
    before = {p for p in side if p.exists()}
    src = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S)
    dst = sqlite3.connect(out)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()
        for p in side:
            if p.exists() and p not in before:
                os.chown(p, owner.st_uid, owner.st_gid)
    return check_database(out)


def member_name(path: Path) -> str:
    return str(path.resolve()).lstrip("/")


def create(out: Path, folders: list[Path]) -> dict:
    folders = [f.resolve() for f in folders]
    for folder in folders:
        if not folder.is_dir():
            raise BackupError(f"{folder} is not a folder")
    manifest = {"format": 1, "host": socket.gethostname(),
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "folders": [str(f) for f in folders], "databases": {}, "files": 0}
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        copies = {}
        for folder in folders:  # databases first: every row they hold finds its file
            for path in walk(folder):
                if is_sqlite(path):
                    copies[path] = Path(tmp) / f"db{len(copies)}"
                    manifest["databases"][member_name(path)] = snapshot(path, copies[path])
        fd = os.open(f"{out}.part", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh, tarfile.open(fileobj=fh, mode="w") as tar:
            for folder in folders:
                manifest["files"] += _add_folder(tar, folder, copies)
            data = json.dumps(manifest, indent=1).encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mtime, info.mode = len(data), time.time(), 0o600
            tar.addfile(info, io.BytesIO(data))
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(f"{out}.part", out)
    return manifest


def _add_folder(tar: tarfile.TarFile, folder: Path, copies: dict[Path, Path]) -> int:
    """The folder, its sub-folders (owners and modes) and files; the databases' snapshots
    under their own names. A file removed meanwhile (a temp renamed) is left out."""
    count = 0
    tar.add(folder, arcname=member_name(folder), recursive=False)
    for root, dirs, _ in os.walk(folder):
        for name in sorted(dirs):
            tar.add(Path(root) / name, arcname=member_name(Path(root) / name),
                    recursive=False)
    for path in walk(folder):
        if path in copies:
            info = tar.gettarinfo(path, arcname=member_name(path))
            info.size = copies[path].stat().st_size
            with open(copies[path], "rb") as fh:
                tar.addfile(info, fh)
        elif is_sqlite(path):
            continue  # appeared after the snapshots: only the service may copy it
        else:
            try:
                tar.add(path, arcname=member_name(path), recursive=False)
            except FileNotFoundError:
                continue
        count += 1
    return count


def read_manifest(tar: tarfile.TarFile) -> dict:
    try:
        manifest = json.load(tar.extractfile(MANIFEST))
    except (KeyError, ValueError, TypeError):
        raise BackupError(f"not a NeuroEdge backup: no readable {MANIFEST}") from None
    if manifest.get("format") != 1:
        raise BackupError(f"backup format {manifest.get('format')!r} is not supported")
    return manifest


def _folder_of(member: tarfile.TarInfo, folders: list[PurePosixPath]) -> PurePosixPath:
    """The manifest folder a member belongs to; anything else is refused."""
    name = PurePosixPath("/" + member.name)
    if ".." in name.parts or not (member.isfile() or member.isdir()):
        raise BackupError(f"refusing archive member {member.name!r}")
    for folder in folders:
        if name == folder or folder in name.parents:
            return folder
    raise BackupError(f"archive member {member.name!r} is outside the backed-up folders")


def restore(archive: Path, force: bool) -> dict:
    with tarfile.open(archive) as tar:
        manifest = read_manifest(tar)
        folders = [PurePosixPath(f) for f in manifest["folders"]]
        busy = [f for f in folders if Path(f).exists() and any(Path(f).iterdir())]
        if busy and not force:
            raise BackupError(f"{', '.join(map(str, busy))} not empty; --force moves it "
                              "aside (stop the services first)")
        stamp = time.strftime("%Y%m%dT%H%M%S")
        staged = {f: Path(f).parent / f".{Path(f).name}.restore-{stamp}" for f in folders}
        for member in tar.getmembers():
            if member.name == MANIFEST:
                continue
            folder = _folder_of(member, folders)
            relative = PurePosixPath("/" + member.name).relative_to(folder)
            member.name = str(relative) if relative.parts else "."
            Path(staged[folder]).parent.mkdir(parents=True, exist_ok=True)
            tar.extract(member, staged[folder], set_attrs=True, **EXTRACT)
    for name, counts in manifest["databases"].items():
        folder = next(f for f in folders if f in PurePosixPath("/" + name).parents)
        path = staged[folder] / PurePosixPath("/" + name).relative_to(folder)
        if check_database(path) != counts:
            raise BackupError(f"{name}: restored tables differ from the manifest")
    for folder, stage in staged.items():
        if Path(folder).exists():
            os.rename(folder, f"{folder}.pre-restore-{stamp}")
        os.rename(stage, folder)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="neuroedge-backup", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sp = sub.add_parser("create", help="back up folders into one archive")
    sp.add_argument("--out", type=Path, required=True)
    sp.add_argument("folders", type=Path, nargs="+")
    sp = sub.add_parser("restore", help="put an archive's folders back in place")
    sp.add_argument("archive", type=Path)
    sp.add_argument("--force", action="store_true", help="move existing folders aside")
    sub.add_parser("show", help="print an archive's manifest").add_argument(
        "archive", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "create":
            manifest = create(args.out, args.folders)
        elif args.command == "restore":
            manifest = restore(args.archive, args.force)
        else:
            with tarfile.open(args.archive) as tar:
                manifest = read_manifest(tar)
    except (BackupError, OSError, sqlite3.Error, tarfile.TarError) as exc:
        print(f"neuroedge-backup: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(manifest, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
