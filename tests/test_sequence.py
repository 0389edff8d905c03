"""The sequence objective on real stores: every position of a window is the card's example at the same
frames, the model's sequence forward and recurrent step equal its card forward, weighted losses and
metrics count the target positions only, scheduled sampling with the model's own frames, training."""

import dataclasses
import functools

import numpy as np
import pytest
import torch
from numerics import CUDA_TOL, STEP_TOL, rel_err

from melee_encode import open_store
from melee_encode.errors import ConfigError
from melee_model.batches import batch_to_device, build_batch
from melee_model.config import ExperimentConfig, LossConfig, ScheduledSamplingConfig, UnrollConfig, from_dict, load_config
from melee_model.examples import PART_SHIFT, ExampleSource
from melee_model.layout import FrameLayout, layout_for
from melee_model.losses import LOSS_TERMS, compute_losses
from melee_model.metrics import MetricAccumulator, score
from melee_model.model import RolloutAge, build_model
from melee_model.objective import LastObjective, SequenceObjective, build_objective
from melee_model.plan import plan_markdown, plan_run
from melee_model.rollout import rollout
from melee_model.scheduled_sampling import ContextNoise, branches, own_frames, own_rollouts, roll_out, substitute
from melee_model.sequence import SequenceParts, position_rows
from melee_model.stepper import FrameStepper
from melee_model.unroll import Unroll, rolled_columns, unrolled

from conftest import ROOT

L = 48


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small models: a second thread costs more than it gives


def config(**data) -> ExperimentConfig:
    return from_dict(
        ExperimentConfig,
        {
            "name": "seq-test",
            "data": {"objective": "sequence", "seq_len": L, "require_fields": "none", "batch_size": 16, "num_workers": 0, **data},
            "model": {"d_model": 32, "n_layers": 2, "d_state": 16, "headdim": 16, "dropout": 0.0, "backend": "torch"},
            "train": {"scheduled_sampling": {"rate": 0.0}},
            "wandb": {"enabled": False},
        },
    )


@functools.lru_cache(maxsize=2)
def game(store_path: str, name: str = "ics2.slp") -> tuple[np.ndarray, np.ndarray]:
    store = open_store(store_path)
    row = int(np.flatnonzero([s.endswith(name) for s in store.games["source"]])[0])
    floats, ints, _ = store.read_frames(row)
    return floats, ints


def windows(floats: np.ndarray, ints: np.ndarray, starts, target_mask=None) -> dict:
    """A contract batch of windows s .. s+L of one game's frames."""
    frames = np.asarray(starts)[:, None] + np.arange(L + 1)  # (B, L+1)
    mask = np.ones((len(starts), L), dtype=bool) if target_mask is None else target_mask
    return {"float_seq": torch.from_numpy(floats[frames]), "int_seq": torch.from_numpy(ints[frames]), "target_mask": torch.from_numpy(mask)}


# The ways a model reads motion: neither, the constant-velocity prior, the step inputs, the scaled prior
# with them, that with the hold gate, and that with the rollout's age.
MOTIONS = {
    "plain": {},
    "prior": {"motion_prior": "constant_velocity"},
    "inputs": {"motion_inputs": True},
    "scaled": {"motion_prior": "scaled_velocity", "motion_inputs": True},
    "hold": {"motion_prior": "scaled_velocity", "motion_inputs": True, "hold_gate": True},
    "age": {"motion_prior": "scaled_velocity", "motion_inputs": True, "hold_gate": True, "rollout_age": 3},
}


def small_model(layout: FrameLayout, seed: int = 0, motion: str = "plain") -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(dataclasses.replace(config().model, **MOTIONS[motion]), layout)
    if model.prior is not None and model.prior.gain is not None:
        torch.nn.init.normal_(model.prior.gain.weight, std=0.1)  # a gain as trained, not its zero start
    if model.hold is not None:
        torch.nn.init.normal_(model.hold.linear.weight, std=0.5)  # some players held, some not
        torch.nn.init.zeros_(model.hold.linear.bias)
    if model.age is not None:
        with torch.no_grad():
            model.age.table.weight[1:].normal_(std=0.5)  # each count its own answer, as if trained
            model.age.motion.weight[1:].uniform_(-0.5, 0.5)  # and its own factor on the players' steps
            steps = model.heads.float_heads[model.prior.block].weight  # the players' steps change as they move
            steps[model.prior.rows] = 0.05 * torch.randn(len(model.prior.rows), steps.shape[1])
    return model.eval()


@pytest.fixture(scope="module")
def layout(shared_store) -> FrameLayout:
    return layout_for(config(), open_store(shared_store).schema)


# ---------------------------------------------------------------- examples


@pytest.mark.parametrize("press_events, stocks_target", [(False, "absolute"), (True, "absolute"), (False, "delta")])
def test_every_position_is_the_cards_example_at_the_same_frames(shared_store, press_events, stocks_target):
    layout = FrameLayout(open_store(shared_store).schema, press_events=press_events, stocks_target=stocks_target)
    floats, ints = game(shared_store)
    starts = np.array([0, 1234, len(floats) - L - 1])
    parts = SequenceParts(layout, "cpu")(windows(floats, ints, starts))
    targets = (starts[:, None] + np.arange(1, L + 1)).ravel()  # (B*L,) target frame of each position
    card = build_batch(floats, ints, targets, layout)  # context_len 10: frames t-10 .. t-1
    flat = {key: value.flatten(0, 1).numpy() for key, value in parts.items() if key != "target_mask"}
    assert np.array_equal(flat["next_ctrl"], card["next_ctrl"])
    assert np.array_equal(flat["float_tgt"], card["float_tgt"])
    assert np.array_equal(flat["int_tgt"], card["int_tgt"])
    assert np.array_equal(flat["float_in"], card["float_ctx"][:, -1]) and np.array_equal(flat["int_in"], card["int_ctx"][:, -1])
    assert np.array_equal(flat["float_next"], floats[targets])
    card_batch = batch_to_device({key: torch.from_numpy(value) for key, value in card.items()}, torch.device("cpu"))
    _, card_rows = LastObjective(layout, ScheduledSamplingConfig(), "cpu").outputs(small_model(layout), card_batch)
    assert np.array_equal(flat["hold"], card_rows["hold"].numpy())
    if press_events:
        assert flat["next_ctrl"][:, 26:].any()


