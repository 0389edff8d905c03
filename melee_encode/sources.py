"""Replay sources: finding `.slp` replays in files, folders and archives, and reading their bytes.

Accepted inputs: `.slp` and `.slp.gz` files, folders (searched recursively), `.zip`, `.tar`,
`.tar.gz`/`.tgz` archives of `.slp` or `.slp.gz` members, and `.7z` archives (with the `7z` extra),
on local disk or at fsspec URLs (`s3://bucket/dump.zip`, `gs://bucket/replays/`; see `storage`).
Folder and zip members come in sorted order, so "the first N games" means the same games every
time. A source is small and picklable: worker processes open files and zip members themselves
(random access, remote ones through fsspec), while tar and 7z members, which can only be read in
order, travel with their bytes (`sequential_archive`).

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
from collections.abc import Iterator
from dataclasses import dataclass

from .errors import SourceError
from .storage import exists, filesystem, is_url, local_path

REPLAY_SUFFIXES = (".slp", ".slp.gz")
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".7z")
_TMP_DIR = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


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

    @property
    def remote(self) -> bool:
        return is_url(self.path)

    def read_bytes(self, storage_options: dict | None = None) -> bytes:
        """The replay's `.slp` bytes (gzip already undone)."""
        if self.data is not None:
            raw = self.data
        elif self.member is not None:
            raw = _zip_handle(self.path, storage_options).read(self.member)
        elif self.remote:
            fs, path = filesystem(self.path, storage_options)
            raw = fs.cat_file(path)
        else:
            with open(self.path, "rb") as handle:
                raw = handle.read()
        return gzip.decompress(raw) if self.gzipped else raw


def is_transient(error: BaseException, source: ReplaySource) -> bool:
    """An error reading a remote source that says nothing about the replay (a network failure):
    the read should be retried, not the replay recorded as unreadable."""
    return source.remote and isinstance(error, OSError) and not isinstance(error, (FileNotFoundError, gzip.BadGzipFile))


def is_replay(name: str) -> bool:
    return name.lower().endswith(REPLAY_SUFFIXES)


def sequential_archive(path: str) -> bool:
    """A tar or 7z archive: its members can only be read in order, by one reader."""
    return path.lower().endswith(ARCHIVE_SUFFIXES) and not path.lower().endswith(".zip")


def iter_sources(inputs: list[str], storage_options: dict | None = None) -> Iterator[ReplaySource]:
    """Every replay under `inputs`, in a stable order. Raises SourceError for an unusable input."""
    for given in inputs:
        path = _input_path(given)
        if _isdir(path, storage_options):
            yield from _folder(path, storage_options)
        elif not exists(path, storage_options):
            raise SourceError(f"{given}: no such file or folder")
        elif is_replay(path):
            yield ReplaySource(name=path, path=path)
        elif path.lower().endswith(ARCHIVE_SUFFIXES):
            yield from _archive(path, storage_options)
        else:
            raise SourceError(f"{given}: not a replay (.slp, .slp.gz), folder or archive ({', '.join(ARCHIVE_SUFFIXES)})")


def count_sources(inputs: list[str], storage_options: dict | None = None) -> int | None:
    """How many replays `iter_sources` will yield, when that is cheap to know (None for tar/7z)."""
    total = 0
    for given in inputs:
        path = _input_path(given)
        if _isdir(path, storage_options):
            total += sum(1 for _ in _folder_files(path, storage_options))
        elif path.lower().endswith(".zip"):
            total += len(_zip_members(path, storage_options))
        elif is_replay(path):
            total += 1
        else:
            return None
    return total


@contextlib.contextmanager
def local_replay_path(source: ReplaySource, data: bytes) -> Iterator[str]:
    """A path peppi can parse holding `data`: the source file itself, or a temporary copy."""
    if source.member is None and source.data is None and not source.gzipped and not source.remote:
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


def _input_path(given: str) -> str:
    path = str(given)
    return path.rstrip("/") if is_url(path) else os.path.expanduser(local_path(path))


