"""Rollouts and checkpoint evaluation on real stores: rollout mechanics, metrics, and scripts/evaluate.py end to end."""

import dataclasses
import functools
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from melee_encode import EncodeOptions, EncodingConfig, encode, open_store
from melee_model.batches import build_batch
from melee_model.checkpoint import save_checkpoint
from melee_model.config import ExperimentConfig, from_dict
from melee_model.evaluate import evaluate_checkpoint
from melee_model.examples import EncodingMismatch, ExampleSource
from melee_model.horizons import HORIZON_METRICS
from melee_model.layout import TARGET_FIELDS, FrameLayout, layout_for
from melee_model.losses import float_scale
from melee_model.model import build_model
from melee_model.quality import teacher_forced
from melee_model.rollout import pick_starts, rollout, rollout_store
from melee_model.sampler import is_validation
from melee_model.stepper import CLAMP_RANGES, FrameStepper

from conftest import ROOT, replay

K = 10
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Rollouts run batches of a few examples: with a busy CPU, a second torch thread costs more in
# synchronisation than it gains (10x slower measured on two shared cores).
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small models: a second thread costs more than it gives


def small_config() -> ExperimentConfig:
    """A model small enough that a rollout step takes milliseconds on a CPU."""
    return from_dict(
        ExperimentConfig,
        {
            "name": "eval-test",
            "data": {"require_fields": "none", "batch_size": 256, "num_workers": 0},
            "model": {"d_model": 32, "n_layers": 1, "d_state": 16, "headdim": 16, "dropout": 0.0},
            "wandb": {"enabled": False},
        },
    )


def small_model(layout: FrameLayout) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(small_config().model, layout).eval()


@functools.lru_cache(maxsize=4)
def game(store_path: str, name: str) -> tuple[int, np.ndarray, np.ndarray]:
    """(row, floats, ints) of the game encoded from replay `name`."""
    store = open_store(store_path)
    row = int(np.flatnonzero([s.endswith(name) for s in store.games["source"]])[0])
    floats, ints, _ = store.read_frames(row)
    return row, floats, ints


@pytest.fixture(scope="module")
def layout(shared_store) -> FrameLayout:
    return layout_for(small_config(), open_store(shared_store).schema)