def test_the_loaders_windows_are_the_cards_examples_on_the_device(shared_store):
    """A batch of the sequence loader, moved to the device: each target position is build_batch's
    example at the same frames of its game (example_id names frame s)."""
    seq = config(batch_size=8)
    source = ExampleSource.for_experiment(shared_store, seq)
    batch = next(iter(source.loader("train", 0)))
    parts = SequenceParts(source.layout, "cpu")(batch_to_device(batch, torch.device("cpu")))
    games, store = source.store.games, source.store
    checked = 0
    for i, example_id in enumerate(batch["example_id"].tolist()):
        part, position = example_id >> PART_SHIFT, example_id & ((1 << PART_SHIFT) - 1)
        row = int(
            np.flatnonzero((games["part"] == part) & (games["offset"] <= position) & (position < games["offset"] + games["length"]))[0]
        )
        floats, ints, _ = store.read_frames(row)
        s = position - int(games["offset"][row])
        positions = np.flatnonzero(parts["target_mask"][i].numpy())
        card = build_batch(floats, ints, s + positions + 1, source.layout)
        assert np.array_equal(parts["float_tgt"][i, positions].numpy(), card["float_tgt"])
        assert np.array_equal(parts["int_tgt"][i, positions].numpy(), card["int_tgt"])
        assert np.array_equal(parts["next_ctrl"][i, positions].numpy(), card["next_ctrl"])
        assert np.array_equal(parts["float_in"][i, positions].numpy(), card["float_ctx"][:, -1])
        checked += len(positions)
    assert checked == int(batch["target_mask"].sum()) > 0


# ---------------------------------------------------------------- the model


@pytest.mark.parametrize("motion", MOTIONS)
def test_sequence_forward_at_each_position_equals_the_card_forward(shared_store, layout, motion):
    model = small_model(layout, motion=motion)
    floats, ints = game(shared_store)
    parts = SequenceParts(layout, "cpu")(windows(floats, ints, [700, 5000]))
    with torch.no_grad():
        every = model(parts["float_in"], parts["int_in"], parts["next_ctrl"])  # (2, L, ...)
        for j in (0, 9, 10, 31, L - 1):
            card = model(parts["float_in"][:, : j + 1], parts["int_in"][:, : j + 1], parts["next_ctrl"][:, j])
            for key in card:
                assert rel_err(every[key][:, j], card[key]) < STEP_TOL[torch.float32], (j, key)
    assert every["float"].shape == (2, L, layout.float_target_dim) and every["action"].shape == (2, L, 2, layout.vocab("action"))


def test_a_checkpoint_trained_either_way_evaluates_either_way(shared_store, layout):
    """The same weights score the card's K-frame examples and the sequence windows of the same games."""
    model = small_model(layout)
    seq_config = config(batch_size=8)
    card_config = dataclasses.replace(seq_config, data=dataclasses.replace(seq_config.data, objective="last", batch_size=64))
    source = ExampleSource.for_experiment(shared_store, seq_config)
    card_source = ExampleSource.for_experiment(shared_store, card_config)
    loaded = small_model(layout, seed=1)
    loaded.load_state_dict(model.state_dict())
    nothing = lambda: torch.autocast("cpu", enabled=False)  # noqa: E731
    seq_metrics, seq_targets = score(
        loaded,
        list(source.loader("val", 0))[:2],
        layout,
        LossConfig(),
        torch.device("cpu"),
        nothing,
        build_objective(seq_config, layout, "cpu"),
    )
    card_metrics, card_examples = score(loaded, list(card_source.loader("val", 0))[:2], layout, LossConfig(), torch.device("cpu"), nothing)
    assert seq_targets == 2 * 8 * L and card_examples == 2 * 64
    for values in (seq_metrics.compute(), card_metrics.compute()):
        assert np.isfinite(values["loss/total"]) and 0 <= values["metric/p0_action_acc"] <= 1


@pytest.mark.parametrize("motion", MOTIONS)
def test_recurrent_step_equals_the_full_forward(shared_store, layout, motion):
    """Prefill a real context, then one frame per step through every layer: the heads equal the full
    forward's at every position (fp32), the last step (prior, inputs) carried in the state."""
    model = small_model(layout, motion=motion)
    floats, ints = game(shared_store)
    K, steps, starts = 10, 37, np.array([300, 6000, 9100])
    frames = starts[:, None] + np.arange(K + steps)  # (3, K+steps)
    float_seq, int_seq = torch.from_numpy(floats[frames]), torch.from_numpy(ints[frames]).long()
    ctrl = torch.from_numpy(floats[frames + 1][..., list(layout.ctrl_columns)])  # (3, K+steps, 26)
    with torch.no_grad():
        full = model(float_seq, int_seq, ctrl)  # (3, K+steps, ...)
        x, state = model.prefill(float_seq[:, :K], int_seq[:, :K])
        for i in range(K - 1, K + steps):
            if i >= K:
                x, state = model.step(float_seq[:, i], int_seq[:, i], state)
            stepped = model.predict(x, ctrl[:, i], state.step)
            for key in stepped:
                assert rel_err(stepped[key], full[key][:, i]) < STEP_TOL[torch.float32], (i, key)


def test_recurrent_rollout_predicts_each_frame_from_every_frame_before_it(shared_store, layout):
    """Frame t0+h of a recurrent rollout is the card forward over the real context and the h frames
    the rollout predicted before it, made into a frame as the rollout makes them."""
    model = small_model(layout)
    floats, ints = game(shared_store)
    K, H, t0 = layout.context_len, 20, 4321
    result = rollout(model, layout, floats, ints, [t0], H, "cpu", stepping="recurrent")
    stepper = FrameStepper(layout, "cpu")
    seq_float = np.concatenate([floats[t0 - K : t0], result.pred_floats[0]])  # (K+H, F)
    seq_int = np.concatenate([ints[t0 - K : t0], result.pred_ints[0]]).astype(np.int64)
    for h in (0, 1, 7, H - 1):
        context_float, context_int = torch.from_numpy(seq_float[None, : K + h]), torch.from_numpy(seq_int[None, : K + h])
        replay = torch.from_numpy(floats[t0 + h][None])
        with torch.no_grad():
            pred = model(context_float, context_int, stepper.next_ctrl(context_float[:, -1], replay))
        frame_float, frame_int = stepper.frame(context_float[:, -1], context_int[:, -1], pred, replay)
        np.testing.assert_allclose(result.pred_floats[0, h], frame_float[0].numpy(), rtol=0, atol=1e-4)
        assert np.array_equal(result.pred_ints[0, h], frame_int[0].numpy())
    window = rollout(model, layout, floats, ints, [t0], 1, "cpu", stepping="window")
    np.testing.assert_allclose(window.pred_floats[0, 0], result.pred_floats[0, 0], rtol=0, atol=1e-5)


