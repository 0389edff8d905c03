"""Game filters: one definition of which games to keep, used at encode time and at load time.

`GameFilter.mask(table)` works on the per-game table (column name -> numpy array, as `Store.games`
gives it). The encoder asks about one game at a time (`reject_reason(info)`, which builds a one-row
table and names the first criterion that fails); the data pipeline asks about a whole store at once.
Both run the same per-criterion checks, so the two cannot drift apart.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .format import GameRecord, fields_missing_mask
from .replay import GameInfo

Table = dict[str, np.ndarray]


@dataclass(frozen=True)
class GameFilter:
    """Which games to keep. Empty tuples keep everything; a game passes when it passes every check."""

    end_methods: tuple[int, ...] = ()  # ids.END_METHODS ids (-1: no end event)
    characters: tuple[int, ...] = ()  # internal ids; a game passes if either player's matches
    stages: tuple[int, ...] = ()
    min_frames: int = 60
    required_fields: tuple[str, ...] = ()  # replay.OPTIONAL_SOURCES the game must have

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> GameFilter:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    def mask(self, games: Table) -> np.ndarray:
        """(games,) bool: True for the rows that pass every check."""
        keep = np.ones(len(games["length"]), dtype=bool)
        for passes, _ in self._checks():
            keep &= passes(games)
        return keep

    def reject_reason(self, info: GameInfo) -> str | None:
        """Why one game is filtered out (the first check it fails), or None if it passes."""
        row = GameRecord("", "", 0, 0, info).row()
        table = {name: np.array([value]) for name, value in row.items()}
        for passes, reason in self._checks():
            if not passes(table)[0]:
                return reason(info)
        return None

    def _checks(self) -> list[tuple[Callable[[Table], np.ndarray], Callable[[GameInfo], str]]]:
        """(table -> (games,) bool, info -> reason) for each active criterion."""
        checks = [(lambda t: t["length"] >= self.min_frames, lambda i: f"too short: {i.frames} frames < {self.min_frames}")]
        if self.end_methods:
            checks.append(
                (
                    lambda t: np.isin(t["end_method"], self.end_methods),
                    lambda i: f"end method {i.end_method} not in {list(self.end_methods)}",
                )
            )
        if self.stages:
            checks.append((lambda t: np.isin(t["stage"], self.stages), lambda i: f"stage {i.stage} not in {list(self.stages)}"))
        if self.characters:
            checks.append(
                (
                    lambda t: np.isin(t["characters"], self.characters).any(axis=1),
                    lambda i: f"characters {list(i.characters)} not in {list(self.characters)}",
                )
            )
        if self.required_fields:
            required = fields_missing_mask(self.required_fields)
            checks.append(
                (
                    lambda t: (t["fields_missing"] & required) == 0,
                    lambda i: f"lacks replay fields {sorted(set(i.fields_missing) & set(self.required_fields))}",
                )
            )
        return checks
