"""Evaluation that says whether a model is good: baselines, error against horizon, a sequence-trained
checkpoint evaluated both ways, and benchmarks/model_quality.py end to end (short budget)."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_train import torchrun_train

from melee_encode import open_store
from melee_encode.errors import ConfigError
from melee_encode.stage_geometry import STAGE_GEOMETRY
from melee_model.baselines import BASELINES, baseline_frames
from melee_model.checkpoint import load_checkpoint
from melee_model.config import ExperimentConfig, TrainConfig, from_dict, load_config
from melee_model.evaluate import evaluate_checkpoint, metrics_table
from melee_model.horizons import HORIZON_METRICS, at_horizons, comparison_table, horizon_errors, per_frame, report_at
from melee_model.layout import layout_for
from melee_model.model import build_model, count_parameters
from melee_model.optim import lr_multiplier
from melee_model.quality import (
    MODEL,
    START_LEVELS,
    STILL_UNITS,
    baseline_errors,
    card_config,
    errors_by_start,
    hedged_errors,
    median_errors,
    motion_ratios,
    paired_ratio,
    player_groups,
    positions,
    rollouts_with_baselines,
)
from melee_model.rollout import OWN_FRAMES, pick_starts, rollout_windows, store_windows
from melee_model.stepper import CLAMP_RANGES, FrameStepper
from melee_model.train import Trainer

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
from model_quality import CONFIGS, settings_overrides, targets_trained  # noqa: E402

K, H = 10, 60


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small models: a second thread costs more than it gives


def seq_config() -> ExperimentConfig:
    return from_dict(
        ExperimentConfig,
        {
            "name": "quality-test",
            "data": {"objective": "sequence", "seq_len": 32, "require_fields": "none", "batch_size": 8, "num_workers": 0},
            "model": {"d_model": 32, "n_layers": 1, "d_state": 16, "headdim": 16, "dropout": 0.0, "backend": "torch"},
            "train": {
                "epochs": 1,
                "max_steps": 24,
                "lr": 1e-2,
                "log_interval": 8,
                "check_every": 8,
                "val_batches": 2,
                "min_val_change_acc": None,
                "patience_batches": 0,
            },
            "wandb": {"enabled": False},
        },
    )


@pytest.fixture(scope="module")
def layout(shared_store):
    return layout_for(seq_config(), open_store(shared_store).schema)


@pytest.fixture(scope="module")
def windows(shared_store):
    store = open_store(shared_store)
    starts = pick_starts(store.games, np.arange(store.n_games), 6, H, K, seed=1)
    return starts, *store_windows(store, starts, K, H)


def decoded(layout, floats, name):
    return layout.schema.decode_float(floats[..., layout.schema.float_index(name)], name)


# ---------------------------------------------------------------- baselines


def test_copy_last_repeats_the_last_real_frame(layout, windows):
    _, floats, ints = windows
    pred_floats, pred_ints = baseline_frames("copy_last", layout, floats, ints)
    assert pred_floats.shape == (6, H, layout.n_float) and pred_ints.shape == (6, H, layout.n_int)
    assert (pred_floats == floats[:, K - 1 : K]).all() and (pred_ints == ints[:, K - 1 : K]).all()


def test_constant_velocity_moves_positions_by_the_last_step(layout, windows):
    _, floats, ints = windows
    moving, still = baseline_frames("constant_velocity", layout, floats, ints), baseline_frames("copy_last", layout, floats, ints)
    for name in ("p0.x", "p0.y", "p1.x", "p1.y"):
        last, before = decoded(layout, floats[:, K - 1], name), decoded(layout, floats[:, K - 2], name)
        low, high = CLAMP_RANGES[name.split(".")[1]]
        expected = np.clip(last[:, None] + (last - before)[:, None] * np.arange(1, H + 1), low, high)  # (6, H)
        np.testing.assert_allclose(decoded(layout, moving[0], name), expected, rtol=1e-5, atol=1e-3)
    others = [i for i, c in enumerate(layout.schema.float_columns) if c.name not in ("p0.x", "p0.y", "p1.x", "p1.y")]
    assert (moving[0][..., others] == still[0][..., others]).all() and (moving[1] == still[1]).all()
    with pytest.raises(ValueError, match="baseline"):
        baseline_frames("oracle", layout, floats, ints)


@pytest.mark.parametrize("prior", ["constant_velocity", "scaled_velocity"])
@pytest.mark.parametrize("stage_floor", [False, True])
@pytest.mark.parametrize("arch, stepping", [("mamba2", "recurrent"), ("mamba2", "window"), ("mlp", "window")])
def test_an_untrained_motion_prior_model_rolls_out_the_constant_velocity_baseline(layout, windows, arch, stepping, stage_floor, prior):
    """model.motion_prior constant_velocity adds each player's last step to the x and y outputs, whose
    head rows start at zero: untrained, a rollout moves x and y exactly as the baseline does, whatever
    else it predicts; with model.stage_floor both land on the main platform alike. The scaled prior's
    gain starts at zero too, and is its only parameters: one factor per moving column from the heads' input."""
    starts, floats, ints = windows
    layout = dataclasses.replace(layout, stage_floor=stage_floor)
    config = seq_config().model
    model = build_model(dataclasses.replace(config, arch=arch, motion_prior=prior), layout)
    rolled = rollout_windows(model, layout, floats, ints, starts, "cpu", stepping=stepping).pred_floats  # (6, H, F)
    baseline = baseline_frames("constant_velocity", layout, floats, ints)[0]
    moving = list(layout.moving_columns)
    np.testing.assert_allclose(rolled[..., moving], baseline[..., moving], rtol=0, atol=1e-4)
    assert np.abs(baseline[:, 1:, moving] - baseline[:, :1, moving]).max() > 0.1  # the windows do move
    plain = build_model(dataclasses.replace(config, arch=arch), layout)
    heads_input = config.d_model if arch == "mamba2" else config.mlp_hidden[1]
    gain = (heads_input + 1) * len(moving) if prior == "scaled_velocity" else 0
    assert count_parameters(model) == count_parameters(plain) + gain
    assert set(model.state_dict()) - set(plain.state_dict()) == ({"prior.gain.weight", "prior.gain.bias"} if gain else set())