def test_the_mlp_has_no_sequence_objective_and_no_recurrent_rollout(shared_store, layout):
    with pytest.raises(ConfigError, match="sequence"):
        build_objective(dataclasses.replace(config(), model=dataclasses.replace(config().model, arch="mlp")), layout, "cpu")
    mlp = build_model(dataclasses.replace(config().model, arch="mlp"), layout)
    floats, ints = game(shared_store)
    with pytest.raises(ConfigError, match="window"):
        rollout(mlp, layout, floats, ints, [100], 3, "cpu", stepping="recurrent")
    assert rollout(mlp, layout, floats, ints, [100], 3, "cpu").pred_floats.shape == (1, 3, layout.n_float)


@pytest.mark.parametrize("mode", ["model", "rollout"])
def test_lookahead_and_model_sampling_need_their_objective(layout, mode):
    with pytest.raises(ConfigError, match="lookahead"):
        SequenceParts(dataclasses.replace(layout, lookahead=1), "cpu")
    card = dataclasses.replace(config(), data=dataclasses.replace(config().data, objective="last"))
    card.train.scheduled_sampling.mode = mode
    with pytest.raises(ConfigError, match="sequence"):
        build_objective(card, layout, "cpu")


# ---------------------------------------------------------------- losses and metrics over target positions


def test_losses_and_metrics_count_the_target_positions_only(shared_store, layout):
    model = small_model(layout)
    floats, ints = game(shared_store)
    mask = np.zeros((2, L), dtype=bool)
    mask[0, 5:] = True
    mask[1, 40:] = True
    parts = SequenceParts(layout, "cpu")(windows(floats, ints, [2000, 8000], mask))
    with torch.no_grad():
        pred, rows = position_rows(model(parts["float_in"], parts["int_in"], parts["next_ctrl"]), parts)
    chosen = torch.from_numpy(mask.ravel())
    kept_pred = {key: value[chosen] for key, value in pred.items()}
    kept_rows = {key: value[chosen] for key, value in rows.items() if key != "weight"}
    weighted, plain = compute_losses(pred, rows, layout, LossConfig()), compute_losses(kept_pred, kept_rows, layout, LossConfig())
    for term in (*LOSS_TERMS, "total"):
        assert weighted[term].item() == pytest.approx(plain[term].item(), rel=1e-5), term
    both, only = MetricAccumulator(layout, "cpu"), MetricAccumulator(layout, "cpu")
    both.update(pred, rows, weighted)
    only.update(kept_pred, kept_rows, plain)
    expected = only.compute()
    for key, value in both.compute().items():
        assert value == pytest.approx(expected[key], rel=1e-5, nan_ok=True), key


# ---------------------------------------------------------------- scheduled sampling with the model's own frames


def test_own_frames_replace_the_chosen_inputs_and_targets_follow(shared_store, layout):
    model = small_model(layout)
    floats, ints = game(shared_store)
    builder = SequenceParts(layout, "cpu")
    parts = builder(windows(floats, ints, [1500, 7500]))
    own_float, own_int = own_frames(model, parts, FrameStepper(layout, "cpu"))
    assert own_float.shape == parts["float_in"].shape and own_int.shape == parts["int_in"].shape
    # Frame s+1 as predicted from frame s alone: the card forward on a one-frame context.
    with torch.no_grad():
        first = model(parts["float_in"][:, :1], parts["int_in"][:, :1], parts["next_ctrl"][:, 0])
    np.testing.assert_allclose(own_float[:, 0, list(layout.ctrl_columns)], parts["float_next"][:, 0, list(layout.ctrl_columns)])
    assert torch.equal(own_int[:, 0, list(layout.action_columns)], first["action"].argmax(-1))
    chosen = torch.zeros(2, L, dtype=torch.bool)
    chosen[0, [0, 3, 17]] = True
    chosen[1, L - 1] = True
    mixed = substitute(parts, builder, own_float, own_int, chosen)
    for b, j in [(0, 3), (0, 17), (1, L - 1)]:
        assert torch.equal(mixed["float_in"][b, j], own_float[b, j - 1]) and torch.equal(mixed["int_in"][b, j], own_int[b, j - 1])
    untouched = torch.ones(2, L, dtype=torch.bool)
    untouched[0, [3, 17]] = untouched[1, L - 1] = False
    assert torch.equal(mixed["float_in"][untouched], parts["float_in"][untouched])
    assert torch.equal(mixed["float_tgt"][untouched], parts["float_tgt"][untouched])
    # The delta targets now lead from the frame the model reads to the true next frame.
    deltas = list(layout.delta_target_positions)
    expected = parts["float_next"][0, 3][list(layout.delta_target_columns)] - own_float[0, 2][list(layout.delta_target_columns)]
    assert torch.equal(mixed["float_tgt"][0, 3, deltas], expected)
    assert torch.equal(mixed["next_ctrl"], parts["next_ctrl"]) and torch.equal(mixed["int_tgt"], parts["int_tgt"])


def test_model_sampling_changes_the_inputs_from_the_second_epoch(shared_store, layout):
    sampled = config()
    sampled.train.scheduled_sampling.mode, sampled.train.scheduled_sampling.rate = "model", 0.5
    objective = build_objective(sampled, layout, "cpu")
    assert isinstance(objective, SequenceObjective)
    model = small_model(layout)
    floats, ints = game(shared_store)
    batch = windows(floats, ints, [1500, 7500])
    clean, _ = objective.outputs(model, batch, 0, torch.Generator().manual_seed(0))
    again, _ = objective.outputs(model, batch, 0, torch.Generator().manual_seed(0))
    sampled_pred, _ = objective.outputs(model, batch, 3, torch.Generator().manual_seed(0))
    assert torch.equal(clean["float"], again["float"])
    assert not torch.equal(clean["float"], sampled_pred["float"])


