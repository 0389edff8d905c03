"""Tests for melee_model.model: parameter counts, output shapes, embeddings, statelessness, gradients, autocast."""

import dataclasses

import pytest
import torch

from melee_encode.config import EncodingConfig
from melee_encode.errors import ConfigError
from melee_model.config import LossConfig, ModelConfig
from melee_model.layout import TARGET_FIELDS, FrameLayout
from melee_model.losses import compute_losses
from melee_model.model import FrameEmbedding, build_model, count_parameters, describe_model

V3 = FrameLayout(EncodingConfig().schema())
# Press events and lookahead only change next_ctrl: (26 + 16) * 3 = 126.
WIDE_CTRL = FrameLayout(EncodingConfig().schema(), press_events=True, lookahead=2)
# Small enough that a CPU forward takes milliseconds; the shapes do not depend on the sizes.
SMALL = dict(d_model=32, n_layers=2, d_state=8, headdim=16, mlp_hidden=[24, 16], backend="torch")


def random_batch(layout: FrameLayout, batch_size: int = 3, seed: int = 0) -> dict:
    """A batch of the data pipeline's shapes and dtypes with ints inside each column's vocabulary."""
    g = torch.Generator().manual_seed(seed)
    K = layout.context_len
    vocabs = torch.tensor([c.vocab for c in layout.schema.int_columns])
    int_ctx = (torch.rand(batch_size, K, layout.n_int, generator=g) * vocabs).long()
    target_vocabs = torch.tensor([layout.schema.int_columns[i].vocab for i in layout.int_target_columns])
    return {
        "float_ctx": torch.randn(batch_size, K, layout.n_float, generator=g),
        "int_ctx": int_ctx,
        "next_ctrl": torch.rand(batch_size, layout.ctrl_dim, generator=g),
        "float_tgt": torch.randn(batch_size, layout.float_target_dim, generator=g),
        "int_tgt": (torch.rand(batch_size, layout.int_target_dim, generator=g) * target_vocabs).long(),
    }


def small_model(arch: str, layout: FrameLayout = V3):
    torch.manual_seed(0)
    return build_model(ModelConfig(arch=arch, **SMALL), layout)


def run(model, batch: dict) -> dict:
    return model(batch["float_ctx"], batch["int_ctx"], batch["next_ctrl"])


# ---------------------------------------------------------------- parameter counts


def test_mamba2_parameter_count_matches_the_reference():
    model = build_model(ModelConfig(), V3)
    assert count_parameters(model) == 4_345_444
    assert "4,345,444" in describe_model(model, V3)


def test_mamba2_parameter_count_with_projectiles_is_the_run_cards_number():
    layout = FrameLayout(EncodingConfig(projectiles=True).schema())
    assert count_parameters(build_model(ModelConfig(), layout)) == 4_347_748


def test_the_hold_gate_adds_one_linear_to_two_logits():
    """model.hold_gate: d_model + 1 parameters per player over the card's 4,345,444."""
    assert count_parameters(build_model(ModelConfig(hold_gate=True), V3)) == 4_345_444 + 2 * (384 + 1)
    assert count_parameters(build_model(ModelConfig(arch="mlp", hold_gate=True), V3)) == 1_874_516 + 2 * (256 + 1)


def test_the_rollout_age_adds_a_vector_and_two_factors_per_count_of_own_frames():
    """model.rollout_age: one d_model vector and an x and a y factor per count 0 .. rollout_age (0's
    stay zero); recurrent Mamba-2 only, and never negative."""
    assert count_parameters(build_model(ModelConfig(rollout_age=16), V3)) == 4_345_444 + 17 * (384 + 2)
    with pytest.raises(ConfigError, match="needs recurrent predictions"):
        build_model(ModelConfig(arch="mlp", rollout_age=16), V3)
    with pytest.raises(ConfigError, match="rollout_age must be >= 0"):
        build_model(ModelConfig(rollout_age=-1), V3)


def test_mlp_parameter_count_matches_the_reference():
    assert count_parameters(build_model(ModelConfig(arch="mlp"), V3)) == 1_874_516


def test_describe_model_gives_the_frame_sizes():
    text = describe_model(small_model("mlp"), V3)
    assert "FrameStackMLP" in text
    assert "138 floats + 17 ints -> 278 embedded" in text
    assert "next_ctrl: 26" in text and "112 floats" in text
    assert "stocks" not in text
    delta = FrameLayout(EncodingConfig().schema(), stocks_target="delta")
    assert "stocks: predicted as a change" in describe_model(small_model("mlp"), delta)


# ---------------------------------------------------------------- outputs


