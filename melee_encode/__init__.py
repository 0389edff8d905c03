"""melee-encode: Slippi replays to a chunked, compressed Zarr store of encoded frames.

    from melee_encode import EncodingConfig, encode_replay, open_store
    game = encode_replay("game.slp")              # EncodedGame: floats, ints, state_age, info
    store = open_store("data/ranked.zarr")        # games, frames ranges, schema, skipped replays

The package never imports torch: it needs numpy, zarr, numcodecs and peppi-py only.
"""

__version__ = "0.1.0"

from .config import EncodingConfig, FloatColumn, IntColumn, Schema  # noqa: E402
from .encoder import EncodeOptions, EncodeSummary  # noqa: E402
from .encoding import EncodedGame, encode_game, encode_replay  # noqa: E402
from .errors import ConfigError, MeleeError, ReplayError, SourceError, StoreError  # noqa: E402
from .filters import GameFilter  # noqa: E402
from .pipeline import encode  # noqa: E402
from .replay import GameInfo, RawGame, read_replay  # noqa: E402
from .store import Store, open_store  # noqa: E402

__all__ = [
    "ConfigError",
    "EncodeOptions",
    "EncodeSummary",
    "EncodedGame",
    "EncodingConfig",
    "FloatColumn",
    "GameFilter",
    "GameInfo",
    "IntColumn",
    "MeleeError",
    "RawGame",
    "ReplayError",
    "Schema",
    "SourceError",
    "Store",
    "StoreError",
    "encode",
    "encode_game",
    "encode_replay",
    "open_store",
    "read_replay",
]