def test_branches_roll_out_a_fraction_of_windows_from_one_position_on():
    size = 4000
    rolled = branches(size, L, 0.25, torch.Generator().manual_seed(3), "cpu")  # (size, L)
    assert rolled.shape == (size, L) and not rolled[:, 0].any()
    some = rolled.any(1)
    assert abs(some.float().mean().item() - 0.25) < 0.03
    # Once a window branches, every later input is its own: positions branch .. L-1.
    assert torch.equal(rolled[:, 1:] >= rolled[:, :-1], torch.ones(size, L - 1, dtype=torch.bool))
    first = rolled[some].float().argmax(1)
    assert first.min() == 1 and first.max() == L - 1
    assert torch.equal(rolled, branches(size, L, 0.25, torch.Generator().manual_seed(3), "cpu"))
    assert not branches(size, L, 0.0, torch.Generator().manual_seed(3), "cpu").any()


@pytest.mark.parametrize("motion", MOTIONS)
def test_a_window_rolled_out_from_its_branch_is_the_evaluation_rollout(shared_store, layout, motion):
    """own_rollouts from branch position b of windows starting at s predicts frames s+b .. s+L as the
    evaluation's recurrent rollout from t0 = s+b after b real frames; frames before the branch
    stay the real ones."""
    model = small_model(layout, motion=motion)
    floats, ints = game(shared_store)
    starts, b = np.array([1500, 4200, 7500]), layout.context_len
    parts = SequenceParts(layout, "cpu")(windows(floats, ints, starts))
    rolled = torch.arange(L).expand(len(starts), L) >= b  # (3, L)
    own_float, own_int = own_rollouts(model, parts, FrameStepper(layout, "cpu"), rolled)
    evaluation = rollout(model, layout, floats, ints, starts + b, L - b + 1, "cpu", stepping="recurrent")
    # fp32: equal within rounding, the ints exactly.
    np.testing.assert_allclose(own_float[:, b - 1 :].numpy(), evaluation.pred_floats, rtol=0, atol=1e-4)
    assert torch.equal(own_int[:, b - 1 :], torch.from_numpy(evaluation.pred_ints).long())
    assert torch.equal(own_float[:, : b - 1], parts["float_next"][:, : b - 1])
    mixed = substitute(parts, SequenceParts(layout, "cpu"), own_float, own_int, rolled)
    assert torch.equal(mixed["float_in"][:, b:], own_float[:, b - 1 : -1]) and torch.equal(
        mixed["float_in"][:, :b], parts["float_in"][:, :b]
    )


def test_rollout_sampling_feeds_the_model_its_rollouts_from_the_second_epoch(shared_store, layout):
    sampled = config()
    sampled.train.scheduled_sampling.mode, sampled.train.scheduled_sampling.rate = "rollout", 1.0
    sampled.train.scheduled_sampling.targets = "noisy"
    objective = build_objective(sampled, layout, "cpu")
    model = small_model(layout)
    floats, ints = game(shared_store)
    batch = windows(floats, ints, [1500, 7500])
    clean_pred, clean_rows = objective.outputs(model, batch, 0, torch.Generator().manual_seed(0))
    pred, rows = objective.outputs(model, batch, 3, torch.Generator().manual_seed(0))
    rolled = branches(2, L, 1.0, torch.Generator().manual_seed(0), "cpu").flatten()  # (2L,) the same draw
    assert rolled.any() and not torch.equal(clean_pred["float"][rolled], pred["float"][rolled])
    # Before the branch the window is real: the same predictions and targets as without sampling.
    assert torch.equal(clean_pred["float"][~rolled], pred["float"][~rolled])
    assert torch.equal(clean_rows["float_tgt"][~rolled], rows["float_tgt"][~rolled])
    # After it, the delta targets lead from the model's own frames back to the true ones.
    assert not torch.equal(clean_rows["float_tgt"][rolled], rows["float_tgt"][rolled])
    assert torch.equal(clean_rows["int_tgt"], rows["int_tgt"])


# ---------------------------------------------------------------- planning


@pytest.mark.parametrize("motion", MOTIONS)
def test_an_unrolled_window_is_the_rollout_from_its_branch(shared_store, layout, motion):
    """The unroll's own frames are own_rollouts' from the same branch (the evaluation's rollout, tested
    above), and its rows are that rollout's: delta targets from the own frame read, the true ints."""
    model, builder, stepper = small_model(layout, motion=motion), SequenceParts(layout, "cpu"), FrameStepper(layout, "cpu")
    floats, ints = game(shared_store)
    parts = builder(windows(floats, ints, [1500, 4200, 7500]))
    branch, frames = 20, 12
    preds, own_float, own_int = unrolled(model, parts, stepper, branch, frames)
    with torch.no_grad():
        rolled_float, rolled_int = own_rollouts(model, parts, stepper, torch.arange(L).expand(3, L) >= branch)  # (3, L, ...)
    np.testing.assert_allclose(own_float.detach().numpy(), rolled_float[:, branch - 1 : branch + frames - 1].numpy(), rtol=0, atol=1e-5)
    assert torch.equal(own_int, rolled_int[:, branch - 1 : branch + frames - 1])

    config = UnrollConfig(frames=frames, weight=0.5)
    generator = torch.Generator().manual_seed(3)
    pred_rows, rows = Unroll(config, layout, builder, stepper, "cpu").rows(model, parts, generator)
    drawn = int(torch.randint(1, L - frames + 1, (1,), generator=torch.Generator().manual_seed(3)))
    _, drawn_float, _ = unrolled(model, parts, stepper, drawn, frames)
    true_next = parts["float_next"][:, drawn : drawn + frames]
    assert torch.equal(rows["float_tgt"], builder.float_targets(drawn_float, true_next).flatten(0, 1))
    assert torch.equal(rows["int_tgt"], parts["int_tgt"][:, drawn : drawn + frames].flatten(0, 1))
    assert pred_rows["float"].shape == (3 * frames, layout.float_target_dim) and rows["weight"].tolist() == [0.5] * (3 * frames)


def test_the_unrolled_loss_reaches_every_step_before_it(shared_store, layout):
    """A rolled-out frame's position depends, through the gradient, on the prediction of every step
    before it (a step's error is carried on), and on none after it."""
    model = small_model(layout, motion="prior")
    floats, ints = game(shared_store)
    parts = SequenceParts(layout, "cpu")(windows(floats, ints, [1500, 7500]))
    preds, own_float, _ = unrolled(model, parts, FrameStepper(layout, "cpu"), 10, 6)
    x = layout.schema.float_index("p0.x")
    grads = torch.autograd.grad(own_float[:, 3, x].sum(), [p["float"] for p in preds], allow_unused=True, materialize_grads=True)
    position = layout.float_target_columns.index(x)
    assert all(g[:, position].abs().min() > 0 for g in grads[:3])  # own frame 3 is made from preds 0 .. 2
    assert all(g.abs().max() == 0 for g in grads[3:])