@pytest.mark.parametrize("stepping", ["recurrent", "window"])
def test_a_rollout_reading_back_only_its_positions_or_floats_takes_the_rest_from_the_replay(layout, windows, stepping):
    """rollout_windows' `own` (a drift diagnostic): "positions" reads back the replay's frame with the
    players' x and y made from the prediction, "floats" the made floats with the replay's ints; the
    first frame, made from real frames alone, is the same in every mode; an unknown mode is refused."""
    starts, floats, ints = windows
    torch.manual_seed(0)
    model = build_model(seq_config().model, layout)
    rolled = {own: rollout_windows(model, layout, floats, ints, starts, "cpu", stepping=stepping, own=own) for own in OWN_FRAMES}
    true_floats, true_ints = floats[:, K:], ints[:, K:]  # (6, H, F), (6, H, I)
    moving = list(layout.moving_columns)
    rest = [c for c in range(layout.n_float) if c not in moving]
    positions_only, floats_only, whole = rolled["positions"], rolled["floats"], rolled["all"]
    assert np.array_equal(positions_only.pred_floats[..., rest], true_floats[..., rest])
    assert np.array_equal(positions_only.pred_ints, true_ints) and np.array_equal(floats_only.pred_ints, true_ints)
    assert not np.array_equal(whole.pred_ints, true_ints) and not np.array_equal(floats_only.pred_floats[..., rest], true_floats[..., rest])
    for result in (positions_only, floats_only):
        np.testing.assert_array_equal(result.pred_floats[:, 0, moving], whole.pred_floats[:, 0, moving])  # the same first step
        assert not np.array_equal(result.pred_floats[:, 1:, moving], whole.pred_floats[:, 1:, moving])  # then each reads its own
    with pytest.raises(ConfigError, match="own frames must be one of"):
        rollout_windows(model, layout, floats, ints, starts, "cpu", own="ints")


def test_the_scaled_prior_adds_the_last_step_times_one_plus_its_gain(layout):
    """model.motion_prior scaled_velocity: a gain of -1 stops a player, -2 turns one round, 0.5 speeds
    one up by half, whatever the heads' input; the steps over MAX_STEP are still not carried on."""
    model = build_model(dataclasses.replace(seq_config().model, motion_prior="scaled_velocity"), layout)
    with torch.no_grad():
        model.prior.gain.bias.copy_(torch.tensor([-1.0, 0.5, -2.0, 0.0]))  # p0.x, p0.y, p1.x, p1.y
    frames = torch.zeros(2, 3, layout.n_float)  # (B, K, F): every moving column moves 10, then 60 game units a frame
    for b, units in enumerate((10.0, 60.0)):
        for i in layout.moving_columns:
            frames[b, :, i] = torch.arange(3) * units * layout.schema.float_columns[i].scale
    steps = model.motion.steps(frames)[:, -1]  # (2, P)
    h = torch.randn(2, model.config.d_model)
    added = model.prior.add(torch.zeros(2, layout.float_target_dim), steps, h)[:, list(layout.moving_target_positions)]
    scales = torch.tensor([layout.schema.float_columns[i].scale for i in layout.moving_columns])
    np.testing.assert_allclose((added / scales).detach().numpy(), [[0.0, 15.0, -10.0, 10.0], [0.0, 0.0, 0.0, 0.0]], atol=1e-4)


BATTLEFIELD = 31  # peppi's stage id