def _isdir(path: str, storage_options: dict | None) -> bool:
    if not is_url(path):
        return os.path.isdir(path)
    fs, inner = filesystem(path, storage_options)
    return fs.isdir(inner)


def _folder_files(folder: str, storage_options: dict | None = None) -> Iterator[str]:
    if is_url(folder):
        fs, inner = filesystem(folder, storage_options)
        paths = [path for path in fs.find(inner) if is_replay(path)]  # one listing of the whole prefix
        yield from (fs.unstrip_protocol(path) for path in sorted(paths, key=lambda p: _walk_order(p[len(inner) :])))
        return
    for directory, subdirs, files in os.walk(folder):
        subdirs.sort()
        for name in sorted(files):
            if is_replay(name):
                yield os.path.join(directory, name)


def _walk_order(relative: str) -> tuple:
    """Sort key giving `os.walk`'s order (a folder's files, then its sorted sub-folders) to a listing."""
    *folders, name = relative.strip("/").split("/")
    return (*((1, folder) for folder in folders), (0, name))


def _folder(folder: str, storage_options: dict | None) -> Iterator[ReplaySource]:
    for path in _folder_files(folder, storage_options):
        yield ReplaySource(name=path, path=path)


def _archive(path: str, storage_options: dict | None) -> Iterator[ReplaySource]:
    lower = path.lower()
    if lower.endswith(".zip"):
        for member in _zip_members(path, storage_options):
            yield ReplaySource(name=f"{path}::{member}", path=path, member=member)
    elif lower.endswith(".7z"):
        yield from _seven_zip(path, storage_options)
    else:
        yield from _tar(path, storage_options)


def _zip_members(path: str, storage_options: dict | None = None) -> list[str]:
    try:
        names = _zip_handle(path, storage_options).namelist()
    except zipfile.BadZipFile as error:
        raise SourceError(f"{path}: not a readable zip archive ({error})") from None
    return sorted(name for name in names if is_replay(name))


_open_zips: dict[str, zipfile.ZipFile] = {}


def _zip_handle(path: str, storage_options: dict | None = None) -> zipfile.ZipFile:
    """One open ZipFile per archive and process: reading its directory once, not per member.
    A remote zip is read with range requests: its directory, then each member's bytes."""
    if path not in _open_zips:
        _open_zips[path] = zipfile.ZipFile(_open_binary(path, storage_options))
    return _open_zips[path]


def _open_binary(path: str, storage_options: dict | None):
    """A seekable binary file object for a local path or a URL."""
    if not is_url(path):
        return open(path, "rb")
    fs, inner = filesystem(path, storage_options)
    return fs.open(inner, "rb")


def _tar(path: str, storage_options: dict | None) -> Iterator[ReplaySource]:
    handle = _open_binary(path, storage_options)
    try:
        archive = tarfile.open(fileobj=handle, mode="r|*")  # a stream: members in archive order
    except tarfile.TarError as error:
        handle.close()
        raise SourceError(f"{path}: not a readable tar archive ({error})") from None
    with handle, archive:
        for member in archive:
            if member.isfile() and is_replay(member.name):
                handle = archive.extractfile(member)
                yield ReplaySource(name=f"{path}::{member.name}", path=path, member=member.name, data=handle.read())


def _seven_zip(path: str, storage_options: dict | None) -> Iterator[ReplaySource]:
    try:
        import py7zr
    except ImportError:
        raise SourceError(f"{path}: .7z archives need the 7z extra (pip install 'melee-encode[7z]')") from None
    workdir = tempfile.mkdtemp(prefix="melee-encode-7z-")
    try:
        with _open_binary(path, storage_options) as handle, py7zr.SevenZipFile(handle, mode="r") as archive:
            members = sorted(name for name in archive.getnames() if is_replay(name))
            archive.extract(path=workdir, targets=members)
        for member in members:
            with open(os.path.join(workdir, member), "rb") as handle:
                data = handle.read()
            yield ReplaySource(name=f"{path}::{member}", path=path, member=member, data=data)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
