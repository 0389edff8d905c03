"""Encoded columns against values read with peppi's own API, frame by frame, on real replays.

`expected_frame` is a plain per-frame transcription of spec section 2 (no numpy vectorization, no
code shared with the encoder); the vectorized encoder must agree with it exactly.
"""

import struct

import numpy as np
import peppi_py
import pytest

from melee_encode import EncodingConfig, encode_game, encode_replay, read_replay
from melee_encode.encoding import recover_hitstun

from conftest import replay

BUTTON_MASKS = (0x100, 0x200, 0x400, 0x800, 0x10, 0x40, 0x20, 0x08)


def _f32(value) -> float:
    return float(np.float32(value))


def _hitstun(misc_as: float) -> float:
    value = _f32(misc_as)
    if value != 0 and abs(value) < 1e-10:
        value = float(struct.unpack("<I", struct.pack("<f", value))[0])
    if value != value:  # NaN
        return 0.0
    return min(max(value, 0.0), 200.0)


def expected_frame(game, f: int) -> tuple[list[float], list[int]]:
    """The v3 float and int columns of frame row `f` of a replay without rollback."""
    floats, ints = [], []
    for port in game.frames.ports:
        post, pre = port.leader.post, port.leader.pre

        def v(array):
            return array[f].as_py()

        vel = post.velocities
        floats += [v(post.percent) * 0.01, v(post.position.x) * 0.05, v(post.position.y) * 0.05, v(post.shield) * 0.01]
        floats += [v(a) * 0.05 for a in (vel.self_x_air, vel.self_y, vel.self_x_ground, vel.knockback_x, vel.knockback_y)]
        floats += [v(post.hitlag) * 0.1, v(post.stocks) * 0.25, v(post.combo_count) * 0.1, _hitstun(v(post.misc_as)) * 0.02]
        floats += [float(v(post.direction) > 0), float(v(post.hurtbox_state) != 0), float(not v(post.airborne))]
        flag_bytes = [v(b) for b in post.state_flags]
        floats += [float((flag_bytes[byte] >> bit) & 1) for byte in range(5) for bit in range(8)]
        floats += [
            v(pre.joystick.x) / 2 + 0.5,
            v(pre.joystick.y) / 2 + 0.5,
            v(pre.cstick.x) / 2 + 0.5,
            v(pre.cstick.y) / 2 + 0.5,
            v(pre.triggers),
        ]
        floats += [float(v(pre.buttons) & mask != 0) for mask in BUTTON_MASKS]
        ground = v(post.ground)
        ints += [
            min(v(post.state), 399),
            min(v(post.jumps), 7),
            min(v(post.character), 32),
            min(v(post.l_cancel), 2),
            min(v(post.hurtbox_state), 2),
            0 if ground == 65535 else min(ground + 1, 31),
            min(v(post.last_attack_landed), 63),
            min(max(int(v(post.state_age)), 0), 149),
        ]
    ints.append(min(game.start.stage, 32))
    return [_f32(x) for x in floats], ints