def frames_at(layout, points: dict, stage: int = BATTLEFIELD) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames of zeros (N, F) and (N, I) on `stage`, with the given columns at game-unit values:
    points {"p0.y": [5, -10], ...}, one value per frame."""
    count = len(next(iter(points.values())))
    floats, ints = torch.zeros(count, layout.n_float), torch.zeros(count, layout.n_int, dtype=torch.long)
    for name, values in points.items():
        column = layout.schema.float_columns[layout.schema.float_index(name)]
        floats[:, layout.schema.float_index(name)] = torch.tensor(values) * column.scale + column.offset
    ints[:, layout.int_columns_of("stage")[0]] = stage
    return floats, ints


def test_the_stage_floor_lands_only_a_player_falling_onto_the_main_platform(layout):
    """model.stage_floor: a player at or above y = 0 whose next y is below it, over the main platform,
    is put on it; beside the platform, already under it, or still above, the frame is left alone;
    so is a stage without geometry, and every frame when the floor is off."""
    edge = STAGE_GEOMETRY[BATTLEFIELD].main_right
    # Frames: over the platform, beside it, under the stage, still above it, at y = 0 sliding down.
    last, _ = frames_at(layout, {"p0.x": [0, edge + 5, 0, 0, -edge], "p0.y": [5, 5, -10, 5, 0]})
    new, ints = frames_at(layout, {"p0.x": [0, edge + 10, 0, 0, -edge], "p0.y": [-3, -3, -12, 2, -0.5]})
    floored = FrameStepper(dataclasses.replace(layout, stage_floor=True), "cpu")
    landed = floored.settle(last, new.clone(), ints)
    np.testing.assert_allclose(decoded(layout, landed.numpy(), "p0.y"), [0, -3, -12, 2, 0], atol=1e-4)
    unknown_stage = ints.clone()
    unknown_stage[:, layout.int_columns_of("stage")[0]] = 0
    for stepper, frame_ints in ((floored, unknown_stage), (FrameStepper(layout, "cpu"), ints)):
        np.testing.assert_allclose(
            decoded(layout, stepper.settle(last, new.clone(), frame_ints).numpy(), "p0.y"), [-3, -3, -12, 2, -0.5], atol=1e-4
        )


def test_constant_velocity_lands_on_the_main_platform_with_the_stage_floor(layout):
    """The baseline moves frame by frame: over the platform a falling player stays on it while x goes
    on, and falls again once past the edge."""
    edge = STAGE_GEOMETRY[BATTLEFIELD].main_right
    context = {"p0.x": [edge - 4.5] * (K - 1) + [edge - 3.5], "p0.y": [3] * (K - 1) + [2]}  # last step: x +1, y -1
    floats, ints = frames_at(layout, {name: values + [0] * 6 for name, values in context.items()})  # K + 6 frames
    floats, ints = floats[None].numpy(), ints[None].numpy().astype(np.int16)  # (1, K+6, ...)
    expected = {False: [1, 0, -1, -2, -3, -4], True: [1, 0, 0, -1, -2, -3]}
    for stage_floor, y in expected.items():
        moved, _ = baseline_frames("constant_velocity", dataclasses.replace(layout, stage_floor=stage_floor), floats, ints)
        np.testing.assert_allclose(decoded(layout, moved[0], "p0.x"), edge - 3.5 + np.arange(1, 7), atol=1e-3)
        np.testing.assert_allclose(decoded(layout, moved[0], "p0.y"), y, atol=1e-4)


def test_the_motion_prior_stops_at_a_respawn(layout):
    """A step over MotionSteps.MAX_STEP game units (a respawn, a teleport) is not carried on."""
    model = build_model(dataclasses.replace(seq_config().model, motion_prior="constant_velocity"), layout)
    x = layout.schema.float_index("p1.x")
    frames = torch.zeros(3, 3, layout.n_float)  # (B, K, F): p1.x moves 10, 49 and 51 game units a frame
    for b, units in enumerate((10.0, 49.0, 51.0)):
        frames[b, :, x] = torch.arange(3) * units * layout.schema.float_columns[x].scale
    steps = model.motion.steps(frames)[:, -1]  # (3, P)
    added = model.prior.add(torch.zeros(3, layout.float_target_dim), steps)[:, layout.float_target_index("p1.x")]
    units = added / layout.schema.float_columns[x].scale
    np.testing.assert_allclose(units.numpy(), [10.0, 49.0, 0.0], rtol=1e-5)


@pytest.mark.parametrize("arch", ["mamba2", "mlp"])
def test_motion_inputs_are_each_frames_steps_in_game_units(layout, arch):
    """model.motion_inputs appends each frame's x and y steps in game units to its embedding: 0 for
    the first frame read and for a step over MotionSteps.MAX_STEP; 4 inputs more, d_model or the first
    hidden layer's weights more per input, nothing else."""
    config = dataclasses.replace(seq_config().model, arch=arch)
    model = build_model(dataclasses.replace(config, motion_inputs=True), layout)
    x, y = layout.schema.float_index("p1.x"), layout.schema.float_index("p0.y")
    frames = torch.zeros(3, 3, layout.n_float)  # (B, K, F): p1.x moves 10, 49 and 51 game units a frame, p0.y falls 2
    for b, units in enumerate((10.0, 49.0, 51.0)):
        frames[b, :, x] = torch.arange(3) * units * layout.schema.float_columns[x].scale
    frames[:, :, y] = -2.0 * torch.arange(3) * layout.schema.float_columns[y].scale
    ints = torch.zeros(3, 3, layout.n_int, dtype=torch.long)
    inputs = model.embed(frames, ints, model.motion.steps(frames))[..., -4:]  # (B, K, P): p0.x, p0.y, p1.x, p1.y
    expected = torch.zeros(3, 3, 4)
    expected[:, 1:, 1] = -2.0
    expected[:, 1:, 2] = torch.tensor([10.0, 49.0, 0.0])[:, None]
    torch.testing.assert_close(inputs, expected, rtol=1e-5, atol=1e-5)
    plain = count_parameters(build_model(config, layout))
    per_input = config.d_model if arch == "mamba2" else layout.context_len * config.mlp_hidden[0]
    assert count_parameters(model) == plain + 4 * per_input


