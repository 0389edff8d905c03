"""One game filter for encode time (one game at a time) and load time (a whole table): they agree."""

import numpy as np
import pytest

from melee_encode import GameFilter, open_store
from melee_encode.format import game_info

FILTERS = [
    GameFilter(),
    GameFilter(min_frames=5000),
    GameFilter(end_methods=(2,), min_frames=200),
    GameFilter(stages=(32,), characters=(1,)),
    GameFilter(characters=(18, 2), end_methods=(3, 7, -1)),
    GameFilter(required_fields=("velocities", "hitlag")),
]


@pytest.mark.parametrize("game_filter", FILTERS, ids=lambda f: str(f.to_dict()))
def test_a_table_mask_agrees_with_the_one_game_verdicts(shared_store, game_filter):
    store = open_store(shared_store)
    games = store.games
    verdicts = [
        game_filter.reject_reason(game_info({name: values[i] for name, values in games.items()})) is None for i in range(len(store))
    ]
    assert game_filter.mask(games).tolist() == verdicts
    assert 0 < sum(verdicts) or game_filter == FILTERS[1]


def test_reasons_name_the_first_failing_check(shared_store):
    games = open_store(shared_store).games
    row = {name: values[int(np.argmin(games["length"]))] for name, values in games.items()}
    info = game_info(row)
    assert GameFilter(min_frames=info.frames + 1).reject_reason(info) == f"too short: {info.frames} frames < {info.frames + 1}"
    assert GameFilter(min_frames=0, stages=(999,)).reject_reason(info) == f"stage {info.stage} not in [999]"
    old = game_info({name: values[int(np.argmax(games["fields_missing"]))] for name, values in games.items()})
    assert GameFilter(min_frames=0, required_fields=("velocities",)).reject_reason(old) == "lacks replay fields ['velocities']"


def test_a_filter_round_trips_through_the_store_attributes():
    game_filter = GameFilter(end_methods=(2,), characters=(1, 20), stages=(31,), min_frames=90, required_fields=("hitlag",))
    assert GameFilter.from_dict(game_filter.to_dict()) == game_filter
    assert GameFilter.from_dict({"end_methods": [2], "characters": [], "stages": [], "min_frames": 60}) == GameFilter(end_methods=(2,))