def _chosen_frames(game, count: int = 40) -> list[int]:
    """Random frames plus the ones that exercise hitstun recovery, flags, buttons and ground."""
    n = len(game.frames.id)
    post = game.frames.ports[0].leader.post
    misc = post.misc_as.to_numpy()
    subnormal = np.flatnonzero((misc != 0) & (np.abs(misc) < 1e-10))
    in_hitstun = np.flatnonzero(misc >= 1)
    buttons = np.flatnonzero(game.frames.ports[0].leader.pre.buttons.to_numpy() != 0)
    grounded = np.flatnonzero(post.ground.to_numpy() != 65535)
    rng = np.random.default_rng(0)
    picks = [rng.integers(0, n, count)] + [a[:: max(1, len(a) // 10)][:10] for a in (subnormal, in_hitstun, buttons, grounded)]
    return sorted(set(int(i) for i in np.concatenate(picks)))


@pytest.mark.parametrize("name", ["slippi-js/actionEdgeCases.slp", "slippi-js/pummel.slp", "peppi/v3.18.slp", "slippi-js/peachFsmash.slp"])
def test_columns_match_peppi_frame_by_frame(name):
    path = replay(name)
    game = peppi_py.read_slippi(path)
    encoded = encode_replay(path)
    frames = _chosen_frames(game)
    assert len(frames) > 40
    for f in frames:
        floats, ints = expected_frame(game, f)
        assert encoded.floats[f].tolist() == pytest.approx(floats, rel=1e-6, abs=1e-7), f"frame {f}"
        assert encoded.ints[f].tolist() == ints, f"frame {f}"


def test_hitstun_recovers_subnormal_integers_and_clips():
    misc = np.array([0.0, 12.5, 250.0, -3.0, np.nan], np.float32)
    as_int = np.array([7, 30], np.uint32).view(np.float32)  # integers stored in float32 bits
    recovered = recover_hitstun(np.concatenate([misc, as_int]))
    assert recovered[:4].tolist() == [0.0, 12.5, 200.0, 0.0]
    assert np.isnan(recovered[4])  # replaced (and counted) by the encoder, below
    assert recovered[5:].tolist() == [7.0, 30.0]


def test_nan_hitstun_is_replaced_and_counted():
    raw = read_replay(replay("peppi/ics2.slp"))
    raw.players[1]["misc_as"] = raw.players[1]["misc_as"].copy()
    raw.players[1]["misc_as"][[10, 20, 30]] = np.nan
    encoded = encode_game(raw)
    column = encoded.schema.float_index("p1.hitstun")
    assert encoded.nonfinite_replaced == 3
    assert encoded.floats[[10, 20, 30], column].tolist() == [0.0, 0.0, 0.0]
    assert np.isfinite(encoded.floats).all()


@pytest.mark.parametrize(
    "config", [EncodingConfig(), EncodingConfig(state_age_as_embed=False, projectiles=True)], ids=["v3", "state_age_float_projectiles"]
)
def test_nan_and_inf_in_every_float_field_never_reach_the_arrays(config):
    raw = read_replay(replay("peppi/items.slp"), items=True)  # 3.7: every field but hitlag, and items
    injected = 0
    for fields in raw.players:
        for name, values in fields.items():
            if values.dtype.kind == "f":
                values = fields[name] = values.copy()
                values[::7] = np.nan
                values[3::11] = np.inf
                values[5::13] = -np.inf
                injected += 1
    raw.items.x[::3] = np.nan
    encoded = encode_game(raw, config)
    assert injected >= 15  # percent, position, shield, velocities, state_age, misc_as, sticks, triggers, ...
    assert np.isfinite(encoded.floats).all() and np.isfinite(encoded.state_age).all()
    assert encoded.nonfinite_replaced > 0


def test_real_hitstun_values_are_in_range_and_nan_free():
    encoded = encode_replay(replay("peppi/ics2.slp"))
    hitstun = encoded.floats[:, [encoded.schema.float_index("p0.hitstun"), encoded.schema.float_index("p1.hitstun")]]
    assert np.isfinite(hitstun).all()
    assert hitstun.min() >= 0 and hitstun.max() <= 200 * 0.02
    assert (hitstun > 0).mean() > 0.1  # recovered values, not silent zeros


def test_old_replay_columns_are_zero_where_fields_are_missing():
    encoded = encode_replay(replay("peppi/buttons_abxy.slp"))  # replay 1.0.0
    schema = encoded.schema
    for name in ("p0.speed_air_x", "p1.hitlag", "p0.hitstun", "p0.on_ground", "p1.invulnerable", "p0.state_flags.3"):
        assert not encoded.floats[:, schema.float_index(name)].any(), name
    for name in ("p0.jumps_left", "p0.ground", "p1.l_cancel", "p0.hurtbox_state"):
        assert not encoded.ints[:, schema.int_index(name)].any(), name
    assert encoded.floats[:, schema.float_index("p0.x")].any()
    assert encoded.floats[:, schema.float_index("p0.button_A")].any()  # the replay presses A, B, X, Y
    assert encoded.info.fields_missing[0] == "state_flags"


def test_ground_and_l_cancel_and_state_age_ints():
    game = peppi_py.read_slippi(replay("slippi-js/lCancel.slp"))
    encoded = encode_replay(replay("slippi-js/lCancel.slp"))
    schema = encoded.schema
    post = game.frames.ports[1].leader.post
    ground = post.ground.to_numpy().astype(int)
    expected_ground = np.where(ground == 65535, 0, np.minimum(ground + 1, 31))
    assert np.array_equal(encoded.ints[:, schema.int_index("p1.ground")], expected_ground)
    l_cancel = encoded.ints[:, schema.int_index("p1.l_cancel")]
    assert set(np.unique(l_cancel)) <= {0, 1, 2} and (l_cancel > 0).any()
    state_age = post.state_age.to_numpy()
    assert np.array_equal(encoded.ints[:, schema.int_index("p1.state_age")], np.clip(np.trunc(state_age), 0, 149))
    assert np.array_equal(encoded.state_age[:, 1], state_age)


def test_projectiles_are_the_nearest_item_and_the_count():
    path = replay("peppi/items.slp")
    encoded = encode_replay(path, EncodingConfig(projectiles=True))
    schema = encoded.schema
    raw = read_replay(path)
    frames_with_items = np.unique(raw.items.frame)
    assert len(frames_with_items) > 100
    for f in frames_with_items[:: len(frames_with_items) // 25]:
        on_frame = raw.items.frame == f
        for p in (0, 1):
            dx = raw.items.x[on_frame] - raw.players[p]["x"][f]
            dy = raw.items.y[on_frame] - raw.players[p]["y"][f]
            nearest = int(np.argmin(dx * dx + dy * dy))
            row = encoded.floats[f]
            assert row[schema.float_index(f"p{p}.item_dx")] == pytest.approx(dx[nearest] * 0.05, rel=1e-5)
            assert row[schema.float_index(f"p{p}.item_dy")] == pytest.approx(dy[nearest] * 0.05, rel=1e-5)
            assert row[schema.float_index(f"p{p}.item_count")] == pytest.approx(min(on_frame.sum(), 15) * 0.1)
    empty = np.setdiff1d(np.arange(encoded.frames), frames_with_items)
    assert not encoded.floats[empty, schema.float_index("p0.item_count")].any()


@pytest.mark.parametrize(
    "config",
    [EncodingConfig(), EncodingConfig(state_age_as_embed=False), EncodingConfig(hitstun=False, state_flags=False)],
)
def test_other_configs_encode_the_same_values_in_their_columns(config):
    path = replay("slippi-js/pummel.slp")
    base = encode_replay(path)
    other = encode_replay(path, config)
    assert other.floats.shape == (base.frames, config.schema().n_float)
    for column in config.schema().float_columns:
        if column.field != "state_age":
            assert np.array_equal(
                other.floats[:, config.schema().float_index(column.name)], base.floats[:, base.schema.float_index(column.name)]
            )
    if not config.state_age_as_embed:
        assert np.allclose(other.floats[:, config.schema().float_index("p0.state_age")], base.state_age[:, 0] * 0.01)