def test_an_unknown_motion_prior_is_refused(layout):
    with pytest.raises(ValueError, match="motion_prior"):
        build_model(dataclasses.replace(seq_config().model, motion_prior="gravity"), layout)


# ---------------------------------------------------------------- error against horizon


def test_horizon_errors_by_hand(layout, windows):
    _, floats, ints = windows
    true_floats, true_ints = floats[:, K:], ints[:, K:]
    perfect = horizon_errors(layout, true_floats, true_ints, true_floats, true_ints, (1, 10, 60))
    assert list(perfect) == [1, 10, 60]
    for values in perfect.values():
        assert all(values[m] == 0 for m in ("pos_error", "pos_error_euclid", "pos_error_euclid_p0", "pos_error_euclid_p1", "damage_error"))
        assert all(values[m] == 1 for m in ("action_match", "on_ground_match", "facing_match", "stocks_match"))
    schema = layout.schema
    pred_floats, pred_ints = true_floats.copy(), true_ints.copy()
    pred_floats[..., schema.float_index("p0.x")] += 3 * schema.float_columns[schema.float_index("p0.x")].scale  # p0 3 units right
    pred_floats[..., schema.float_index("p1.y")] += 4 * schema.float_columns[schema.float_index("p1.y")].scale  # p1 4 units up
    pred_floats[..., schema.float_index("p1.x")] += 3 * schema.float_columns[schema.float_index("p1.x")].scale  # ... and 3 right
    pred_floats[..., schema.float_index("p1.facing")] = 1 - pred_floats[..., schema.float_index("p1.facing")]
    pred_floats[..., schema.float_index("p0.percent")] += 10 * schema.float_columns[schema.float_index("p0.percent")].scale
    action = schema.int_index("p0.action")
    pred_ints[..., action] = (pred_ints[..., action] + 1) % layout.vocab("action")
    errors = horizon_errors(layout, pred_floats, pred_ints, true_floats, true_ints)[60]
    assert errors["pos_error"] == pytest.approx((3 + 0 + 3 + 4) / 4, abs=1e-3)
    assert errors["pos_error_euclid_p0"] == pytest.approx(3, abs=1e-3) and errors["pos_error_euclid_p1"] == pytest.approx(5, abs=1e-3)
    assert errors["pos_error_euclid"] == pytest.approx(4, abs=1e-3)
    assert errors["facing_match"] == 0.5 and errors["action_match"] == 0.5 and errors["on_ground_match"] == 1
    assert errors["damage_error"] == pytest.approx(5, abs=1e-3) and errors["stocks_match"] == 1
    assert report_at(300) == [1, 10, 60, 300] and report_at(45) == [1, 10, 45]


def test_comparison_table_has_a_row_per_horizon_and_metric_with_every_predictor(layout, windows):
    _, floats, ints = windows
    errors = {name: horizon_errors(layout, *baseline_frames(name, layout, floats, ints), floats[:, K:], ints[:, K:]) for name in BASELINES}
    lines = comparison_table(errors).splitlines()
    assert all(name in lines[0] for name in BASELINES)
    assert len(lines) == 1 + 3 * len(HORIZON_METRICS)
    assert all("*" in line for line in lines[1:])  # each row marks its best predictor


def test_rollouts_and_baselines_share_the_windows(shared_store, layout, windows):
    starts, floats, ints = windows
    torch.manual_seed(0)
    model = build_model(seq_config().model, layout).eval()
    result, curves = rollouts_with_baselines(model, layout, open_store(shared_store), starts, H, "cpu")
    assert list(curves) == [MODEL, *BASELINES] and all(len(c) == H for series in curves.values() for c in series.values())
    assert at_horizons(curves[MODEL]) == horizon_errors(layout, result.pred_floats, result.pred_ints, floats[:, K:], ints[:, K:])
    for name in BASELINES:
        assert at_horizons(curves[name]) == horizon_errors(layout, *baseline_frames(name, layout, floats, ints), floats[:, K:], ints[:, K:])
    # each rollout's own errors, whose means are the curves: what paired comparisons read
    per_baseline = baseline_errors(layout, floats, ints)
    for name, per_rollout in [(MODEL, result.per_rollout), *per_baseline.items()]:
        assert all(values.shape == (len(starts), H) for values in per_rollout.values())
        assert all(np.array_equal(values.mean(axis=0), curves[name][metric]) for metric, values in per_rollout.items())