def by_hand(model, layout: FrameLayout, floats: np.ndarray, ints: np.ndarray, t0: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame t0 predicted from the real frames before it, assembled column by column from one forward."""
    schema = layout.schema
    next_ctrl = torch.tensor(floats[t0, list(layout.ctrl_columns)])[None]
    with torch.no_grad():
        pred = model(torch.tensor(floats[t0 - K : t0])[None], torch.tensor(ints[t0 - K : t0]).long()[None], next_ctrl)
    out = pred["float"][0].numpy()
    frame, frame_ints = floats[t0 - 1].copy(), ints[t0 - 1].astype(np.int64)
    binary = range(layout.float_blocks["binary"].start, layout.float_blocks["binary"].stop)
    for j, column in enumerate(layout.float_target_columns):
        if layout.float_target_is_delta[j]:
            frame[column] += out[j]
        elif j in binary:
            frame[column] = float(1 / (1 + np.exp(-out[j])) > 0.5)
        else:
            frame[column] = out[j]
    frame[list(layout.ctrl_columns)] = floats[t0, list(layout.ctrl_columns)]
    for i, column in enumerate(schema.float_columns):
        if column.player is not None and column.field in CLAMP_RANGES:
            low, high = (bound * column.scale + column.offset for bound in CLAMP_RANGES[column.field])
            frame[i] = np.clip(frame[i], low, high)
    for field in TARGET_FIELDS:
        for p in (0, 1):
            frame_ints[schema.int_index(f"p{p}.{field}")] = int(pred[field][0, p].argmax())
    for p in (0, 1):
        action, age = schema.int_index(f"p{p}.action"), schema.int_index(f"p{p}.state_age")
        frame_ints[age] = min(ints[t0 - 1, age] + 1, 149) if frame_ints[action] == ints[t0 - 1, action] else 0
    return frame, frame_ints


# ---------------------------------------------------------------- rollout mechanics


def test_horizon_1_is_one_forward_on_the_real_context(shared_store, layout):
    model = small_model(layout)
    _, floats, ints = game(shared_store, "ics2.slp")
    starts = [K, 2000, 7000]
    result = rollout(model, layout, floats, ints, starts, 1, "cpu")
    assert result.pred_floats.shape == (3, 1, layout.n_float) and result.pred_ints.shape == (3, 1, layout.n_int)
    for i, t0 in enumerate(starts):
        frame, frame_ints = by_hand(model, layout, floats, ints, t0)
        np.testing.assert_allclose(result.pred_floats[i, 0], frame, rtol=0, atol=1e-5)
        assert np.array_equal(result.pred_ints[i, 0], frame_ints)


def test_predicted_frames_carry_the_replays_controllers(shared_store, layout):
    _, floats, ints = game(shared_store, "ics2.slp")
    starts = np.array([100, 4000, 9000])
    result = rollout(small_model(layout), layout, floats, ints, starts, 25, "cpu")
    controls = list(layout.ctrl_columns)
    expected = floats[starts[:, None] + np.arange(25)][..., controls]  # (3, 25, 26)
    assert np.array_equal(result.pred_floats[..., controls], expected)
    characters, stage = list(layout.int_columns_of("character")), list(layout.int_columns_of("stage"))
    assert (result.pred_ints[..., characters] == ints[starts - 1][:, None, characters]).all()  # carried over
    assert (result.pred_ints[..., stage] == ints[starts - 1][:, None, stage]).all()


def test_press_events_are_built_like_the_data_pipeline(shared_store):
    layout = FrameLayout(open_store(shared_store).schema, press_events=True)
    _, floats, ints = game(shared_store, "ics2.slp")
    stepper = FrameStepper(layout, "cpu")
    t0 = np.flatnonzero((floats[1:, list(layout.button_columns)] > floats[:-1, list(layout.button_columns)]).any(1))[5] + 1  # a press
    expected = build_batch(floats, ints, np.array([t0]), layout)["next_ctrl"][0]
    got = stepper.next_ctrl(torch.tensor(floats[t0 - 1])[None], torch.tensor(floats[t0])[None])[0]
    assert got.shape == (layout.ctrl_dim,) and np.array_equal(got.numpy(), expected) and expected[26:].any()


def test_lookahead_is_refused(shared_store):
    with pytest.raises(ValueError, match="lookahead"):
        FrameStepper(FrameLayout(open_store(shared_store).schema, lookahead=2), "cpu")


@pytest.mark.parametrize("sign", [1, -1])
def test_huge_deltas_are_clamped_in_game_units(shared_store, layout, sign):
    model = small_model(layout)
    for name in ("continuous", "dynamics"):
        head = model.heads.float_heads[name]
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.constant_(head.bias, sign * 1e6)
    _, floats, ints = game(shared_store, "ics2.slp")
    result = rollout(model, layout, floats, ints, [500, 6000], 3, "cpu")
    schema = layout.schema
    for field, (low, high) in CLAMP_RANGES.items():
        for p in (0, 1):
            name = f"p{p}.{field}"
            values = schema.decode_float(result.pred_floats[..., schema.float_index(name)], name)  # (2, 3)
            np.testing.assert_allclose(values, high if sign > 0 else low, rtol=1e-5, atol=1e-3, err_msg=name)
    x = schema.decode_float(result.pred_floats[..., schema.float_index("p0.x")], "p0.x")
    assert np.abs(x).max() <= 300 + 1e-3


def test_state_age_counts_while_the_action_holds(shared_store, layout):
    model = small_model(layout)
    _, floats, ints = game(shared_store, "ics2.slp")
    t0, schema = 3000, layout.schema
    last = ints[t0 - 1]
    p0_action = int(last[schema.int_index("p0.action")])  # p0 keeps its action, p1 switches to another
    p1_action = (int(last[schema.int_index("p1.action")]) + 1) % layout.vocab("action")
    for p, action in ((0, p0_action), (1, p1_action)):
        head = model.heads.int_heads["action"][p]
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
        head.bias.data[action] = 100.0
    result = rollout(model, layout, floats, ints, [t0], 12, "cpu")
    ages = result.pred_ints[0][:, list(layout.int_columns_of("state_age"))]  # (12, 2)
    assert (result.pred_ints[0][:, list(layout.action_columns)] == [p0_action, p1_action]).all()
    p0_start = int(last[schema.int_index("p0.state_age")])
    assert ages[:, 0].tolist() == [min(p0_start + 1 + h, 149) for h in range(12)]
    assert ages[:, 1].tolist() == list(range(12))  # reset on the change, then counting


def test_state_age_resets_on_a_change_and_stops_at_its_vocab(layout):
    stepper = FrameStepper(layout, "cpu")
    schema = layout.schema
    action, age = schema.int_index("p0.action"), schema.int_index("p0.state_age")
    ints = torch.zeros(1, layout.n_int, dtype=torch.long)
    ints[0, age] = 148
    floats = torch.zeros(1, layout.n_float)
    ages = []
    for predicted in (0, 0, 0, 7, 7):  # p0's predicted action per step
        pred = {"float": torch.zeros(1, layout.float_target_dim)}
        for field in TARGET_FIELDS:
            pred[field] = torch.zeros(1, 2, layout.vocab(field))
        pred["action"][0, 0, predicted] = 1.0
        floats, ints = stepper.frame(floats, ints, pred, floats)
        assert ints[0, action] == predicted
        ages.append(int(ints[0, age]))
    assert ages == [149, 149, 149, 0, 1]


def test_state_age_as_a_float_follows_the_same_rule():
    # state_age_as_embed off: a float column, state_age x0.01, that the model never predicts.
    layout = FrameLayout(EncodingConfig(state_age_as_embed=False).schema())
    stepper = FrameStepper(layout, "cpu")
    schema = layout.schema
    action, ages = schema.int_index("p0.action"), [schema.float_index("p0.state_age"), schema.float_index("p1.state_age")]
    floats, ints = torch.zeros(1, layout.n_float), torch.zeros(1, layout.n_int, dtype=torch.long)
    floats[0, ages] = torch.tensor([1.48, 0.05])  # 148 and 5 frames
    seen = []
    for predicted in (0, 0, 7, 7):  # p0's predicted action per step; p1 keeps action 0
        pred = {"float": torch.full((1, layout.float_target_dim), 9.0)}  # every float head says 9
        for field in TARGET_FIELDS:
            pred[field] = torch.zeros(1, 2, layout.vocab(field))
        pred["action"][0, 0, predicted] = 1.0
        floats, ints = stepper.frame(floats, ints, pred, floats)
        assert ints[0, action] == predicted
        seen.append([round(v, 4) for v in floats[0, ages].tolist()])
    # +1 frame (0.01) while the action holds, past the int column's 149 (no vocab here); 0 on a change.
    assert seen == [[1.49, 0.06], [1.50, 0.07], [0.0, 0.08], [0.01, 0.09]]


def test_stocks_predicted_as_a_change_stay_whole_stocks():
    layout = FrameLayout(EncodingConfig().schema(), stocks_target="delta")
    stepper = FrameStepper(layout, "cpu")
    schema = layout.schema
    stocks = [schema.float_index("p0.stocks"), schema.float_index("p1.stocks")]
    hitlag = [schema.float_index("p0.hitlag"), schema.float_index("p1.hitlag")]
    floats, ints = torch.zeros(1, layout.n_float), torch.zeros(1, layout.n_int, dtype=torch.long)
    floats[0, stocks] = torch.tensor([0.75, 1.0])  # 3 and 4 stocks, x0.25
    seen = []
    # The predicted change of p0 then p1, in encoded units (0.25 a stock), per step.
    for change in ([-0.2, -0.05], [-0.1, -0.12], [0.06, 0.2], [-0.7, -0.05]):
        pred = {"float": torch.full((1, layout.float_target_dim), 0.3)}  # hitlag and the rest say 0.3
        pred["float"][0, [layout.float_target_index(f"p{p}.stocks") for p in (0, 1)]] = torch.tensor(change)
        for field in TARGET_FIELDS:
            pred[field] = torch.zeros(1, 2, layout.vocab(field))
        floats, ints = stepper.frame(floats, ints, pred, floats)
        assert floats[0, hitlag].tolist() == pytest.approx([0.3, 0.3])  # still absolute
        seen.append([round(v / 0.25, 4) for v in floats[0, stocks].tolist()])
    # 3 - 0.8 stocks rounds to 2, 4 - 0.2 to 4; a change under half a stock keeps the count; 2 - 2.8
    # rounds to -1 and 4 + 0.8 to 5, clamped to 0 and 4.
    assert seen == [[2.0, 4.0], [2.0, 4.0], [2.0, 4.0], [0.0, 4.0]]


@pytest.mark.parametrize("encoding", [EncodingConfig(state_age_as_embed=False), EncodingConfig(projectiles=True, state_flags=False)])
def test_steps_in_other_encodings(encoding):
    layout = FrameLayout(encoding.schema())
    model = small_model(layout)
    float_ctx, int_ctx = torch.zeros(2, K, layout.n_float), torch.zeros(2, K, layout.n_int, dtype=torch.long)
    stepper = FrameStepper(layout, "cpu")
    replay_frame = torch.rand(2, layout.n_float)
    with torch.no_grad():
        pred = model(float_ctx, int_ctx, stepper.next_ctrl(float_ctx[:, -1], replay_frame))
    floats, ints = stepper.frame(float_ctx[:, -1], int_ctx[:, -1], pred, replay_frame)
    assert floats.shape == (2, layout.n_float) and ints.shape == (2, layout.n_int)
    assert torch.equal(floats[:, list(layout.ctrl_columns)], replay_frame[:, list(layout.ctrl_columns)])


def test_horizon_metrics_and_deterministic_starts(shared_store, layout):
    store = open_store(shared_store)
    rows, lengths = np.arange(store.n_games), store.games["length"]
    starts = pick_starts(store.games, rows, 8, 60, K, seed=3)
    assert np.array_equal(starts, pick_starts(store.games, rows, 8, 60, K, seed=3))
    assert not np.array_equal(starts, pick_starts(store.games, rows, 8, 60, K, seed=4))
    assert len(set(starts[:, 0])) == 8  # spread: one game each while there are games enough
    assert ((starts[:, 1] >= K) & (starts[:, 1] + 60 <= lengths[starts[:, 0]])).all()
    model = small_model(layout).train()
    result = rollout_store(model, layout, store, starts, 60, "cpu")
    assert model.training  # the mode is restored
    assert list(result.metrics) == [1, 10, 60]
    for values in result.metrics.values():
        assert set(values) == set(HORIZON_METRICS)
        assert values["pos_error"] >= 0 and 0 <= values["action_match"] <= 1 and 0 <= values["stocks_match"] <= 1
    assert result.metrics[60]["pos_error"] == pytest.approx(float(result.curves["pos_error"][59]))
    assert list(rollout_store(model, layout, store, starts[:2], 60, "cpu", horizons=(1, 30, 100)).metrics) == [1, 30, 60]
    first = result.first
    assert first.start == tuple(starts[0]) and first.pred["x"].shape == first.true["x"].shape == (60, 2)
    floats, _, _ = store.read_frames(int(starts[0, 0]))
    true_x = store.schema.decode_float(floats[starts[0, 1] : starts[0, 1] + 60, store.schema.float_index("p1.x")], "p1.x")
    np.testing.assert_allclose(first.true["x"][:, 1], true_x)


def test_starts_need_a_long_enough_game():
    with pytest.raises(ValueError, match="long enough"):
        pick_starts({"length": np.array([50, 80]), "hash": np.array(["a", "b"])}, np.arange(2), 4, 100, K)


def test_starts_are_the_same_games_and_frames_at_whatever_rows_a_store_holds_them(shared_store):
    """An encode with more workers stores the same games in another row order: the start points are
    the same (game, t0) pairs, so baselines and models are judged on the same frames."""
    games = open_store(shared_store).games
    hashes, lengths = np.array([str(h) for h in games["hash"]]), np.asarray(games["length"])
    order = np.random.default_rng(7).permutation(len(hashes))  # row r of the shuffled table is game order[r]
    shuffled = {"hash": hashes[order], "length": lengths[order]}

    def picked(table, rows):
        starts = pick_starts(table, rows, 12, 60, K, seed=5)
        return sorted((table["hash"][row], t0) for row, t0 in starts)

    every_game = np.arange(len(hashes))
    assert picked({"hash": hashes, "length": lengths}, every_game) == picked(shuffled, every_game)
    some = every_game[: len(hashes) // 2]  # the same games picked by their rows in each table
    assert picked({"hash": hashes, "length": lengths}, some) == picked(shuffled, np.argsort(order)[some])


# ---------------------------------------------------------------- scripts/evaluate.py


@pytest.fixture(scope="module")
def checkpoint(shared_store, tmp_path_factory, layout) -> str:
    """A checkpoint of an untrained small model, written as train.py writes one."""
    output = tmp_path_factory.mktemp("run")
    config = small_config()
    state = {"config": config.to_dict(), "progress": {"step": 0, "epoch": 0}, "store": {"path": shared_store}}
    save_checkpoint(output, 0, model=small_model(layout).state_dict(), optimizer={}, ranks=[{}], state=state, links=("latest", "best"))
    return str(output / "best")


def evaluate_script(*args) -> dict:
    command = [sys.executable, str(ROOT / "scripts" / "evaluate.py"), *args, "--json"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env={**os.environ, **ONE_THREAD}, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_evaluate_script_metrics_rollouts_and_plot(shared_store, checkpoint, tmp_path):
    plot = tmp_path / "rollout.png"
    out = evaluate_script(
        "--checkpoint",
        checkpoint,
        "--store",
        shared_store,
        "--batches",
        "3",
        "--rollout",
        "--rollouts",
        "4",
        "--horizon",
        "60",
        "--stage-floor",
        "on",
        "--plot",
        str(plot),
    )
    val_games = int(is_validation(open_store(shared_store).games, 0.1).sum())
    assert out["split"] == "val" and out["games"] == val_games and out["examples"] == 3 * 256
    for key in (
        "val_loss/total",
        "val_metric/action_change_acc",
        "val_metric/change_acc_both",
        "val_metric/position_mae",
        "val_metric/p0_action_acc",
        "val_metric/binary_acc",
        "val_action/cat_idle",
    ):
        assert isinstance(out[key], float), key
    assert out["rollouts"] == 4 and set(out["rollout"]) == {"1", "10", "60"} and out["stage_floor"] is True
    assert set(out["rollout"]["60"]) == set(HORIZON_METRICS)
    data = plot.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000


def test_evaluate_script_on_replay_files(shared_store, checkpoint):
    names = ("peppi/v3.13.slp", "peppi/v3.16.slp")  # one game on each side of the train/val split
    out = evaluate_script("--checkpoint", checkpoint, "--replays", *map(replay, names))
    lengths = {s: n for s, n in zip(open_store(shared_store).games["source"], open_store(shared_store).games["length"])}
    expected = sum(int(n) - K for s, n in lengths.items() if s.endswith(names))
    assert out["split"] == "all" and out["games"] == 2 and out["examples"] == expected
    assert isinstance(out["val_loss/total"], float)


def test_evaluation_divides_by_the_spreads_the_checkpoint_kept(shared_store, layout, tmp_path):
    """With loss.float_weighting target_std, a checkpoint's float_scale (its train split's spreads),
    not the evaluated store's, divides the float errors; a checkpoint without one measures them."""
    config = small_config()
    config = dataclasses.replace(config, loss=dataclasses.replace(config.loss, float_weighting="target_std"))
    source = ExampleSource.for_experiment(shared_store, config)
    measured = float_scale(layout, config.loss, source.float_target_std, "cpu")  # (T,)
    kept = measured.clone()
    kept[layout.float_blocks["continuous"]] *= 2.0  # the spreads of another train split
    losses = {}
    for name, scale in (("kept", kept.tolist()), ("none", None)):
        state = {"config": config.to_dict(), "progress": {"step": 0}, "store": {"path": shared_store}, "float_scale": scale}
        save_checkpoint(tmp_path / name, 0, model=small_model(layout).state_dict(), optimizer={}, ranks=[{}], state=state)
        losses[name] = evaluate_checkpoint(tmp_path / name / "latest", shared_store, max_batches=2, device="cpu", num_workers=0).metrics
    by_hand, _ = teacher_forced(small_model(layout), source, config, "val", "cpu", 2, 0, trained_scale=kept.tolist())
    assert losses["kept"]["val_loss/continuous"] == pytest.approx(by_hand["val_loss/continuous"], rel=1e-6)
    assert losses["kept"]["val_loss/continuous"] == pytest.approx(losses["none"]["val_loss/continuous"] / 4, rel=1e-5)  # squared errors
    assert losses["kept"]["val_loss/velocity"] == pytest.approx(losses["none"]["val_loss/velocity"], rel=1e-6)
    with pytest.raises(ValueError, match="a float scale of 3 targets for a layout of"):
        float_scale(layout, config.loss, source.float_target_std, "cpu", [1.0, 1.0, 1.0])


def test_evaluate_refuses_another_encoding(checkpoint, tmp_path):
    other = str(tmp_path / "projectiles.zarr")
    encode([replay("peppi/v3.13.slp")], other, EncodeOptions(config=EncodingConfig(projectiles=True), progress=False))
    with pytest.raises(EncodingMismatch, match="projectiles"):
        evaluate_checkpoint(checkpoint, other)
