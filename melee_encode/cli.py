"""The `melee-encode` command: `encode` replays into a store, and `info` about a store.

Stores and inputs are local paths or fsspec URLs (s3://bucket/ranked.zarr); credentials come from
the environment or profiles, never from arguments."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections import Counter

from .config import EncodingConfig
from .encoder import EncodeOptions, EncodeSummary
from .errors import ConfigError, MeleeError
from .filters import GameFilter
from .format import DEFAULT_CHUNK_FRAMES, DEFAULT_PART_FRAMES
from .ids import character_id, character_name, end_method_id, end_method_name, stage_id, stage_name
from .pipeline import encode
from .storage import add_storage_option_argument, parse_storage_options
from .store import open_store


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except (MeleeError, ImportError) as error:
        print(f"melee-encode: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("melee-encode: interrupted; committed games are kept, re-run the same command to resume", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="melee-encode", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    enc = commands.add_parser("encode", help="encode replays (files, folders, archives) into a store")
    enc.add_argument("inputs", nargs="+", metavar="INPUT", help=".slp/.slp.gz files, folders, .zip/.tar(.gz)/.7z archives")
    enc.add_argument(
        "-o", "--output", required=True, metavar="STORE", help="the store to create or extend: a folder or a URL (s3://bucket/ranked.zarr)"
    )
    enc.add_argument("--workers", type=int, default=None, help="worker processes (default 1)")
    enc.add_argument(
        "--dask", metavar="SCHEDULER", help="run the encode as tasks on this Dask cluster (tcp://host:8786); needs the dask extra"
    )
    enc.add_argument(
        "--dask-batch",
        type=int,
        default=EncodeOptions.dask_batch,
        metavar="N",
        help="most replays per Dask task, each written as one part; the last tasks get fewer (default %(default)s)",
    )
    enc.add_argument(
        "--end-method",
        action="append",
        default=[],
        metavar="METHOD",
        help="keep only games that ended so: game, time, no_contest, resolved, unresolved, none, or an id (repeatable)",
    )
    enc.add_argument(
        "--character",
        action="append",
        default=[],
        metavar="NAME",
        help="keep games where a player is this character, by name or internal id (repeatable)",
    )
    enc.add_argument(
        "--stage",
        action="append",
        default=[],
        metavar="NAME",
        help="keep games on this stage, by name (battlefield, fd, ...) or id (repeatable)",
    )
    enc.add_argument("--min-frames", type=int, default=GameFilter.min_frames, help="skip games shorter than this (default %(default)s)")
    enc.add_argument("--max-games", type=int, default=None, help="stop when the store holds this many games")
    enc.add_argument(
        "--max-replay-mb",
        type=float,
        default=EncodeOptions.max_replay_mb,
        metavar="MB",
        help="skip a replay or archive member bigger than this, stored or decompressed, unread (default %(default)s)",
    )
    for option in dataclasses.fields(EncodingConfig):
        enc.add_argument(
            f"--{option.name.replace('_', '-')}",
            action=argparse.BooleanOptionalAction,
            default=option.default,
            help=f"encoding option (default {option.default})",
        )
    enc.add_argument("--chunk-frames", type=int, default=DEFAULT_CHUNK_FRAMES, help="frames per compressed chunk (default %(default)s)")
    enc.add_argument(
        "--part-frames", type=int, default=DEFAULT_PART_FRAMES, help="frames per part before a worker commits it (default %(default)s)"
    )
    enc.add_argument("--quiet", action="store_true", help="no progress bar")
    add_storage_option_argument(enc)
    enc.set_defaults(run=_encode)

    info = commands.add_parser("info", help="games, frames, size and skipped replays of a store")
    info.add_argument("store", metavar="STORE")
    add_storage_option_argument(info)
    info.add_argument("--json", action="store_true", help="print JSON")
    info.add_argument("--games", action="store_true", help="list the per-game metadata")
    info.set_defaults(run=_info)
    return parser


def _encode(args) -> int:
    if args.dask and args.workers is not None:
        raise ConfigError("--workers and --dask exclude each other: the Dask cluster's workers do the work")
    config = EncodingConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(EncodingConfig)})
    filters = GameFilter(
        end_methods=tuple(end_method_id(m) for m in args.end_method),
        characters=tuple(character_id(c) for c in args.character),
        stages=tuple(stage_id(s) for s in args.stage),
        min_frames=args.min_frames,
    )
    options = EncodeOptions(
        config=config,
        filters=filters,
        workers=args.workers or 1,
        max_games=args.max_games,
        chunk_frames=args.chunk_frames,
        part_frames=args.part_frames,
        progress=not args.quiet,
        storage_options=parse_storage_options(args.storage_option),
        dask=args.dask,
        dask_batch=args.dask_batch,
        max_replay_mb=args.max_replay_mb,
    )
    summary = encode(args.inputs, args.output, options)
    print(format_summary(summary, args.output))
    return 0


def format_summary(summary: EncodeSummary, store: str) -> str:
    seconds = max(summary.seconds, 1e-9)
    lines = [
        f"encoded {summary.games:,} games ({summary.frames:,} frames) in {summary.seconds:.1f} s: "
        f"{summary.games / seconds:,.1f} games/s, {summary.frames / seconds:,.0f} frames/s",
    ]
    if summary.already_present:
        lines.append(f"already in the store: {summary.already_present:,} replays")
    if summary.skipped:
        counts = ", ".join(f"{reason} {n}" for reason, n in summary.skipped_by_reason().most_common())
        lines.append(f"skipped {len(summary.skipped):,} replays: {counts}")
    lines.append(f"{store} holds {summary.store_games:,} games; see `melee-encode info {store}`")
    return "\n".join(lines)


def _info(args) -> int:
    store = open_store(args.store, parse_storage_options(args.storage_option))
    if args.games:
        rows = store.game_rows()
        print(json.dumps(rows, indent=1) if args.json else format_games(rows))
        return 0
    info = store.info()
    print(json.dumps(info, indent=1) if args.json else format_info(info))
    return 0


def format_info(info: dict) -> str:
    encoding = " ".join(f"{k}={v}" for k, v in info["encoding"].items())
    per_frame = info["bytes_per_frame"]
    lines = [
        f"store            {info['path']}",
        f"games            {info['games']:,}",
        f"frames           {info['frames']:,}",
        f"bytes on disk    {info['bytes_on_disk']:,}" + (f" ({per_frame:.1f} bytes/frame)" if per_frame else ""),
        f"encoding         {encoding}",
        f"columns          {info['float_columns']} float, {info['int_columns']} int, 2 state_age",
        f"parts            {info['parts']} (chunks of {info['chunk_frames']:,} frames)",
        f"skipped          {len(info['skipped']):,}",
    ]
    reasons = Counter(s["reason"].split(":")[0] for s in info["skipped"])
    lines += [f"  {reason:<30} {n:,}" for reason, n in reasons.most_common()]
    return "\n".join(lines)


def format_games(rows: list[dict]) -> str:
    header = f"{'frames':>7} {'ver':>7} {'stage':<20} {'characters':<28} {'end':<11} source"
    lines = [header]
    for row in rows:
        characters = " vs ".join(character_name(c) for c in row["characters"])
        lines.append(
            f"{row['frames']:>7} {row['slippi_version']:>7} {stage_name(row['stage']):<20} {characters:<28} "
            f"{end_method_name(row['end_method']):<11} {row['source']}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