def test_paired_ratio_resamples_whole_games():
    rng = np.random.default_rng(0)
    base = rng.uniform(1, 10, 40)
    other = base * rng.uniform(0.5, 1.5, 40)  # per-rollout ratios that differ
    assert paired_ratio(base, base, np.arange(40)) == (1.0, 1.0, 1.0)
    assert paired_ratio(base, 0.5 * base, np.arange(40)) == pytest.approx((0.5, 0.5, 0.5))
    ratio, low, high = paired_ratio(base, other, np.arange(40))  # every rollout a game of its own
    assert ratio == pytest.approx(other.sum() / base.sum()) and low < ratio < high and 0.5 < low and high < 1.5
    assert paired_ratio(base, other, np.zeros(40)) == pytest.approx((ratio, ratio, ratio))  # one game: nothing to resample
    game = np.repeat(np.arange(4), 10)  # 4 games of 10 rollouts, where the games differ, not the rollouts
    by_game = base * np.where(game < 2, 0.6, 1.4)
    _, low_games, high_games = paired_ratio(base, by_game, game)
    _, low_rollouts, high_rollouts = paired_ratio(base, by_game, np.arange(40))  # as if every rollout were independent
    assert high_games - low_games > 1.5 * (high_rollouts - low_rollouts)


def test_the_motion_ratio_is_0_for_copy_last_1_for_the_replay_and_half_for_half_the_way(layout, windows):
    _, floats, ints = windows
    real = floats[:, K:]
    still = baseline_frames("copy_last", layout, floats, ints)[0]
    halfway = still.copy()
    for name in ("p0.x", "p0.y", "p1.x", "p1.y"):
        column = layout.schema.float_index(name)
        halfway[..., column] = (still[..., column] + real[..., column]) / 2  # encoded units are affine in game units
    for pred, expected in ((still, 0.0), (real, 1.0), (halfway, 0.5)):
        ratios = motion_ratios(layout, floats, pred, (1, 10, H))
        assert list(ratios) == ["rollout_motion_ratio_1", "rollout_motion_ratio_10", f"rollout_motion_ratio_{H}"]
        assert list(ratios.values()) == pytest.approx([expected] * 3, abs=1e-5)


def test_median_errors_read_the_middle_rollout_at_each_horizon():
    pos_error = np.array([[1.0, 5.0], [3.0, 9.0], [2.0, 100.0]])  # (3 rollouts, 2 frames)
    assert median_errors(pos_error, (1, 2)) == {"rollout_pos_error_median_1": 2.0, "rollout_pos_error_median_2": 9.0}


def test_errors_by_start_split_the_rollouts_pos_error_by_where_the_players_were(layout, shared_store):
    store = open_store(shared_store)
    starts = pick_starts(store.games, np.arange(store.n_games), 96, H, K, seed=2)
    floats, ints = store_windows(store, starts, K, H)
    still, true_ints = baseline_frames("copy_last", layout, floats, ints)
    horizons, real = (1, 10, H), positions(layout, floats)
    for h in horizons:
        groups = player_groups(real, K, h)
        levels = np.stack([groups[g] for g in START_LEVELS])  # (3, N, 2)
        assert (levels.sum(axis=0) == 1).all()  # every player starts in exactly one level
        assert all(groups[g].any() for g in START_LEVELS)  # these replays have players off stage, on it and above it
        y = decoded(layout, floats[:, K - 1], "p0.y")
        assert (y[groups["below"][:, 0]] < 0).all() and (y[groups["above"][:, 0]] >= 1).all()
    figures = errors_by_start(layout, floats, still, horizons)
    assert list(figures) == [f"rollout_pos_error_{g}_{h}" for h in horizons for g in (*START_LEVELS, "still")]
    pos_error = per_frame(layout, still, true_ints, floats[:, K:], ints[:, K:])["pos_error"]  # (N, H)
    for h in horizons:
        groups = player_groups(real, K, h)
        counts = [groups[g].sum() for g in START_LEVELS]
        weighted = sum(n * figures[f"rollout_pos_error_{g}_{h}"] for n, g in zip(counts, START_LEVELS)) / sum(counts)
        assert weighted == pytest.approx(pos_error[:, h - 1].mean(), rel=1e-5)  # the levels split the rollout's pos_error
        assert figures[f"rollout_pos_error_still_{h}"] < STILL_UNITS * np.sqrt(2) / 2  # copy_last is off by their travel alone
    assert set(errors_by_start(layout, floats, floats[:, K:], horizons).values()) == {0.0}  # the replay's own frames
    shifted = floats[:, K:].copy()
    for name in ("p0.x", "p1.x"):
        column = layout.schema.float_index(name)
        shifted[..., column] += 2.0 * layout.schema.float_columns[column].scale  # 2 game units right, every frame
    assert list(errors_by_start(layout, floats, shifted, horizons).values()) == pytest.approx([1.0] * 12, abs=1e-4)


