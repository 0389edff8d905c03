"""Shared fixtures: the real replays in ../shared/replays and stores encoded from them."""

from __future__ import annotations

import gzip
import os
import tempfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REPLAYS = Path(os.environ.get("MELEE_REPLAYS", ROOT.parent / "shared" / "replays")).resolve()
CORPUS = Path(os.environ.get("MELEE_CORPUS", ROOT.parent / "shared" / "corpus")).resolve()


def _manifest() -> list[dict]:
    """The rows of the shared replays' MANIFEST.md table: what peppi made of each file."""
    lines = [line for line in (REPLAYS / "MANIFEST.md").read_text().splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")))) for line in lines[1:]]
    return [row for row in rows if not set(row["file"]) <= {"-"}]


MANIFEST = _manifest()
# A replay cut short (peppi: "failed to fill whole buffer") that the encoder salvages (melee_encode.salvage):
# the manifest cannot say which truncated files keep a complete frame, so this one fact is typed here.
TRUNCATED = ("slippi-js/incomplete.slp",)
# Replays peppi cannot parse and the encoder cannot salvage, and games with more than two players.
UNREADABLE = tuple(row["file"] for row in MANIFEST if row["parses"] != "ok" and row["file"] not in TRUNCATED)
NOT_1V1 = {row["file"]: int(row["ports"]) for row in MANIFEST if row["parses"] == "ok" and row["ports"] != "2"}
SHARED_SKIPPED = len(UNREADABLE) + len(NOT_1V1)
SHARED_GAMES = len(MANIFEST) - SHARED_SKIPPED  # the 1v1 games of ../shared/replays, the salvaged one included


def replay(name: str) -> str:
    """Path of one shared replay, e.g. replay("peppi/ics2.slp")."""
    path = REPLAYS / name
    if not path.exists():
        pytest.fail(f"real replay {path} not found; the tests read ../shared/replays (or set MELEE_REPLAYS)")
    return str(path)


def corpus(name: str) -> str:
    """Path of one replay of the corpus (.slp.gz), e.g. corpus("ipowell__slippi-parse__resources__test.slp.gz")."""
    path = CORPUS / name
    if not path.exists():
        pytest.fail(f"real replay {path} not found; the tests read ../shared/corpus (or set MELEE_CORPUS)")
    return str(path)


def all_replays() -> list[str]:
    return sorted(str(p) for p in REPLAYS.rglob("*.slp"))


# A few replays of every kind: old and new, a pummel, a corrupt one and a 4-player game.
SOME = ["peppi/ics2.slp", "peppi/v2.0.slp", "slippi-js/pummel.slp", "peppi/corrupt.slp", "peppi/crazy_name_tags.slp"]


def zip_of_gzipped(path, names) -> None:
    """A zip archive of `.slp.gz` members, as the public ranked dumps are."""
    with zipfile.ZipFile(path, "w") as archive:
        for name in names:
            archive.writestr(name + ".gz", gzip.compress(open(replay(name), "rb").read(), compresslevel=1))


def games_by_hash(path, storage_options=None) -> dict:
    """A store's games (EncodedGame) by content hash."""
    from melee_encode import open_store

    store = open_store(path, storage_options)
    return {h: store.game(i) for i, h in enumerate(store.games["hash"])}


def temp_replays() -> set[str]:
    """The temporary replay copies made for peppi that exist now."""
    folder = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    return {f for f in os.listdir(folder) if f.endswith(".slp")}


@pytest.fixture(scope="session")
def replays_dir() -> str:
    if not REPLAYS.is_dir():
        pytest.fail(f"real replays not found at {REPLAYS}; the tests read ../shared/replays (or set MELEE_REPLAYS)")
    return str(REPLAYS)


@pytest.fixture(scope="session")
def shared_store(replays_dir, tmp_path_factory) -> str:
    """Every shared replay encoded once with the default (v3) config, small chunks to cross them."""
    from melee_encode import EncodeOptions, encode

    path = str(tmp_path_factory.mktemp("stores") / "shared.zarr")
    encode([replays_dir], path, EncodeOptions(progress=False, chunk_frames=4096))
    return path


@pytest.fixture(scope="session")
def s3():
    """An S3-compatible server (moto) on loopback in its own process, dummy credentials in the environment."""
    from servers import S3Server

    with S3Server() as server:
        yield server


def recompressed_copy(path, target) -> str:
    """A copy of a store whose part arrays are rewritten by plain zarr with another codec (Blosc-lz4),
    which the store's fast chunk path does not decode."""
    import shutil

    import zarr
    from zarr.codecs import BloscCodec

    shutil.copytree(path, target)
    for part in zarr.open_group(str(target), mode="r+")["parts"].group_keys():
        group = zarr.open_group(str(target), mode="r+", path=f"parts/{part}")
        for name in ("float", "int", "state_age"):
            old = group[name]
            values, chunks, fill = old[:], old.chunks, old.metadata.fill_value
            del group[name]
            new = group.create_array(
                name, shape=values.shape, chunks=chunks, dtype=values.dtype, fill_value=fill, compressors=BloscCodec(cname="lz4")
            )
            new[:] = values
    return str(target)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for a test module (with `pytestmark = pytest.mark.usefixtures(...)`)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
