"""INTERIM, for developing the model side of the sequence objective until the fast loader lands
(issue 12 items 1-2: melee_model.sampler/reader/examples). Delete it then, with its imports in
tests/test_sequence.py and benchmarks/model_quality.py.

`WindowSource` is an ExampleSource whose loader, for `data.objective: sequence`, ships batches exactly
as /work/seq-contract.md says (float_seq (B, L+1, F), int_seq (B, L+1, I) int16, target_mask (B, L),
example_id (B,)), simply: whole games read with Store.read_frames, a few games at a time, windows
shuffled inside each group. Windows start every L - W frames; a game's last window is shifted back to
end at its last frame, with the positions an earlier window already covers masked. For the card
objective it is the package's ExampleSource unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from melee_model.examples import PART_SHIFT, ExampleSource

GAMES_PER_GROUP = 8


@dataclass
class Windows:
    rows: np.ndarray  # (n,) game row of each window
    starts: np.ndarray  # (n,) first frame s
    first_targets: np.ndarray  # (n,) first position j that is a target


@dataclass
class WindowPlan:
    batches_per_rank: int


def tile(lengths: np.ndarray, rows: np.ndarray, seq_len: int, warmup: int) -> Windows:
    """The windows of games `rows` with frame counts `lengths` (one per row)."""
    out_rows, starts, firsts = [], [], []
    stride = seq_len - warmup
    for row, n in zip(rows, lengths):
        if n < seq_len + 1:
            continue
        game_starts = list(range(0, n - seq_len, stride))
        covered = game_starts[-1] + seq_len  # last target frame of the regular windows
        game_firsts = [warmup] * len(game_starts)
        if covered < n - 1:  # the last window, shifted back to end at frame n - 1
            s = n - 1 - seq_len
            game_starts.append(s)
            game_firsts.append(max(warmup, covered - s))
        out_rows += [row] * len(game_starts)
        starts += game_starts
        firsts += game_firsts
    return Windows(np.array(out_rows, dtype=np.int64), np.array(starts, dtype=np.int64), np.array(firsts, dtype=np.int64))


class WindowSource(ExampleSource):
    """ExampleSource with simple sequence windows (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sequence = self.config.objective == "sequence"
        if self.sequence:
            lengths = self.store.games["length"]
            self.windows = {s: tile(lengths[self.rows[s]], self.rows[s], self.config.seq_len, self.config.warmup) for s in self.rows}

    def example_count(self, split: str) -> int:
        if not self.sequence:
            return super().example_count(split)
        return int((self.config.seq_len - self.windows[split].first_targets).sum())

    def plan(self, split: str, epoch: int, world: int = 1, batch_size: int | None = None):
        if not self.sequence:
            return super().plan(split, epoch, world, batch_size)
        batches = -(-len(self.windows[split].starts) // (batch_size or self.config.batch_size))
        return WindowPlan(-(-batches // world))

    def loader(self, split: str, epoch: int, *, rank: int = 0, world: int = 1, start_batch: int = 0, batch_size: int | None = None, num_workers: int | None = None):
        if not self.sequence:
            return super().loader(split, epoch, rank=rank, world=world, start_batch=start_batch, batch_size=batch_size, num_workers=num_workers)
        return self._batches(split, epoch, rank, world, start_batch, batch_size or self.config.batch_size)

    def _batches(self, split, epoch, rank, world, start_batch, batch_size):
        windows, L = self.windows[split], self.config.seq_len
        rng = np.random.default_rng([self.config.seed, epoch])
        games = np.unique(windows.rows)
        games = rng.permutation(games) if split == "train" else games
        stream = []
        for g in range(0, len(games), GAMES_PER_GROUP):
            mine = np.flatnonzero(np.isin(windows.rows, games[g : g + GAMES_PER_GROUP]))
            stream.append(rng.permutation(mine) if split == "train" else mine)
        stream = np.concatenate(stream) if stream else np.zeros(0, dtype=np.int64)
        batches = [stream[a : a + batch_size] for a in range(0, len(stream), batch_size)][rank::world][start_batch:]
        cache = {}
        for picked in batches:
            floats, ints, ids = [], [], []
            for w in picked:
                row, s = int(windows.rows[w]), int(windows.starts[w])
                if row not in cache:
                    if len(cache) >= GAMES_PER_GROUP:
                        cache.clear()
                    cache[row] = self.store.read_frames(row)
                game_floats, game_ints, _ = cache[row]
                floats.append(game_floats[s : s + L + 1])
                ints.append(game_ints[s : s + L + 1])
                part, offset = int(self.store.games["part"][row]), int(self.store.games["offset"][row])
                ids.append(part << PART_SHIFT | (offset + s))
            positions = np.arange(L)
            yield {
                "float_seq": torch.from_numpy(np.stack(floats)),
                "int_seq": torch.from_numpy(np.stack(ints)),
                "target_mask": torch.from_numpy(positions[None] >= windows.first_targets[picked][:, None]),
                "example_id": torch.tensor(ids, dtype=torch.int64),
            }