def test_the_best_hedge_undoes_a_move_scaled_per_axis_and_leaves_copy_last_as_it_is(layout, shared_store):
    """hedged_errors: a predictor that moves the players twice as far as the replay in x and 4/3 as
    far in y hedges to the replay (factors 0.5 and 0.75, fit on the other parity's games), copy_last
    to its own error (no factor moves it), the replay to 0; rollouts of one parity of games: NaN."""
    store = open_store(shared_store)
    starts = pick_starts(store.games, np.arange(store.n_games), 96, H, K, seed=2)
    floats, ints = store_windows(store, starts, K, H)
    games, horizons = starts[:, 0], (1, 10, H)
    assert (games % 2 == 0).any() and (games % 2 == 1).any()
    still, true_ints = baseline_frames("copy_last", layout, floats, ints)
    overshoot = floats[:, K:].copy()
    for name, factor in (("p0.x", 2.0), ("p1.x", 2.0), ("p0.y", 4 / 3), ("p1.y", 4 / 3)):
        column = layout.schema.float_index(name)
        start = floats[:, K - 1 : K, column]  # (N, 1): encoded units are affine in game units
        overshoot[..., column] = start + factor * (floats[:, K:, column] - start)
    moving = (10, H)  # by frame 1 some groups of one parity have not moved: nothing to fit a factor on
    assert list(hedged_errors(layout, floats, overshoot, games, moving).values()) == pytest.approx([0.0] * 2, abs=1e-4)
    assert list(hedged_errors(layout, floats, floats[:, K:], games, horizons).values()) == pytest.approx([0.0] * 3, abs=1e-4)
    pos_error = per_frame(layout, still, true_ints, floats[:, K:], ints[:, K:])["pos_error"]  # (N, H)
    hedged = hedged_errors(layout, floats, still, games, horizons)
    assert list(hedged) == [f"rollout_pos_error_hedged_{h}" for h in horizons]
    assert list(hedged.values()) == pytest.approx([pos_error[:, h - 1].mean() for h in horizons], rel=1e-5)
    overshot = per_frame(layout, overshoot, true_ints, floats[:, K:], ints[:, K:])["pos_error"][:, H - 1].mean()
    assert overshot > 1.0  # the unhedged overshoot is far off
    one_parity = games % 2 == 0
    lone = hedged_errors(layout, floats[one_parity], still[one_parity], games[one_parity], horizons)
    assert all(np.isnan(v) for v in lone.values())


# ---------------------------------------------------------------- a sequence-trained checkpoint, evaluated both ways


@pytest.fixture(scope="module")
def sequence_checkpoint(shared_store, tmp_path_factory) -> str:
    output = tmp_path_factory.mktemp("seq-run")
    config = seq_config()
    trainer = Trainer(config, shared_store, output_dir=str(output), progress_bar=False)
    trainer.fit()
    assert trainer.progress.step == 24
    return str(output / "latest")


def test_sequence_training_learns(sequence_checkpoint):
    lines = [
        json.loads(line)
        for line in open(os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(sequence_checkpoint))), "metrics.jsonl"))
    ]
    losses = [line["loss/total"] for line in lines if "loss/total" in line]
    assert len(losses) == 3 and losses[-1] < 0.8 * losses[0]


def test_a_sequence_checkpoint_evaluates_on_card_examples_and_its_own_windows(shared_store, sequence_checkpoint):
    evaluation = evaluate_checkpoint(sequence_checkpoint, shared_store, max_batches=2, rollouts=4, horizon=H)
    config = seq_config()
    assert evaluation.examples == 2 * card_config(config).data.batch_size == 2 * 8 * 32  # K-frame examples, same targets per batch
    assert evaluation.sequence_targets == 2 * 8 * 32
    assert set(evaluation.sequence) == set(evaluation.metrics)
    out = evaluation.to_json()
    assert set(out["horizons"]) == {MODEL, *BASELINES} and set(out["horizons"][MODEL]) == {"1", "10", "60"}
    assert set(out["horizons"]["copy_last"]["60"]) == set(HORIZON_METRICS)
    assert out["sequence"]["targets"] == 2 * 8 * 32 and isinstance(out["sequence"]["val_metric/change_acc_both"], float)
    text = metrics_table(evaluation)
    assert "own windows" in text and "constant_velocity" in text and "stage floor" not in text
    assert out["stage_floor"] is False


def test_a_checkpoint_rolls_out_with_the_stage_floor_on_request(shared_store, sequence_checkpoint):
    """evaluate_checkpoint(stage_floor=True) lands the rollouts and the constant-velocity baseline
    on the main platform, whatever the checkpoint's model.stage_floor."""
    floored = evaluate_checkpoint(sequence_checkpoint, shared_store, max_batches=1, rollouts=4, horizon=H, stage_floor=True)
    assert floored.stage_floor and floored.to_json()["stage_floor"] is True
    assert "landing on the main platform (stage floor)" in metrics_table(floored)
    layout = layout_for(seq_config(), open_store(shared_store).schema)
    starts = floored.rollout.starts
    floats, ints = store_windows(open_store(shared_store), starts, K, H)
    expected = horizon_errors(
        layout,
        *baseline_frames("constant_velocity", dataclasses.replace(layout, stage_floor=True), floats, ints),
        floats[:, K:],
        ints[:, K:],
    )
    assert floored.horizons["constant_velocity"] == expected


# ---------------------------------------------------------------- benchmarks/model_quality.py