@pytest.mark.parametrize("through", [True, False])
def test_a_local_unroll_trains_each_age_for_its_own_frame_alone(shared_store, layout, through):
    """train.unroll.gradient "local" (through False): an own frame is read back without its gradient, so
    the prediction at age a reaches the age tables' row a alone; "through" reaches every earlier row
    too. Both roll out the same frames."""
    model = small_model(layout, motion="age")
    torch.nn.init.constant_(model.hold.linear.bias, -100.0)  # nobody held: every age's steps reach the frames
    parts = SequenceParts(layout, "cpu")(windows(*game(shared_store), [1500, 7500]))
    stepper = FrameStepper(layout, "cpu")
    preds, own_float, _ = unrolled(model, parts, stepper, 10, 6, through=through)
    _, reference, _ = unrolled(model, parts, stepper, 10, 6)
    assert torch.equal(own_float.detach(), reference.detach()) and own_float.requires_grad == through
    tables = [model.age.table.weight, model.age.motion.weight]
    for k, pred in enumerate(preds):  # preds[k] read k + 1 own frames
        age = min(k + 1, model.age.oldest)
        for grad in torch.autograd.grad(pred["float"].sum(), tables, retain_graph=True):
            reached = grad.abs().sum(-1).nonzero().flatten().tolist()
            assert reached == (list(range(1, age + 1)) if through else [age])


def test_a_position_unroll_rolls_out_x_and_y_alone(shared_store, layout):
    """fields 'position': the own frames are the true ones but for both players' x and y, which are
    the rollout's (its first frame as the whole unroll's; later ones drift apart from it)."""
    model, stepper = small_model(layout, motion="prior"), FrameStepper(layout, "cpu")
    parts = SequenceParts(layout, "cpu")(windows(*game(shared_store), [1500, 4200, 7500]))
    positions = torch.tensor(layout.moving_columns)  # both players' x and y
    _, whole, _ = unrolled(model, parts, stepper, 20, 6)
    _, own_float, own_int = unrolled(model, parts, stepper, 20, 6, positions)
    true_float, true_int = parts["float_in"][:, 20:26], parts["int_in"][:, 20:26]
    others = torch.ones(true_float.shape[-1], dtype=torch.bool)
    others[positions] = False
    assert torch.equal(own_float[..., others], true_float[..., others]) and torch.equal(own_int, true_int)
    assert torch.equal(own_float[:, 0, positions], whole[:, 0, positions])
    assert not torch.equal(own_float[:, :, positions], true_float[:, :, positions])


def test_a_motion_unroll_rolls_out_positions_and_speeds_alone(shared_store, layout):
    """fields 'motion': x, y and the velocity block's speeds are the rollout's, every other column true."""
    speeds = [i for i, c in enumerate(layout.schema.float_columns) if c.group == "velocity"]
    motion = rolled_columns("motion", layout)
    assert rolled_columns("all", layout) is None and rolled_columns("position", layout) == layout.moving_columns
    assert sorted(motion) == sorted([*layout.moving_columns, *speeds]) and len(motion) == 4 + 10  # 5 speeds per player at v3
    model, stepper = small_model(layout, motion="prior"), FrameStepper(layout, "cpu")
    parts = SequenceParts(layout, "cpu")(windows(*game(shared_store), [1500, 4200, 7500]))
    _, own_float, own_int = unrolled(model, parts, stepper, 20, 6, torch.tensor(motion))
    true_float, true_int = parts["float_in"][:, 20:26], parts["int_in"][:, 20:26]
    others = torch.ones(true_float.shape[-1], dtype=torch.bool)
    others[list(motion)] = False
    assert torch.equal(own_float[..., others], true_float[..., others]) and torch.equal(own_int, true_int)
    assert not torch.equal(own_float[:, 1:, speeds], true_float[:, 1:, speeds])


def test_unrolled_training_adds_its_rows_to_the_windows(shared_store, layout):
    unrolled_config = config()
    unrolled_config.train.unroll = UnrollConfig(frames=8, weight=0.25)
    objective, plain = build_objective(unrolled_config, layout, "cpu"), build_objective(config(), layout, "cpu")
    model = small_model(layout)
    batch = windows(*game(shared_store), [1500, 7500])
    first_epoch = objective.outputs(model, batch, 0, torch.Generator().manual_seed(0))  # start_epoch 1: not yet
    pred, rows = objective.outputs(model, batch, 1, torch.Generator().manual_seed(0))
    plain_pred, plain_rows = plain.outputs(model, batch, 1, torch.Generator().manual_seed(0))
    assert len(first_epoch[1]["weight"]) == 2 * L
    assert len(rows["weight"]) == 2 * (L + 8) and rows["weight"][2 * L :].tolist() == [0.25] * 16
    assert torch.equal(pred["float"][: 2 * L], plain_pred["float"]) and torch.equal(rows["float_tgt"][: 2 * L], plain_rows["float_tgt"])
    losses = compute_losses(pred, rows, layout, LossConfig())
    losses["total"].backward()
    assert torch.isfinite(losses["total"]) and all(p.grad is not None for p in model.heads.parameters())
    evaluated, evaluated_rows = objective.outputs(model, batch)  # evaluation: the windows alone
    assert len(evaluated_rows["weight"]) == 2 * L


@pytest.mark.parametrize(
    "data, unroll, message",
    [
        ({"objective": "last"}, {"frames": 4}, "needs data.objective 'sequence'"),
        ({}, {"frames": L}, "must be under data.seq_len"),
        ({}, {"frames": -1}, ">= 0"),
        ({}, {"frames": 4, "start_epoch": -1}, ">= 0"),
        ({}, {"frames": 4, "fields": "speed"}, "fields must be one of all, position, motion"),
        ({}, {"frames": 4, "trains": "heads"}, "trains must be one of all, age"),
        ({}, {"frames": 4, "gradient": "sideways"}, "gradient must be one of through, local"),
        ({}, {"frames": 4, "trains": "age"}, "needs model.rollout_age > 0"),
        ({}, {"frames": 4, "share": 0.0}, r"share must be in \(0, 1\]"),
        ({}, {"frames": 4, "share": 1.5}, r"share must be in \(0, 1\]"),
        ({}, {"frames": 4, "age_lr": 0.0}, "age_lr > 0"),
    ],
)
def test_an_unroll_that_cannot_run_is_refused(layout, data, unroll, message):
    refused = config(**data)
    refused.train.unroll = UnrollConfig(**unroll)
    with pytest.raises(ConfigError, match=message):
        build_objective(refused, layout, "cpu")