@pytest.mark.parametrize("arch", ["mamba2", "mlp"])
@pytest.mark.parametrize("layout", [V3, WIDE_CTRL], ids=["v3", "press_events_lookahead2"])
def test_output_keys_and_shapes(arch, layout):
    out = run(small_model(arch, layout), random_batch(layout, batch_size=3))
    assert set(out) == {"float", *TARGET_FIELDS}
    assert out["float"].shape == (3, layout.float_target_dim)
    for field in TARGET_FIELDS:
        assert out[field].shape == (3, 2, layout.vocab(field))


def test_wide_ctrl_layout_changes_only_ctrl_dim():
    assert (V3.ctrl_dim, WIDE_CTRL.ctrl_dim) == (26, 126)
    assert V3.float_target_dim == WIDE_CTRL.float_target_dim == 112


def test_float_heads_follow_the_float_target_blocks():
    heads = small_model("mamba2").heads.float_heads
    sizes = {name: head.out_features for name, head in heads.items()}
    assert sizes == {"continuous": 8, "velocity": 10, "binary": 86, "dynamics": 8}
    assert list(heads) == list(V3.float_blocks)


def test_state_age_as_a_float_is_an_input_and_never_a_target():
    schema = EncodingConfig(state_age_as_embed=False).schema()
    layout = FrameLayout(schema)
    ages = [schema.float_index("p0.state_age"), schema.float_index("p1.state_age")]
    assert not set(ages) & set(layout.float_target_columns)
    assert layout.n_float == 140 and layout.float_target_dim == 112  # the v3 targets, state_age only an input
    sizes = {name: head.out_features for name, head in small_model("mamba2", layout).heads.float_heads.items()}
    assert sizes == {"continuous": 8, "velocity": 10, "binary": 86, "dynamics": 8}
    # A store written when state_age's float column was filed under "dynamics" gives the same layout.
    older = dataclasses.replace(
        schema, float_columns=tuple(dataclasses.replace(c, group="dynamics") if c.field == "state_age" else c for c in schema.float_columns)
    )
    assert FrameLayout(older).float_target_columns == layout.float_target_columns


# ---------------------------------------------------------------- embedding


def test_frame_embedding_width_is_278_at_v3():
    embedding = FrameEmbedding(V3, ModelConfig().embed_dims)
    batch = random_batch(V3, batch_size=2)
    assert embedding.out_dim == 278
    assert embedding(batch["float_ctx"], batch["int_ctx"]).shape == (2, V3.context_len, 278)


def test_players_share_embedding_tables():
    embedding = FrameEmbedding(V3, ModelConfig().embed_dims)
    assert set(embedding.tables) == set(V3.embedded_fields)  # one table per field, not per column
    batch = random_batch(V3, batch_size=2)
    int_ctx = batch["int_ctx"]
    p0, p1 = V3.schema.int_indices(player=0), V3.schema.int_indices(player=1)
    int_ctx[..., p1] = int_ctx[..., p0]  # p1's fields equal p0's
    out = embedding(batch["float_ctx"], int_ctx)
    per_player = (out.shape[-1] - V3.n_float - ModelConfig().embed_dims["stage"]) // 2  # 68
    p0_block = out[..., V3.n_float : V3.n_float + per_player]
    p1_block = out[..., V3.n_float + per_player : V3.n_float + 2 * per_player]
    assert torch.equal(p0_block, p1_block)


def test_frame_vector_starts_with_the_floats():
    embedding = FrameEmbedding(V3, ModelConfig().embed_dims)
    batch = random_batch(V3)
    out = embedding(batch["float_ctx"], batch["int_ctx"])
    assert torch.equal(out[..., : V3.n_float], batch["float_ctx"])


# ---------------------------------------------------------------- behaviour


@pytest.mark.parametrize("arch", ["mamba2", "mlp"])
def test_no_state_between_calls(arch):
    model = small_model(arch).eval()
    batch, other = random_batch(V3, seed=0), random_batch(V3, seed=1)
    with torch.no_grad():
        first = run(model, batch)
        run(model, other)  # a call in between must not change the next answer
        again = run(model, batch)
    for key in first:
        assert torch.equal(first[key], again[key]), key


@pytest.mark.parametrize("arch", ["mamba2", "mlp"])
def test_backward_reaches_every_parameter(arch):
    model = small_model(arch).train()
    batch = random_batch(V3, batch_size=4)
    compute_losses(run(model, batch), batch, V3, LossConfig())["total"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_build_model_rejects_an_unknown_arch():
    with pytest.raises(ValueError, match="mamba2.*mlp"):
        build_model(ModelConfig(arch="transformer"), V3)


@pytest.mark.parametrize("arch", ["mamba2", "mlp"])
def test_bf16_autocast_gives_finite_outputs_and_keeps_fp32_parameters(arch):
    model = small_model(arch).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = run(model, random_batch(V3))
    for key, value in out.items():
        assert torch.isfinite(value.float()).all(), key
    assert all(p.dtype == torch.float32 for p in model.parameters())