@pytest.mark.slow
def test_model_quality_script_short_budget(shared_store, tmp_path):
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "model_quality.py"),
        "--store",
        shared_store,
        "--minutes",
        "0.1",
        "--rollouts",
        "4",
        "--val-batches",
        "2",
        "--sequence-set",
        "model.motion_prior=constant_velocity",
        "--sequence-set",
        "model.hold_gate=true",
        "--last-set",
        "model.stage_floor=true",
        "--sampling",
        "0.5",
        "--sampling-mode",
        "rollout",
        "--seed",
        "2",
        "--output",
        str(tmp_path),
        "--json",
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    keys = (
        "val_change_acc",
        "val_change_acc_p0",
        "val_pos_mae",
        "val_action_acc_p0",
        "rollout_pos_error_10",
        "rollout_pos_error_60",
        "rollout_pos_error_300",
        "steps",
        "train_s",
    )
    for name in ("last", "sequence", "sequence_sampled"):
        assert all(isinstance(out[name][key], (int, float)) for key in keys), name
        assert out[name]["steps"] > 0 and 6 <= out[name]["train_s"] < 30
        assert (tmp_path / name / "latest" / "model.pt").is_file(), name  # --output keeps the runs
    assert 0 <= out["sequence"]["val_hold_acc"] <= 1 and 0 <= out["sequence"]["own_hold_acc"] <= 1
    assert out["last"]["val_hold_acc"] is None  # no hold gate
    for name in BASELINES:
        assert all(isinstance(out["baselines"][name][f"rollout_pos_error_{h}"], float) for h in (1, 10, 60, 300))
    assert all(out["baselines"]["copy_last"][f"rollout_motion_ratio_{h}"] == 0.0 for h in (1, 10, 60, 300))
    for name in ("last", "sequence", "constant_velocity"):
        figures = out["baselines"].get(name) or out[name]
        assert all(figures[f"rollout_motion_ratio_{h}"] >= 0 and figures[f"rollout_pos_error_median_{h}"] >= 0 for h in (1, 10, 60, 300))
        by_start = [figures[f"rollout_pos_error_{g}_{h}"] for g in START_LEVELS for h in (1, 10, 60, 300)]  # null: nobody started there
        assert all(e is None or e >= 0 for e in by_start) and any(e is not None for e in by_start)
        assert all(figures[f"rollout_pos_error_hedged_{h}"] is None or figures[f"rollout_pos_error_hedged_{h}"] >= 0 for h in (1, 60))
    copy_last = out["baselines"]["copy_last"]  # no factor moves players that copy_last never moved (null: games of one parity)
    assert copy_last["rollout_pos_error_hedged_60"] in (None, pytest.approx(copy_last["rollout_pos_error_60"], rel=1e-5))
    for name, other in [("sequence", "last"), ("sequence_sampled", "last"), ("last", "copy_last"), ("sequence", "constant_velocity")]:
        ratio, low, high = out[name][f"rollout_pos_error_vs_{other}_60"]  # paired on the same rollouts
        errors = out["baselines"] if other in BASELINES else out
        assert ratio == pytest.approx(out[name]["rollout_pos_error_60"] / errors[other]["rollout_pos_error_60"], rel=1e-6)
        assert low <= ratio <= high
    assert "rollout_pos_error_vs_last_60" not in out["last"]
    assert out["setup"]["rollouts"] == 4 and out["setup"]["split"] == "val"
    assert out["setup"]["sampling"] == 0.5 and out["setup"]["sampling_mode"] == "rollout"
    assert out["setup"]["overrides"] == {  # the seed's, then the flags'
        "last": ["train.seed=2", "data.seed=2", "model.stage_floor=true"],
        "sequence": ["train.seed=2", "data.seed=2", "model.motion_prior=constant_velocity", "model.hold_gate=true"],
    }
    assert out["setup"]["seed"] == 2 and out["setup"]["settings"] is None


def test_model_quality_settings_file_gives_each_objective_its_overrides_then_the_seed(tmp_path):
    x1 = settings_overrides(str(ROOT / "benchmarks" / "quality_settings" / "x1.yaml"), 1)
    last, sequence = (load_config(CONFIGS[name], x1[name]) for name in ("last", "sequence"))
    for config in (last, sequence):  # "both": the loss, the prior and the floor of every README run since S3
        assert (config.loss.float_loss, config.loss.huber_delta, config.model.motion_prior) == ("huber", 0.0005, "scaled_velocity")
        assert config.model.motion_inputs and config.model.stage_floor and config.data.stocks_target == "delta"
        assert (config.train.lr, config.train.seed, config.data.seed) == (1e-3, 1, 1)
    unroll = sequence.train.unroll
    assert (unroll.frames, unroll.share, unroll.age_lr, unroll.gradient, unroll.trains) == (48, 0.05, 60, "local", "age")
    assert (sequence.model.rollout_age, sequence.model.rollout_age_after, sequence.data.batch_size, sequence.data.warmup) == (24, 12, 16, 9)
    assert last.train.unroll.frames == 0 and last.model.rollout_age == 0  # the card's model has neither
    assert settings_overrides(None, 3) == {name: ["train.seed=3", "data.seed=3"] for name in ("last", "sequence")}
    assert settings_overrides(None, None) == {"last": [], "sequence": []}
    misspelled = tmp_path / "bad.yaml"
    misspelled.write_text("sequnce: [train.lr=1e-3]\n")
    with pytest.raises(SystemExit, match="unknown keys sequnce"):
        settings_overrides(str(misspelled), None)
    misspelled.write_text("both: train.lr=1e-3\n")  # a line where a list belongs
    with pytest.raises(SystemExit, match="lists of KEY=VALUE"):
        settings_overrides(str(misspelled), None)


