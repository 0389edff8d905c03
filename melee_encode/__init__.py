"""melee-encode: Slippi replays to a chunked, compressed Zarr store of encoded frames.

    from melee_encode import EncodingConfig, encode_replay, open_store
    game = encode_replay("game.slp")              # EncodedGame: floats, ints, state_age, info
    store = open_store("data/ranked.zarr")        # games, frames ranges, schema, skipped replays

The package never imports torch: it needs numpy, zarr, numcodecs and peppi-py only.
"""

__version__ = "0.1.0"

from .config import EncodingConfig, FloatColumn, IntColumn, Schema  # noqa: E402
from .encoding import EncodedGame, encode_game, encode_replay  # noqa: E402
from .pipeline import EncodeOptions, EncodeSummary, encode  # noqa: E402
from .replay import GameInfo, RawGame, ReplayError, read_replay  # noqa: E402
from .store import Filters, Store, StoreError, open_store  # noqa: E402

__all__ = [
    "EncodeOptions",
    "EncodeSummary",
    "EncodedGame",
    "EncodingConfig",
    "Filters",
    "FloatColumn",
    "GameInfo",
    "IntColumn",
    "RawGame",
    "ReplayError",
    "Schema",
    "Store",
    "StoreError",
    "encode",
    "encode_game",
    "encode_replay",
    "open_store",
    "read_replay",
]
