"""Inputs as users have them: folders of archives, broken archives, oversized members, tar members
that are links or devices. Archives are built here from real replays."""

import gzip
import io
import re
import tarfile
import tracemalloc
import zipfile

import pytest

from melee_encode import EncodeOptions, encode, open_store
from melee_encode.cli import main as cli_main
from melee_encode.sources import OversizeError, count_sources, iter_sources

from conftest import replay, zip_of_gzipped

SMALL = ["peppi/ics.slp", "peppi/netplay.slp", "peppi/v3.12.slp"]  # 1v1 games of 101, 70 and 87 KB


def add_to_tar(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def sources_of(path) -> dict[str, str]:
    """A store's games and skips: source name (after the tmp folder) -> "" or the skip reason."""
    store = open_store(path)
    games = {name: "" for name in store.games["source"].tolist()}
    return {**games, **{s.source: s.reason for s in store.skipped}}


def test_a_folder_of_archives_includes_their_replays(tmp_path):
    dump = tmp_path / "dump"
    (dump / "older").mkdir(parents=True)
    zip_of_gzipped(dump / "ranked-1.zip", SMALL[:2])
    with tarfile.open(dump / "older" / "set.tar.gz", "w:gz") as archive:
        archive.add(replay(SMALL[2]), arcname="game.slp")
    (dump / "loose.slp.gz").write_bytes(gzip.compress(open(replay("peppi/v3.18.slp"), "rb").read()))
    path = str(tmp_path / "s.zarr")
    summary = encode([str(dump)], path, EncodeOptions(progress=False))
    assert (summary.games, summary.skipped) == (4, [])
    assert sorted(open_store(path).games["source"].tolist()) == sorted(
        [f"{dump}/loose.slp.gz", f"{dump}/older/set.tar.gz::game.slp"] + [f"{dump}/ranked-1.zip::{name}.gz" for name in SMALL[:2]]
    )
    assert count_sources([str(dump)]) is None  # a tar's members are only known by reading it
    (dump / "older" / "set.tar.gz").unlink()
    assert count_sources([str(dump)]) == 3


def test_a_broken_archive_is_skipped_and_the_encode_goes_on(tmp_path, capsys):
    good = tmp_path / "good.zip"
    zip_of_gzipped(good, ["peppi/v3.13.slp"])
    (tmp_path / "broken.zip").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])  # cut: no directory
    with tarfile.open(tmp_path / "whole.tar", "w") as archive:
        for name in SMALL:
            archive.add(replay(name), arcname=name)
    whole = (tmp_path / "whole.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(whole[: len(whole) * 3 // 4])  # the third member cut short
    inputs = [str(tmp_path / name) for name in ("broken.zip", "cut.tar", "good.zip")]
    assert count_sources(inputs) is None

    path = str(tmp_path / "s.zarr")
    assert cli_main(["encode", *inputs, "-o", path, "--quiet"]) == 0
    assert "encoded 3 games" in capsys.readouterr().out
    found = sources_of(path)
    assert found.pop(f"{tmp_path}/broken.zip") == "unreadable archive: BadZipFile: File is not a zip file"
    assert re.fullmatch(r"unreadable archive after 2 members: ReadError: .+", found.pop(f"{tmp_path}/cut.tar"))
    assert found == {
        f"{tmp_path}/cut.tar::{SMALL[0]}": "",
        f"{tmp_path}/cut.tar::{SMALL[1]}": "",
        f"{tmp_path}/good.zip::peppi/v3.13.slp.gz": "",
    }
    again = encode(inputs, path, EncodeOptions(progress=False))  # a re-run neither retries nor repeats them
    assert (again.games, again.skipped, again.already_present) == (0, [], 3)


def test_a_broken_7z_archive_is_skipped(tmp_path):
    pytest.importorskip("py7zr")
    (tmp_path / "broken.7z").write_bytes(b"7z\xbc\xaf\x27\x1c" + bytes(100))  # the signature, then nothing usable
    path = str(tmp_path / "s.zarr")
    summary = encode([str(tmp_path / "broken.7z"), replay(SMALL[0])], path, EncodeOptions(progress=False))
    assert summary.games == 1
    [skip] = summary.skipped
    assert re.fullmatch(r"unreadable archive: not a readable 7z archive \(Bad7zFile: .+\)", skip.reason)


def test_members_past_the_size_cap_are_skipped_unread(tmp_path):
    big, small = replay("peppi/game.slp"), replay(SMALL[1])  # 1.0 MB and 0.07 MB
    zip_of_gzipped(tmp_path / "dump.zip", ["peppi/game.slp", SMALL[0]])
    with tarfile.open(tmp_path / "dump.tar", "w") as archive:
        archive.add(big, arcname="big.slp")
        archive.add(small, arcname="small.slp")
    path = str(tmp_path / "s.zarr")
    inputs = [str(tmp_path / "dump.zip"), str(tmp_path / "dump.tar"), big]
    assert cli_main(["encode", *inputs, "-o", path, "--max-replay-mb", "0.5", "--quiet"]) == 0
    assert sources_of(path) == {
        f"{tmp_path}/dump.zip::peppi/game.slp.gz": "too big: more than 0.5 MB decompressed, past the 0.5 MB cap (--max-replay-mb)",
        f"{tmp_path}/dump.zip::{SMALL[0]}.gz": "",
        f"{tmp_path}/dump.tar::big.slp": "too big: 1.0 MB, past the 0.5 MB cap (--max-replay-mb)",
        f"{tmp_path}/dump.tar::small.slp": "",
        big: "too big: 1.0 MB, past the 0.5 MB cap (--max-replay-mb)",
    }
    tar_sources = list(iter_sources([str(tmp_path / "dump.tar")], max_bytes=2**19))
    assert [s.data is None for s in tar_sources] == [True, False]  # the big member was never read


def test_a_gzip_bomb_is_read_no_further_than_the_cap(tmp_path):
    cap = 4 * 2**20
    with zipfile.ZipFile(tmp_path / "bomb.zip", "w") as archive:
        archive.writestr("bomb.slp.gz", gzip.compress(bytes(40 * cap), compresslevel=1))  # 160 MB of zeros
    source = next(iter_sources([str(tmp_path / "bomb.zip")], max_bytes=cap))
    assert source.stored_size() < cap
    tracemalloc.start()
    with pytest.raises(OversizeError, match=r"^more than 4 MB decompressed, past the 4 MB cap"):
        source.read_bytes(max_bytes=cap)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 3 * cap


def test_tar_links_and_devices_are_reported_as_skipped(tmp_path):
    with tarfile.open(tmp_path / "odd.tar", "w") as archive:
        archive.add(replay(SMALL[0]), arcname="real.slp")
        for name, kind, target in [
            ("link.slp", tarfile.SYMTYPE, "real.slp"),
            ("hard.slp", tarfile.LNKTYPE, "real.slp"),
            ("dev.slp", tarfile.CHRTYPE, ""),
            ("pipe.slp.gz", tarfile.FIFOTYPE, ""),
        ]:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            archive.addfile(info)
        add_to_tar(archive, "notes.txt", b"not a replay: never listed")
    path = str(tmp_path / "s.zarr")
    encode([str(tmp_path / "odd.tar")], path, EncodeOptions(progress=False))
    tar = f"{tmp_path}/odd.tar"
    assert sources_of(path) == {
        f"{tar}::real.slp": "",
        f"{tar}::link.slp": "not a regular file: a symbolic link to real.slp",
        f"{tar}::hard.slp": "not a regular file: a hard link to real.slp",
        f"{tar}::dev.slp": "not a regular file: a character device",
        f"{tar}::pipe.slp.gz": "not a regular file: a FIFO",
    }