def test_model_quality_counts_unrolled_targets_from_their_start_epoch():
    card = from_dict(ExperimentConfig, {"data": {"batch_size": 256}})
    assert targets_trained(card, 10, 4) == 2560
    windows = {"objective": "sequence", "batch_size": 32, "seq_len": 64, "warmup": 4}
    sequence = from_dict(ExperimentConfig, {"data": windows})
    assert targets_trained(sequence, 10, 4) == 10 * 32 * 60
    unrolled = from_dict(ExperimentConfig, {"data": windows, "train": {"unroll": {"frames": 8, "start_epoch": 2}}})
    assert targets_trained(unrolled, 7, 4) == 7 * 32 * 60  # epoch 2 starts at step 8
    assert targets_trained(unrolled, 10, 4) == 10 * 32 * 60 + 2 * 32 * 8


def test_model_quality_runs_its_lr_cosine_over_the_wall_clock():
    """train.lr_schedule 'per_second': warmup over steps, then the cosine at the seconds trained when
    each step is taken, ending at the floor with max_seconds whatever the step count."""
    clock = [0.0]
    train = TrainConfig(lr_schedule="per_second", max_seconds=600, warmup_steps=10, min_lr_ratio=0.1)
    multiplier = lr_multiplier(train, updates_per_epoch=100, elapsed=lambda: clock[0])
    assert multiplier(4) == pytest.approx(0.5)  # warmup: steps
    for seconds, expected in ((0, 1.0), (300, 0.55), (600, 0.1), (900, 0.1)):
        clock[0] = seconds
        assert multiplier(50) == multiplier(5000) == pytest.approx(expected)
    with pytest.raises(ConfigError, match="needs train.max_seconds"):
        lr_multiplier(TrainConfig(lr_schedule="per_second"), 100, elapsed=lambda: 0.0)


# ---------------------------------------------------------------- two ranks, resumed


def torchrun_sequence(store: str, output, *options: str) -> subprocess.CompletedProcess:
    """scripts/train.py on 2 CPU ranks with the tiny model and the sequence objective."""
    sequence = [
        "data.objective=sequence",
        "data.seq_len=32",
        "data.batch_size=8",
        "data.warmup=4",
        "train.epochs=1",
        "train.log_interval=10",
        "train.check_every=10",
        "train.eval_at_start=false",
        "train.val_batches=2",
        "wandb.enabled=false",
    ]
    return torchrun_train(store, output, *(arg for o in sequence for arg in ("--set", o)), *options)


@pytest.mark.slow
def test_two_ranks_train_the_sequence_objective_and_resume_exactly(shared_store, tmp_path):
    """With unrolled training from the first step in half the batches (each rank draws its own),
    training the rollout's age tables alone at their own rate: the teacher-forced windows and the
    unroll's recurrent steps on the model under DistributedDataParallel."""
    settings = ("train.unroll.frames=6", "train.unroll.start_epoch=0", "train.unroll.share=0.5", "train.unroll.trains=age")
    settings += ("train.unroll.age_lr=10", "model.rollout_age=6")
    whole, cut, unrolled = tmp_path / "whole", tmp_path / "cut", tuple(arg for s in settings for arg in ("--set", s))
    torchrun_sequence(shared_store, whole, *unrolled, "--set", "train.max_steps=40")
    stopped = torchrun_sequence(shared_store, cut, *unrolled, "--set", "train.max_steps=20")
    assert "stopped: reached train.max_steps=20" in stopped.stdout
    assert "rolled out 6 frames through its own frames, weight 1, in 50% of the batches; its rows train" in stopped.stdout
    resumed = torchrun_sequence(shared_store, cut, *unrolled, "--set", "train.max_steps=40", "--resume", str(cut / "latest"))
    assert "resumed from" in resumed.stdout and "at step 20" in resumed.stdout
    read = lambda path: [
        {k: v for k, v in json.loads(line).items() if k != "examples_per_s"} for line in (path / "metrics.jsonl").read_text().splitlines()
    ]  # noqa: E731
    lines = read(whole)
    assert [line["step"] for line in lines] == [10, 20, 30, 40] and lines[-1]["loss/total"] < lines[0]["loss/total"]
    assert read(cut) == lines
    weights, optimizer, _, _ = load_checkpoint(str(whole / "latest"))
    assert all(weights[f"age.{table}.weight"][1:].any() and not weights[f"age.{table}.weight"][0].any() for table in ("table", "motion"))
    assert [group["lr"] / optimizer["param_groups"][0]["lr"] for group in optimizer["param_groups"]] == pytest.approx([1, 1, 10])