def test_plan_counts_targets_and_windows(shared_store):
    seq = load_config(
        ROOT / "experiments" / "mamba2-v3-seq.yaml",
        ["data.require_fields=none", "data.end_methods=[]", "data.num_workers=0", "data.warmup=16"],
    )
    source = ExampleSource.for_experiment(shared_store, seq)
    plan = plan_run(seq, shared_store, step_ms=100.0)
    L, W = seq.data.seq_len, seq.data.warmup
    assert plan["train_targets"] == source.target_count("train") and plan["val_targets"] == source.target_count("val")
    assert plan["train_examples"] == source.example_count("train")  # windows
    assert plan["objective"] == "sequence" and plan["targets_per_batch"] == seq.data.batch_size * (L - W)
    assert plan["batches_per_epoch"] == plan["batches_per_epoch_total"] == -(-plan["train_examples"] // seq.data.batch_size)
    assert plan["epoch_hours"] == pytest.approx(plan["batches_per_epoch"] * 0.1 / 3600)
    text = plan_markdown(plan, seq)
    assert f"windows, {plan['train_targets']:,} targets |" in text and f"windows, up to {plan['targets_per_batch']:,} targets" in text
    assert "Unrolled training" not in text
    seq.train.unroll = UnrollConfig(frames=16, weight=0.5)
    assert "| Unrolled training | 16 frames per window, weight 0.5 |" in plan_markdown(plan, seq)


@pytest.mark.parametrize("targets", ["clean", "noisy"])
def test_sequence_noise_perturbs_input_frames_and_its_targets_follow_when_noisy(shared_store, layout, targets):
    sampling = ScheduledSamplingConfig(rate=0.5, noise=0.1, anneal_epochs=1, targets=targets)
    noise = ContextNoise(layout, sampling, "cpu")
    floats, ints = game(shared_store)
    batch = windows(floats, ints, [1500, 7500])
    parts = SequenceParts(layout, "cpu")(batch)
    float_seq = batch["float_seq"].clone()
    assert noise.apply_frames(parts, 0, torch.Generator().manual_seed(0)) is parts  # nothing in the first epoch
    noisy = noise.apply_frames(parts, 1, torch.Generator().manual_seed(0))
    assert torch.equal(batch["float_seq"], float_seq)  # the batch's frames are not touched
    moved = (noisy["float_in"] != parts["float_in"]).any(-1)  # (B, L): the perturbed input frames
    assert 0.3 < moved.float().mean() < 0.7
    columns = list(noise.columns.tolist())
    others = [c for c in range(layout.n_float) if c not in columns]
    assert torch.equal(noisy["float_in"][..., others], parts["float_in"][..., others])
    if targets == "clean":
        assert torch.equal(noisy["float_tgt"], parts["float_tgt"])
    else:  # each target's delta leads from the frame the model reads
        assert torch.allclose(
            noisy["float_tgt"], SequenceParts(layout, "cpu").float_targets(noisy["float_in"], parts["float_next"]), atol=1e-6
        )
        assert not torch.equal(noisy["float_tgt"][moved], parts["float_tgt"][moved])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", ["torch", "cuda"])
def test_recurrent_step_equals_the_full_forward_on_cuda(backend):
    """The model-level step on a GPU, with either Mamba2 backend (mamba-ssm's kernels for "cuda")."""
    from melee_encode.config import EncodingConfig
    from melee_model.mamba2 import mamba_ssm_available

    if backend == "cuda" and not mamba_ssm_available():
        pytest.skip("needs mamba-ssm")
    layout = FrameLayout(EncodingConfig().schema())
    torch.manual_seed(0)
    model_config = dataclasses.replace(config().model, backend=backend, d_model=64, headdim=32, motion_prior="constant_velocity")
    model = build_model(model_config, layout).cuda().eval()
    g = torch.Generator("cuda").manual_seed(0)
    vocabs = torch.tensor([c.vocab for c in layout.schema.int_columns], device="cuda")
    float_seq = torch.randn(3, 40, layout.n_float, device="cuda", generator=g)
    int_seq = (torch.rand(3, 40, layout.n_int, device="cuda", generator=g) * vocabs).long()
    ctrl = torch.rand(3, 40, layout.ctrl_dim, device="cuda", generator=g)
    with torch.no_grad():
        full = model(float_seq, int_seq, ctrl)
        x, state = model.prefill(float_seq[:, :10], int_seq[:, :10])
        stepped = [model.predict(x, ctrl[:, 9], state.step)["float"]]
        for i in range(10, 40):
            x, state = model.step(float_seq[:, i], int_seq[:, i], state)
            stepped.append(model.predict(x, ctrl[:, i], state.step)["float"])
    tolerance = CUDA_TOL[torch.float32] if backend == "cuda" else STEP_TOL[torch.float32]
    assert rel_err(torch.stack(stepped, 1), full["float"][:, 9:]) < tolerance


# ---------------------------------------------------------------- the hold gate


def test_hold_targets_mark_the_players_whose_x_and_y_do_not_change(shared_store, layout):
    floats, ints = game(shared_store)
    starts = np.array([300, 4200, 9100])
    parts = SequenceParts(layout, "cpu")(windows(floats, ints, starts))
    frames = starts[:, None] + np.arange(L)  # (3, L): frame s+j of each position
    columns = [[layout.schema.float_index(f"p{p}.{axis}") for axis in ("x", "y")] for p in (0, 1)]
    still = np.stack([(floats[frames + 1][..., c] == floats[frames][..., c]).all(-1) for c in columns], axis=-1)  # (3, L, 2)
    assert np.array_equal(parts["hold"].numpy(), still.astype(np.float32))
    assert 0 < still.mean() < 1  # both kinds in these windows


def test_the_hold_gate_stops_the_players_it_holds(shared_store, layout):
    """A logit over 0 sets that player's x and y outputs to no motion; the other player's are the
    model's without the gate (same weights), and a recurrent rollout keeps the held player where the
    real frames left it."""
    gated = small_model(layout, motion="hold")
    torch.nn.init.zeros_(gated.hold.linear.weight)
    with torch.no_grad():
        gated.hold.linear.bias.copy_(torch.tensor([5.0, -5.0]))  # hold p0, never p1
    free = small_model(layout, motion="scaled")
    free.load_state_dict({k: v for k, v in gated.state_dict().items() if not k.startswith("hold.")})
    floats, ints = game(shared_store)
    parts = SequenceParts(layout, "cpu")(windows(floats, ints, [700, 5000]))
    with torch.no_grad():
        out, plain = (m(parts["float_in"], parts["int_in"], parts["next_ctrl"]) for m in (gated, free))
    p0, p1 = list(layout.moving_target_positions[:2]), list(layout.moving_target_positions[2:])
    assert torch.equal(out["float"][..., p0], torch.zeros_like(out["float"][..., p0]))
    assert torch.equal(out["float"][..., p1], plain["float"][..., p1]) and plain["float"][..., p0].abs().sum() > 0
    assert out["hold"].shape == (2, L, 2)
    start = np.array([5000])
    rolled = rollout(gated, layout, floats, ints, start, 60, "cpu", stepping="recurrent")
    x, y = (layout.schema.float_index(f"p0.{axis}") for axis in ("x", "y"))
    last = floats[start[0] - 1]
    assert (rolled.pred_floats[0, :, x] == last[x]).all() and (rolled.pred_floats[0, :, y] == last[y]).all()


def test_the_hold_loss_reads_the_true_frames_also_in_unrolled_rows(shared_store, layout):
    """The unroll's rows carry whether the true players stay put, not whether the model's own frame
    already sits on the next true one; the loss adds loss.hold times the gate's cross-entropy."""
    unrolled_config = config()
    unrolled_config.model.hold_gate = True
    unrolled_config.train.unroll = UnrollConfig(frames=8, weight=0.5, start_epoch=0)
    objective = build_objective(unrolled_config, layout, "cpu")
    model = small_model(layout, motion="hold")
    batch = windows(*game(shared_store), [1500, 7500])
    pred, rows = objective.outputs(model, batch, 0, torch.Generator().manual_seed(0))
    parts = SequenceParts(layout, "cpu")(batch)
    branch = int(torch.randint(1, L - 8 + 1, (1,), generator=torch.Generator().manual_seed(0)))
    assert torch.equal(rows["hold"][: 2 * L], parts["hold"].flatten(0, 1))
    assert torch.equal(rows["hold"][2 * L :], parts["hold"][:, branch : branch + 8].flatten(0, 1))
    losses = compute_losses(pred, rows, layout, LossConfig(hold=3.0))
    per_row = torch.nn.functional.binary_cross_entropy_with_logits(pred["hold"], rows["hold"], reduction="none").mean(-1)  # (N,)
    expected = (per_row * rows["weight"]).sum() / rows["weight"].sum()
    assert torch.allclose(losses["hold"], expected)
    without = {key: value for key, value in pred.items() if key != "hold"}
    assert torch.allclose(losses["total"], compute_losses(without, rows, layout, LossConfig())["total"] + 3.0 * expected)


def test_the_gates_loss_and_accuracy_are_metrics_of_gated_models_only(shared_store, layout):
    batch = windows(*game(shared_store), [1500, 7500], np.arange(L) >= np.array([[5], [30]]))  # some positions context only
    objective = build_objective(config(), layout, "cpu")
    for motion in ("hold", "scaled"):
        with torch.no_grad():
            pred, rows = objective.outputs(small_model(layout, motion=motion), batch)
        losses = compute_losses(pred, rows, layout, LossConfig())
        accumulator = MetricAccumulator(layout, "cpu")
        accumulator.update(pred, rows, losses)
        metrics = accumulator.compute()
        if motion == "scaled":
            assert "loss/hold" not in metrics and "metric/hold_acc" not in metrics
            continue
        agree = ((pred["hold"] > 0) == (rows["hold"] > 0.5)).double().mean(-1)  # (N,)
        weight = rows["weight"].double()
        assert metrics["metric/hold_acc"] == pytest.approx(((agree * weight).sum() / weight.sum()).item(), rel=1e-9)
        assert metrics["loss/hold"] == pytest.approx(losses["hold"].item(), rel=1e-6)


def test_the_rollout_age_changes_the_predictions_from_own_frames_only(shared_store, layout):
    """model.rollout_age: a window rolled out from its branch predicts as the same weights without the
    table up to the branch and differently after it; an untrained table changes nothing, counts
    past the oldest share its row, and a training step leaves real frames' row at zero."""
    aged = small_model(layout, motion="age")
    plain = build_model(dataclasses.replace(config().model, **MOTIONS["hold"]), layout).eval()
    plain.load_state_dict({key: value for key, value in aged.state_dict().items() if not key.startswith("age.")})
    stepper, builder = FrameStepper(layout, "cpu"), SequenceParts(layout, "cpu")
    parts = builder(windows(*game(shared_store), [1500, 7500]))
    branch = 20
    rolled = torch.arange(L).expand(2, L) >= branch  # (2, L)
    with torch.no_grad():
        aged_out, plain_out = (roll_out(model, parts, stepper, rolled) for model in (aged, plain))
    for k, (a, p) in enumerate(zip(aged_out.preds, plain_out.preds)):  # preds[k]: input position branch - 1 + k, age k
        assert torch.equal(a["float"], p["float"]) == (k == 0), k
    h = torch.randn(4, aged.config.d_model)
    assert torch.equal(aged.age.inputs(h, 7), aged.age.inputs(h, aged.age.oldest))
    assert not torch.equal(aged.age.inputs(h, 2), aged.age.inputs(h, 3))

    torch.nn.init.zeros_(aged.age.table.weight)
    torch.nn.init.zeros_(aged.age.motion.weight)
    with torch.no_grad():
        untrained = roll_out(aged, parts, stepper, rolled)
    assert all(torch.equal(a["float"], p["float"]) for a, p in zip(untrained.preds, plain_out.preds))
    torch.nn.init.constant_(aged.hold.linear.bias, -100.0)  # nobody held: every age's steps reach the loss
    unrolled_config = config()
    unrolled_config.model = dataclasses.replace(unrolled_config.model, **MOTIONS["age"])
    unrolled_config.train.unroll = UnrollConfig(frames=8, start_epoch=0)
    pred, rows = build_objective(unrolled_config, layout, "cpu").outputs(
        aged.train(), windows(*game(shared_store), [1500, 7500]), 0, torch.Generator().manual_seed(0)
    )
    compute_losses(pred, rows, layout, LossConfig())["total"].backward()
    for table in (aged.age.table, aged.age.motion):
        grad = table.weight.grad  # (oldest + 1, D or 2)
        assert not grad[0].any() and grad[1:].abs().sum(-1).gt(0).all()


def test_the_rollout_age_scales_each_player_s_x_and_y_steps_by_its_factors(layout):
    """RolloutAge.moves: the x and y step outputs of both players times 1 + the age's x and y factors
    (ages past the oldest: the oldest's), every other output as it was; age 0 changes nothing."""
    age = small_model(layout, motion="age").age
    pred = torch.randn(3, layout.float_target_dim)  # (3, T)
    ages = torch.tensor([0, 2, 9])  # 9: past the oldest, 3
    moved = age.moves(pred, ages)
    x_y = list(layout.moving_target_positions)  # p0.x, p0.y, p1.x, p1.y
    factors = 1 + age.motion.weight.detach()[[0, 2, 3]]  # (3, 2)
    assert torch.equal(moved[..., x_y], pred[..., x_y] * factors.repeat(1, 2))
    others = [j for j in range(layout.float_target_dim) if j not in x_y]
    assert torch.equal(moved[..., others], pred[..., others]) and torch.equal(moved[0], pred[0])
    assert torch.equal(age.moves(pred, 3), age.moves(pred, 7))


def test_the_rollout_age_tables_start_after_rollout_age_after(layout):
    """model.rollout_age_after a: counts 0 .. a answer as real frames do, count c as count c - a would
    without it (the same rows, the same clamp at the oldest); without the tables it is refused."""
    late, plain = RolloutAge(layout, 3, 8, after=2), RolloutAge(layout, 3, 8)
    with torch.no_grad():
        plain.table.weight[1:].normal_()
        plain.motion.weight[1:].uniform_(-0.5, 0.5)
    late.load_state_dict(plain.state_dict())
    pred, h = torch.randn(9, layout.float_target_dim), torch.randn(9, 8)  # (9, T), (9, D)
    counts = torch.arange(9)
    assert torch.equal(late.moves(pred, counts), plain.moves(pred, (counts - 2).clamp(min=0)))
    assert torch.equal(late.inputs(h, counts), plain.inputs(h, (counts - 2).clamp(min=0)))
    assert torch.equal(late.moves(pred, counts)[:3], pred[:3]) and not torch.equal(late.moves(pred, 3), pred)
    with pytest.raises(ConfigError, match="rollout_age_after >= 0"):
        RolloutAge(layout, 3, 8, after=-1)
    with pytest.raises(ConfigError, match="needs rollout_age"):  # an offset for tables that are off: refused, not ignored
        build_model(dataclasses.replace(config().model, rollout_age_after=8), layout)


def test_an_unroll_that_trains_the_age_alone_leaves_every_other_weight_to_the_real_frames(shared_store, layout):
    """train.unroll.trains 'age': the unrolled rows' gradient reaches the age table through every
    step, and no other weight; those weights get exactly the teacher-forced rows' gradient."""
    aged = config()
    aged.model = dataclasses.replace(aged.model, **MOTIONS["age"])
    aged.train.unroll = UnrollConfig(frames=8, start_epoch=0, trains="age")
    batch = windows(*game(shared_store), [1500, 7500])
    model = small_model(layout, motion="age").train()
    torch.nn.init.constant_(model.hold.linear.bias, -100.0)  # nobody held: every age's steps reach the loss
    grads = {}
    for name, epoch in (("unrolled", 0), ("teacher-forced", None)):
        model.zero_grad()
        torch.manual_seed(0)  # the same dropout draws in both passes
        pred, rows = build_objective(aged, layout, "cpu").outputs(model, batch, epoch, torch.Generator().manual_seed(0))
        compute_losses(pred, rows, layout, LossConfig())["total"].backward()
        grads[name] = {key: p.grad.clone() for key, p in model.named_parameters()}
    assert all(p.requires_grad for p in model.parameters())
    for table in ("age.table.weight", "age.motion.weight"):
        assert grads["unrolled"][table][1:].abs().sum(-1).gt(0).all()
        assert not grads["teacher-forced"][table].any()
    # The loss is a weighted mean over every row, so the unrolled rows only scale the teacher-forced
    # gradient, by one factor for every weight (fp32 rounding apart).
    scale = None
    for key, grad in grads["teacher-forced"].items():
        if key.startswith("age.") or not grad.any():
            continue
        ratio = grads["unrolled"][key].norm() / grad.norm()
        scale = ratio if scale is None else scale
        assert (grads["unrolled"][key] - grad * scale).abs().max() <= 1e-5 * grad.abs().max(), key


def test_an_unroll_share_unrolls_that_fraction_of_the_batches(shared_store, layout):
    """train.unroll.share: each batch unrolls with that probability, drawn from the batch's generator
    (so a resumed run draws the same); at 1 every batch unrolls and nothing is drawn."""
    unroll = config()
    unroll.train.unroll = UnrollConfig(frames=4, start_epoch=0, share=0.25)
    objective = build_objective(unroll, layout, "cpu")
    draws = [objective.unroll.chosen(torch.Generator().manual_seed(seed)) for seed in range(2000)]
    assert 0.22 < np.mean(draws) < 0.28
    model, batch = small_model(layout), windows(*game(shared_store), [1500, 7500])
    for seed in (draws.index(True), draws.index(False)):
        with torch.no_grad():
            _, rows = objective.outputs(model, dict(batch), 0, torch.Generator().manual_seed(seed))
        assert len(rows["weight"]) == 2 * L + (2 * 4 if draws[seed] else 0)
    generator = torch.Generator().manual_seed(0)
    every = build_objective(
        dataclasses.replace(unroll, train=dataclasses.replace(unroll.train, unroll=UnrollConfig(frames=4))), layout, "cpu"
    )
    assert every.unroll.chosen(generator) and torch.equal(generator.get_state(), torch.Generator().manual_seed(0).get_state())
