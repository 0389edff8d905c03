"""Replay sources: finding `.slp` replays in files, folders and archives, and reading their bytes.

Accepted inputs: `.slp` and `.slp.gz` files, folders (searched recursively), `.zip`, `.tar`,
`.tar.gz`/`.tgz` archives of `.slp` or `.slp.gz` members, and `.7z` archives (with the `7z` extra).
Folder and zip members come in sorted order, so "the first N games" means the same games every
time. A source is small and picklable: worker processes open zip members themselves (random access),
while tar members, which can only be read in order, travel with their bytes.

peppi parses paths, not bytes: `local_replay_path` hands it the file itself when the source is a
plain `.slp` on disk, else a temporary copy that is removed when the `with` block ends.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from typing import Iterator

REPLAY_SUFFIXES = (".slp", ".slp.gz")
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".7z")
_TMP_DIR = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


class SourceError(Exception):
    """An input that is not a replay, folder or archive we can read."""


@dataclass(frozen=True)
class ReplaySource:
    """One replay: a file on disk, a member of an archive, or bytes already read from a stream."""

    name: str  # shown in the store and messages: "dir/game.slp" or "dump.zip::dir/game.slp.gz"
    path: str  # the file, or the archive holding the member
    member: str | None = None
    data: bytes | None = None

    @property
    def gzipped(self) -> bool:
        return (self.member or self.path).endswith(".gz")

    def read_bytes(self) -> bytes:
        """The replay's `.slp` bytes (gzip already undone)."""
        if self.data is not None:
            raw = self.data
        elif self.member is not None:
            raw = _zip_handle(self.path).read(self.member)
        else:
            with open(self.path, "rb") as handle:
                raw = handle.read()
        return gzip.decompress(raw) if self.gzipped else raw


def is_replay(name: str) -> bool:
    return name.lower().endswith(REPLAY_SUFFIXES)


def iter_sources(inputs: list[str]) -> Iterator[ReplaySource]:
    """Every replay under `inputs`, in a stable order. Raises SourceError for an unusable input."""
    for given in inputs:
        path = os.path.expanduser(str(given))
        if os.path.isdir(path):
            yield from _folder(path)
        elif not os.path.exists(path):
            raise SourceError(f"{given}: no such file or folder")
        elif is_replay(path):
            yield ReplaySource(name=path, path=path)
        elif path.lower().endswith(ARCHIVE_SUFFIXES):
            yield from _archive(path)
        else:
            raise SourceError(f"{given}: not a replay (.slp, .slp.gz), folder or archive ({', '.join(ARCHIVE_SUFFIXES)})")


def count_sources(inputs: list[str]) -> int | None:
    """How many replays `iter_sources` will yield, when that is cheap to know (None for tar/7z)."""
    total = 0
    for given in inputs:
        path = os.path.expanduser(str(given))
        if os.path.isdir(path):
            total += sum(1 for _ in _folder_files(path))
        elif path.lower().endswith(".zip"):
            total += len(_zip_members(path))
        elif is_replay(path):
            total += 1
        else:
            return None
    return total


@contextlib.contextmanager
def local_replay_path(source: ReplaySource, data: bytes) -> Iterator[str]:
    """A path peppi can parse holding `data`: the source file itself, or a temporary copy."""
    if source.member is None and source.data is None and not source.gzipped:
        yield source.path
        return
    handle = tempfile.NamedTemporaryFile(suffix=".slp", dir=_TMP_DIR, delete=False)
    try:
        with handle:
            handle.write(data)
        yield handle.name
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(handle.name)


def _folder_files(folder: str) -> Iterator[str]:
    for directory, subdirs, files in os.walk(folder):
        subdirs.sort()
        for name in sorted(files):
            if is_replay(name):
                yield os.path.join(directory, name)


def _folder(folder: str) -> Iterator[ReplaySource]:
    for path in _folder_files(folder):
        yield ReplaySource(name=path, path=path)


def _archive(path: str) -> Iterator[ReplaySource]:
    lower = path.lower()
    if lower.endswith(".zip"):
        for member in _zip_members(path):
            yield ReplaySource(name=f"{path}::{member}", path=path, member=member)
    elif lower.endswith(".7z"):
        yield from _seven_zip(path)
    else:
        yield from _tar(path)


def _zip_members(path: str) -> list[str]:
    try:
        names = _zip_handle(path).namelist()
    except zipfile.BadZipFile as error:
        raise SourceError(f"{path}: not a readable zip archive ({error})") from None
    return sorted(name for name in names if is_replay(name))


_open_zips: dict[str, zipfile.ZipFile] = {}


def _zip_handle(path: str) -> zipfile.ZipFile:
    """One open ZipFile per archive and process: reading its directory once, not per member."""
    if path not in _open_zips:
        _open_zips[path] = zipfile.ZipFile(path)
    return _open_zips[path]


def _tar(path: str) -> Iterator[ReplaySource]:
    try:
        archive = tarfile.open(path, mode="r|*")  # a stream: members in archive order
    except tarfile.TarError as error:
        raise SourceError(f"{path}: not a readable tar archive ({error})") from None
    with archive:
        for member in archive:
            if member.isfile() and is_replay(member.name):
                handle = archive.extractfile(member)
                yield ReplaySource(name=f"{path}::{member.name}", path=path, member=member.name, data=handle.read())


def _seven_zip(path: str) -> Iterator[ReplaySource]:
    try:
        import py7zr
    except ImportError:
        raise SourceError(f"{path}: .7z archives need the 7z extra (pip install 'melee-encode[7z]')") from None
    workdir = tempfile.mkdtemp(prefix="melee-encode-7z-")
    try:
        with py7zr.SevenZipFile(path, mode="r") as archive:
            members = sorted(name for name in archive.getnames() if is_replay(name))
            archive.extract(path=workdir, targets=members)
        for member in members:
            with open(os.path.join(workdir, member), "rb") as handle:
                data = handle.read()
            yield ReplaySource(name=f"{path}::{member}", path=path, member=member, data=data)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
