"""What the loader benchmarks count about mixing: the game of each example id, and what uniform
sampling would give (loader_throughput.py and scale.py)."""

from __future__ import annotations

import math

import numpy as np


class GameIndex:
    """Maps example ids (part << 40 | target position in the part) to rows of the game table, and
    gives each game's expected number of targets (frames K .. length - lookahead)."""

    def __init__(self, source):
        store, layout = source.store, source.layout
        games = store.games
        parts = sorted(store.parts)
        self.part_base = np.zeros(max(parts) + 1, np.int64)  # frame index of each part's position 0
        self.part_base[parts] = np.concatenate([[0], np.cumsum([store.parts[p] for p in parts])[:-1]])
        starts = self.part_base[games["part"]] + games["offset"]  # (games,) first frame of each game
        self.order = np.argsort(starts)
        self.starts = starts[self.order]
        self.first = games["offset"][self.order] + layout.context_len  # target window, part coordinates
        self.end = games["offset"][self.order] + games["length"][self.order] - layout.lookahead
        self.frames = sum(store.parts.values())
        self.targets = np.maximum(games["length"].astype(np.int64) - layout.context_len - layout.lookahead, 0)  # (games,)

    def locate(self, example_id: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(B,) ids -> global frame index, game row, and whether the frame is one of its game's targets."""
        part, position = example_id >> 40, example_id & ((1 << 40) - 1)
        frame = self.part_base[part] + position
        at = np.searchsorted(self.starts, frame, side="right") - 1  # the game starting last at or before
        inside = (position >= self.first[at]) & (position < self.end[at])
        return frame, self.order[at], inside

    def games_per_batch(self, batches: list[np.ndarray]) -> float:
        """The mean number of distinct games in batches of example ids (NaN for no batch)."""
        return float(np.mean([len(np.unique(self.locate(ids)[1])) for ids in batches])) if batches else math.nan


def uniform_distinct(counts: np.ndarray, batch: int) -> float:
    """Expected distinct games in `batch` examples drawn uniformly without replacement from a split
    whose games hold `counts` examples: the sum over games of 1 - C(N - n, B) / C(N, B)."""
    import torch

    n = torch.from_numpy(counts[counts > 0].astype(np.float64))
    total = float(n.sum())
    batch = min(batch, total)
    gammaln = torch.special.gammaln
    log_absent = (
        gammaln(total - n + 1) - gammaln((total - n - batch + 1).clamp(min=1)) - math.lgamma(total + 1) + math.lgamma(total - batch + 1)
    )
    absent = torch.where(total - n >= batch, log_absent.exp(), 0.0)  # a game holding more than N - B examples is always drawn
    return float((1 - absent).sum())


def items_per_game(pieces) -> np.ndarray:
    """(games,) the items (examples, or sequence windows) each game of a split holds, read from the
    sampler's plan of it (`ExampleSource.pieces[split]`), whose ranges each lie in one game."""
    keys = np.concatenate([piece.part << 40 | piece.ends for piece in pieces])  # (R,) each range's game
    counts = np.concatenate([piece.counts for piece in pieces])  # (R,) items per range
    return np.bincount(np.unique(keys, return_inverse=True)[1], weights=counts).astype(np.int64)
