"""The shape of Melee's legal stages in game units: main platform, the platforms above it, blast zones.

Stage ids are peppi's (`ids.STAGES`). The figures are public facts about the game:
- blast zones: libmelee's `stages.BLASTZONES` (measured by Magus420, Smashboards "Ask anyone frame
  things" thread); the same figures are on SmashWiki's "Stage data (SSBM)";
- main platform edges: libmelee's `EDGE_GROUND_POSITION` (x where a character teeters on the edge);
- platforms: libmelee's `left/right/top_platform_position`; Fountain of Dreams' side platforms, which
  libmelee leaves out, from Slippi Lab's stage drawing (they move up and down during a game: the
  heights here are where it draws them).
Pokemon Stadium is its neutral form (it transforms); Yoshi's Story's main platform slopes down at
its ends, which a flat surface at y = 0 ignores. Other stages have no entry.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Platform:
    left: float
    right: float
    height: float  # y of its surface


@dataclass(frozen=True)
class StageGeometry:
    """One stage: the main platform's surface is y = 0 from main_left to main_right."""

    stage: int
    main_left: float
    main_right: float
    platforms: tuple[Platform, ...]  # side platforms, then the top one
    blast_left: float
    blast_right: float
    blast_top: float
    blast_bottom: float

    def to_dict(self) -> dict:
        """Plain JSON-able values: {"main": [left, right], "platforms": [[left, right, height]...], "blast": [left, right, top, bottom]}."""
        return {
            "stage": self.stage,
            "main": [self.main_left, self.main_right],
            "platforms": [[p.left, p.right, p.height] for p in self.platforms],
            "blast": [self.blast_left, self.blast_right, self.blast_top, self.blast_bottom],
        }


def _symmetric(
    stage: int,
    edge: float,
    sides: tuple[float, float, float] | None,
    top: tuple[float, float] | None,
    blast: tuple[float, float, float, float],
) -> StageGeometry:
    """A left-right symmetric stage: sides (inner x, outer x, height) mirrored, top (half width, height)."""
    platforms = []
    if sides is not None:
        inner, outer, height = sides
        platforms += [Platform(-outer, -inner, height), Platform(inner, outer, height)]
    if top is not None:
        half, height = top
        platforms.append(Platform(-half, half, height))
    return StageGeometry(stage, -edge, edge, tuple(platforms), *blast)


STAGE_GEOMETRY: dict[int, StageGeometry] = {
    2: StageGeometry(  # Fountain of Dreams (side platforms move)
        2,
        -63.3475,
        63.3475,
        (Platform(-49.5, -21.0, 16.125), Platform(21.0, 49.5, 22.125), Platform(-14.25, 14.25, 42.7501)),
        -198.75,
        198.75,
        202.5,
        -146.25,
    ),
    3: _symmetric(3, 87.75, (25.0, 55.0, 25.0001), None, (-230.0, 230.0, 180.0, -111.0)),  # Pokemon Stadium
    8: _symmetric(8, 56.0, (28.0, 59.5, 23.4501), (15.75, 42.0001), (-175.7, 173.6, 168.0, -91.0)),  # Yoshi's Story
    28: StageGeometry(  # Dream Land (its side platforms are not quite mirror images)
        28,
        -77.2713,
        77.2713,
        (Platform(-61.3929, -31.7254, 30.1422), Platform(31.7036, 63.0745, 30.2426), Platform(-19.0181, 19.0171, 51.4254)),
        -255.0,
        255.0,
        250.0,
        -123.0,
    ),
    31: _symmetric(31, 68.4, (20.0, 57.6, 27.2001), (18.8, 54.4001), (-224.0, 224.0, 200.0, -108.8)),  # Battlefield
    32: _symmetric(32, 85.5657, None, None, (-246.0, 246.0, 188.0, -140.0)),  # Final Destination
}


def stage_geometry(stage_id: int) -> StageGeometry | None:
    """The stage's geometry, or None for a stage without figures here."""
    return STAGE_GEOMETRY.get(int(stage_id))
