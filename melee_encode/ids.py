"""Melee's id tables: stages, characters and game-end methods, with their names.

One table per concept, so a filter named "fd" can only ever mean stage 32. Ids are the ones peppi
reports: stage ids from the game-start block, characters as Melee's *internal* ids (the per-frame
`post.character`, which is what the encoded int columns hold), end methods from the game-end block.
"""

from __future__ import annotations

from .errors import ConfigError, ReplayError

STAGES: dict[int, str] = {
    2: "fountain_of_dreams",
    3: "pokemon_stadium",
    4: "princess_peachs_castle",
    5: "kongo_jungle",
    6: "brinstar",
    7: "corneria",
    8: "yoshis_story",
    9: "onett",
    10: "mute_city",
    11: "rainbow_cruise",
    12: "jungle_japes",
    13: "great_bay",
    14: "hyrule_temple",
    15: "brinstar_depths",
    16: "yoshis_island",
    17: "green_greens",
    18: "fourside",
    19: "mushroom_kingdom",
    20: "mushroom_kingdom_2",
    22: "venom",
    23: "poke_floats",
    24: "big_blue",
    25: "icicle_mountain",
    26: "icetop",
    27: "flat_zone",
    28: "dream_land",
    29: "yoshis_island_n64",
    30: "kongo_jungle_n64",
    31: "battlefield",
    32: "final_destination",
}

STAGE_ALIASES: dict[str, int] = {
    "fod": 2,
    "ps": 3,
    "stadium": 3,
    "ys": 8,
    "dl": 28,
    "dreamland": 28,
    "bf": 31,
    "fd": 32,
}

# Internal character ids (post-frame `character`); these differ from the character-select ids.
CHARACTERS: dict[int, str] = {
    0: "mario",
    1: "fox",
    2: "captain_falcon",
    3: "donkey_kong",
    4: "kirby",
    5: "bowser",
    6: "link",
    7: "sheik",
    8: "ness",
    9: "peach",
    10: "popo",
    11: "nana",
    12: "pikachu",
    13: "samus",
    14: "yoshi",
    15: "jigglypuff",
    16: "mewtwo",
    17: "luigi",
    18: "marth",
    19: "zelda",
    20: "young_link",
    21: "dr_mario",
    22: "falco",
    23: "pichu",
    24: "game_and_watch",
    25: "ganondorf",
    26: "roy",
    27: "master_hand",
    28: "crazy_hand",
    29: "wireframe_male",
    30: "wireframe_female",
    31: "giga_bowser",
    32: "sandbag",
}

CHARACTER_ALIASES: dict[str, int] = {
    "falcon": 2,
    "dk": 3,
    "ics": 10,
    "ice_climbers": 10,
    "puff": 15,
    "jiggs": 15,
    "ylink": 20,
    "doc": 21,
    "gnw": 24,
    "gw": 24,
    "ganon": 25,
}

END_METHODS: dict[int, str] = {
    0: "unresolved",
    1: "time",
    2: "game",
    3: "resolved",
    7: "no_contest",
}
END_METHOD_NONE = -1  # the replay has no game-end event
END_METHOD_ALIASES: dict[str, int] = {"none": END_METHOD_NONE, "missing": END_METHOD_NONE}

# peppi's raw game-end block names the method in CamelCase.
_PEPPI_END_METHODS = {"Unresolved": 0, "Time": 1, "Game": 2, "Resolved": 3, "NoContest": 7}


def end_method_from_peppi(name: str | None) -> int:
    """Map peppi's raw end-method name (or a missing end block) to its id."""
    if name is None:
        return END_METHOD_NONE
    try:
        return _PEPPI_END_METHODS[name]
    except KeyError:
        raise ReplayError(f"unknown game-end method {name!r}") from None


def _normalize(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(" ", "_").replace("'", "").replace(".", "")


def _lookup(value: str | int, table: dict[int, str], aliases: dict[str, int], what: str) -> int:
    if isinstance(value, int) or str(value).lstrip("-").isdigit():
        ident = int(value)
        if ident not in table and ident not in aliases.values():
            raise ConfigError(f"unknown {what} id {ident}")
        return ident
    key = _normalize(str(value))
    by_name = {name: ident for ident, name in table.items()}
    if key in by_name:
        return by_name[key]
    if key in aliases:
        return aliases[key]
    known = ", ".join(sorted(by_name))
    raise ConfigError(f"unknown {what} {value!r}; known names: {known}")


def stage_id(value: str | int) -> int:
    """A stage id from an id or a name ("battlefield", "bf", 31 -> 31)."""
    return _lookup(value, STAGES, STAGE_ALIASES, "stage")


def character_id(value: str | int) -> int:
    """An internal character id from an id or a name ("fox", 1 -> 1; "sheik" -> 7)."""
    return _lookup(value, CHARACTERS, CHARACTER_ALIASES, "character")


def end_method_id(value: str | int) -> int:
    """An end-method id from an id or a name ("game", 2 -> 2; "none" -> -1)."""
    return _lookup(value, END_METHODS, END_METHOD_ALIASES, "end method")


def stage_name(ident: int) -> str:
    return STAGES.get(ident, f"stage_{ident}")


def character_name(ident: int) -> str:
    return CHARACTERS.get(ident, f"character_{ident}")


def end_method_name(ident: int) -> str:
    return "none" if ident == END_METHOD_NONE else END_METHODS.get(ident, f"method_{ident}")
