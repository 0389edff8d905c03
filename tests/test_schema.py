"""The column schema of spec section 2: order, groups, scales and the variants the flags make."""

import pytest

from melee_encode.config import EncodingConfig, Schema

V3_P0_FLOATS = (
    ["p0.percent", "p0.x", "p0.y", "p0.shield"]
    + ["p0.speed_air_x", "p0.speed_y", "p0.speed_ground_x", "p0.speed_attack_x", "p0.speed_attack_y"]
    + ["p0.hitlag", "p0.stocks", "p0.combo_count", "p0.hitstun"]
    + ["p0.facing", "p0.invulnerable", "p0.on_ground"]
    + [f"p0.state_flags.{b}" for b in range(40)]
    + ["p0.main_x", "p0.main_y", "p0.c_x", "p0.c_y", "p0.shoulder"]
    + [f"p0.button_{b}" for b in ("A", "B", "X", "Y", "Z", "L", "R", "D_UP")]
)
V3_SCALES = [0.01, 0.05, 0.05, 0.01] + [0.05] * 5 + [0.1, 0.25, 0.1, 0.02] + [1.0] * 43 + [0.5] * 4 + [1.0] * 9


def test_v3_has_138_floats_and_17_ints_in_spec_order():
    schema = EncodingConfig().schema()
    names = [c.name for c in schema.float_columns]
    assert schema.n_float == 138 and schema.n_int == 17
    assert names[:69] == V3_P0_FLOATS
    assert names[69:] == [n.replace("p0.", "p1.") for n in V3_P0_FLOATS]
    assert [c.scale for c in schema.float_columns[:69]] == pytest.approx(V3_SCALES)
    assert [c.offset for c in schema.float_columns[56:60]] == [0.5] * 4  # sticks: v/2 + 0.5


def test_v3_int_columns_and_vocabularies():
    schema = EncodingConfig().schema()
    per_player = ["action", "jumps_left", "character", "l_cancel", "hurtbox_state", "ground", "last_attack_landed", "state_age"]
    assert [c.name for c in schema.int_columns] == [f"p0.{f}" for f in per_player] + [f"p1.{f}" for f in per_player] + ["stage"]
    assert [c.vocab for c in schema.int_columns[:8]] == [400, 8, 33, 3, 3, 32, 64, 150]
    assert schema.int_columns[-1].vocab == 33


def test_state_flag_column_is_16_plus_8_byte_plus_bit():
    schema = EncodingConfig().schema()
    for byte in range(5):
        for bit in range(8):
            column = schema.float_columns[16 + 8 * byte + bit]
            assert (column.field, column.bit) == ("state_flags", 8 * byte + bit)


def test_button_masks():
    schema = EncodingConfig().schema()
    masks = [1 << c.bit for c in schema.float_columns[61:69]]
    assert masks == [0x100, 0x200, 0x400, 0x800, 0x10, 0x40, 0x20, 0x08]


def test_groups_give_the_target_blocks():
    schema = EncodingConfig().schema()
    assert schema.float_indices(player=0, group="continuous") == [0, 1, 2, 3]
    assert schema.float_indices(player=1, group="velocity") == [73, 74, 75, 76, 77]
    assert schema.float_indices(player=0, group="dynamics") == [9, 10, 11, 12]
    assert len(schema.float_indices(player=1, group="binary")) == 43
    assert len(schema.float_indices(group="controller")) == 26


@pytest.mark.parametrize(
    "flags, per_player, n_int, where",
    [
        (dict(state_age_as_embed=False), 70, 15, {"p0.state_age": 9, "p0.hitlag": 10}),
        (dict(projectiles=True), 72, 17, {"p0.item_dx": 13, "p0.item_dy": 14, "p0.item_count": 15, "p0.facing": 16}),
        (dict(hitstun=False), 68, 17, {"p0.facing": 12}),
        (dict(state_flags=False), 29, 17, {"p0.main_x": 16}),
    ],
)
def test_flags_change_the_columns(flags, per_player, n_int, where):
    schema = EncodingConfig(**flags).schema()
    assert schema.n_float == 2 * per_player
    assert schema.n_int == n_int
    for name, index in where.items():
        assert schema.float_index(name) == index
    assert schema.float_index("p1.percent") == per_player


def test_schema_and_config_round_trip():
    config = EncodingConfig(projectiles=True)
    assert EncodingConfig.from_dict(config.to_dict()) == config
    schema = config.schema()
    assert Schema.from_dict(schema.to_dict()) == schema


def test_unknown_encoding_option_is_refused():
    with pytest.raises(ValueError, match="unknown encoding option.*projectile"):
        EncodingConfig.from_dict({"projectile": True})


def test_decode_back_to_game_units():
    schema = EncodingConfig().schema()
    assert schema.decode_float(2.5, "p0.x") == pytest.approx(50.0)
    assert schema.decode_float(1.0, "p1.main_x") == pytest.approx(1.0)
    assert schema.decode_float(0.5, "p1.main_y") == pytest.approx(0.0)
