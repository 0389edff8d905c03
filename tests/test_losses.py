"""Tests for melee_model.losses and melee_model.metrics on hand-made batches with answers worked out by hand."""

import dataclasses
import math

import pytest
import torch

from melee_encode.config import EncodingConfig
from melee_model.config import LossConfig
from melee_model.layout import TARGET_FIELDS, FrameLayout
from melee_model.losses import LOSS_TERMS, MIN_STD, compute_losses, float_scale, player_targets
from melee_model.metrics import ACTION_CATEGORIES, MetricAccumulator

V3 = FrameLayout(EncodingConfig().schema())
BLOCKS = V3.float_blocks
ACTION = TARGET_FIELDS.index("action")


def zero_batch(batch_size: int, context_len: int = 2) -> dict:
    """An all-zero batch with the pipeline's shapes and dtypes, to fill in by hand."""
    return {
        "float_ctx": torch.zeros(batch_size, context_len, V3.n_float),
        "int_ctx": torch.zeros(batch_size, context_len, V3.n_int, dtype=torch.long),
        "next_ctrl": torch.zeros(batch_size, V3.ctrl_dim),
        "float_tgt": torch.zeros(batch_size, V3.float_target_dim),
        "int_tgt": torch.zeros(batch_size, V3.int_target_dim, dtype=torch.long),
    }


def zero_pred(batch_size: int) -> dict:
    pred = {"float": torch.zeros(batch_size, V3.float_target_dim)}
    pred.update({f: torch.zeros(batch_size, 2, V3.vocab(f)) for f in TARGET_FIELDS})
    return pred


def random_example(batch_size: int, seed: int) -> tuple[dict, dict]:
    """Random predictions and targets, actions drawn from a few ids so that changes and hits both occur."""
    g = torch.Generator().manual_seed(seed)
    batch = zero_batch(batch_size)
    batch["float_tgt"] = torch.randn(batch_size, V3.float_target_dim, generator=g)
    batch["float_tgt"][:, BLOCKS["binary"]] = torch.randint(0, 2, (batch_size, 86), generator=g).float()
    for p, column in enumerate(V3.action_columns):
        batch["int_ctx"][:, -1, column] = torch.randint(13, 17, (batch_size,), generator=g)
        batch["int_tgt"][:, p * len(TARGET_FIELDS) + ACTION] = torch.randint(13, 17, (batch_size,), generator=g)
    pred = {"float": torch.randn(batch_size, V3.float_target_dim, generator=g)}
    pred.update({f: torch.randn(batch_size, 2, V3.vocab(f), generator=g) for f in TARGET_FIELDS})
    pred["action"][..., 13:17] += 3  # argmax lands on one of the drawn ids
    return pred, batch


# ---------------------------------------------------------------- losses


def hand_made_loss_example() -> tuple[dict, dict, dict]:
    """Two examples whose every loss term is known in closed form; returns (pred, batch, expected terms)."""
    pred, batch = zero_pred(2), zero_batch(2)
    batch["float_tgt"][:, BLOCKS["continuous"]] = 0.5  # every error 0.5 -> MSE 0.25
    batch["float_tgt"][:, BLOCKS["velocity"]] = 2.0  # -> 4
    batch["float_tgt"][:, BLOCKS["dynamics"]] = -1.0  # -> 1
    pred["float"][:, BLOCKS["binary"]] = 0.0  # logit 0 -> BCE log 2 whatever the target
    batch["float_tgt"][0, BLOCKS["binary"]] = 1.0
    expected = {"continuous": 0.25, "velocity": 4.0, "dynamics": 1.0, "binary": math.log(2)}
    for j, field in enumerate(TARGET_FIELDS):
        vocab = V3.vocab(field)
        batch["int_tgt"][:, j] = 1  # p0's target: class 1, with uniform logits -> CE log V
        batch["int_tgt"][:, len(TARGET_FIELDS) + j] = 0  # p1's target: class 0 ...
        pred[field][:, 1, 0] = math.log(vocab - 1)  # ... given probability 1/2 -> CE log 2
        expected[field] = (math.log(vocab) + math.log(2)) / 2
    return pred, batch, expected


def test_loss_terms_match_hand_computed_values():
    pred, batch, expected = hand_made_loss_example()
    losses = compute_losses(pred, batch, V3, LossConfig())
    assert set(losses) == {*LOSS_TERMS, "total"}
    for term, value in expected.items():
        assert losses[term].item() == pytest.approx(value, rel=1e-6), term


def test_total_uses_the_spec_weights():
    pred, batch, e = hand_made_loss_example()
    total = (
        1.0 * e["continuous"]
        + 0.5 * e["velocity"]
        + 0.5 * e["dynamics"]
        + 0.5 * e["binary"]
        + 2.0 * e["action"]
        + 0.5 * e["jumps_left"]
        + 0.3 * (e["l_cancel"] + e["hurtbox_state"] + e["ground"] + e["last_attack_landed"])
    )
    assert compute_losses(pred, batch, V3, LossConfig())["total"].item() == pytest.approx(total, rel=1e-6)


@pytest.mark.parametrize("term", LOSS_TERMS)
def test_changing_one_weight_changes_only_the_total(term):
    pred, batch, _ = hand_made_loss_example()
    base = compute_losses(pred, batch, V3, LossConfig())
    weights = LossConfig()
    heavier = dataclasses.replace(weights, **{term: getattr(weights, term) + 1.5})
    changed = compute_losses(pred, batch, V3, heavier)
    for name in LOSS_TERMS:
        assert torch.equal(changed[name], base[name]), name
    assert changed["total"].item() == pytest.approx(base["total"].item() + 1.5 * base[term].item(), rel=1e-6)


def test_player_targets_reads_p0_then_p1():
    batch = zero_batch(1)
    batch["int_tgt"][0] = torch.arange(V3.int_target_dim)
    for j, field in enumerate(TARGET_FIELDS):
        assert player_targets(batch, field).tolist() == [[j, len(TARGET_FIELDS) + j]]


def test_bf16_predictions_give_float32_losses():
    pred, batch, expected = hand_made_loss_example()
    pred = {k: v.bfloat16() for k, v in pred.items()}
    losses = compute_losses(pred, batch, V3, LossConfig())
    assert all(v.dtype == torch.float32 for v in losses.values())
    assert losses["continuous"].item() == pytest.approx(expected["continuous"])


# ---------------------------------------------------------------- metrics


def set_actions(pred, batch, last, target, predicted):
    """Per example and player ((p0, p1) pairs): last context action, target action, argmax of the prediction."""
    for i, (l, t, p) in enumerate(zip(last, target, predicted)):
        for player in (0, 1):
            batch["int_ctx"][i, -1, V3.action_columns[player]] = l[player]
            batch["int_tgt"][i, player * len(TARGET_FIELDS) + ACTION] = t[player]
            pred["action"][i, player, p[player]] = 1.0


def hand_made_metric_example() -> tuple[dict, dict]:
    """Four examples; the docstring of each test says what they were built to give."""
    pred, batch = zero_pred(4), zero_batch(4)
    set_actions(
        pred,
        batch,
        last=[(14, 14), (14, 50), (20, 50), (44, 250)],
        target=[(14, 14), (15, 50), (21, 60), (44, 251)],  # changed: p0 in ex 1, 2; p1 in ex 2, 3
        predicted=[(14, 14), (15, 0), (20, 60), (0, 251)],  # right: p0 in ex 0, 1; p1 in ex 0, 2, 3
    )
    tgt = batch["float_tgt"]
    tgt[0, V3.float_target_index("p0.x")] = 0.05  # 1 game unit (scale 0.05)
    tgt[0, V3.float_target_index("p0.y")] = 0.10  # 2
    tgt[0, V3.float_target_index("p1.x")] = -0.05  # 1
    tgt[1, V3.float_target_index("p1.percent")] = 0.25  # 25 percent (scale 0.01)
    tgt[2, BLOCKS["velocity"].start] = 0.5  # 10 game units
    binary = BLOCKS["binary"]
    pred["float"][:, binary] = torch.tensor([1.0, 1.0, -1.0, 0.0])[:, None]  # predicts 1, 1, 0, 0 (sigmoid(0) = 0.5)
    tgt[:, binary] = torch.tensor([0.0, 1.0, 0.0, 1.0])[:, None]  # right in ex 1 and 2
    return pred, batch


def metrics_of(pred, batch, **compute_kwargs) -> dict:
    accumulator = MetricAccumulator(V3, "cpu")
    accumulator.update(pred, batch, compute_losses(pred, batch, V3, LossConfig()))
    return accumulator.compute(**compute_kwargs)


def test_change_acc_of_p0_as_the_reference_and_of_both_players():
    m = metrics_of(*hand_made_metric_example())
    # Changed pairs: p0 ex 1 (right), p0 ex 2 (wrong), p1 ex 2 (right), p1 ex 3 (right).
    assert m["metric/action_change_acc"] == pytest.approx(1 / 2)  # p0 only: the reference's
    assert m["metric/change_acc_both"] == pytest.approx(3 / 4)


def test_action_accuracy_per_player():
    m = metrics_of(*hand_made_metric_example())
    assert m["metric/p0_action_acc"] == pytest.approx(2 / 4)
    assert m["metric/p1_action_acc"] == pytest.approx(3 / 4)


def test_per_category_action_accuracy():
    m = metrics_of(*hand_made_metric_example())
    # Targets: idle 14 x2 (both right); movement 15 (right), 21 (wrong); ground_attack 44 (wrong),
    # 50 (wrong), 60 (right); edge 251 (right). No target in the other categories: NaN.
    assert m["action/cat_idle"] == 1.0
    assert m["action/cat_movement"] == pytest.approx(1 / 2)
    assert m["action/cat_ground_attack"] == pytest.approx(1 / 3)
    assert m["action/cat_edge"] == 1.0
    for category in ("aerial", "aerial_attack", "damage", "shield_dodge", "grab", "special", "other"):
        assert math.isnan(m[f"action/cat_{category}"]), category


def test_float_errors_are_in_game_units():
    m = metrics_of(*hand_made_metric_example())
    assert m["metric/position_mae"] == pytest.approx((1 + 2 + 1) / (4 * 4))  # 4 columns x 4 examples
    assert m["metric/damage_mae"] == pytest.approx(25 / (2 * 4))
    assert m["metric/velocity_mae"] == pytest.approx(10 / (10 * 4))


def test_binary_accuracy_thresholds_at_one_half():
    assert metrics_of(*hand_made_metric_example())["metric/binary_acc"] == pytest.approx(2 / 4)


def test_loss_means_match_compute_losses():
    pred, batch = hand_made_metric_example()
    losses = compute_losses(pred, batch, V3, LossConfig())
    m = metrics_of(pred, batch)
    reference_names = {"jumps_left": "jumps", "hurtbox_state": "hurtbox", "last_attack_landed": "last_attack"}
    for term in (*LOSS_TERMS, "total"):
        assert m[f"loss/{reference_names.get(term, term)}"] == pytest.approx(losses[term].item(), rel=1e-6), term


def test_empty_denominators_give_nan():
    assert all(math.isnan(v) for v in MetricAccumulator(V3, "cpu").compute().values())
    pred, batch = zero_pred(2), zero_batch(2)  # every action 0, both in context and target: no change
    m = metrics_of(pred, batch)
    assert math.isnan(m["metric/change_acc_both"]) and math.isnan(m["metric/action_change_acc"])
    assert m["metric/p0_action_acc"] == 1.0


def test_two_batches_accumulate_like_one_batch_of_both():
    (pred_a, batch_a), (pred_b, batch_b) = random_example(5, seed=1), random_example(3, seed=2)
    accumulator = MetricAccumulator(V3, "cpu")
    for pred, batch in ((pred_a, batch_a), (pred_b, batch_b)):
        accumulator.update(pred, batch, compute_losses(pred, batch, V3, LossConfig()))
    pred = {k: torch.cat([pred_a[k], pred_b[k]]) for k in pred_a}
    batch = {k: torch.cat([batch_a[k], batch_b[k]]) for k in batch_a}
    expected = metrics_of(pred, batch)
    assert accumulator.compute() == pytest.approx(expected, rel=1e-6, nan_ok=True)
    assert not math.isnan(expected["metric/change_acc_both"])  # the comparison covers a real ratio


def test_reset_forgets_everything():
    pred, batch = random_example(4, seed=0)
    accumulator = MetricAccumulator(V3, "cpu")
    accumulator.update(pred, batch, compute_losses(pred, batch, V3, LossConfig()))
    accumulator.reset()
    assert all(math.isnan(v) for v in accumulator.compute().values())


def test_a_cross_rank_sum_leaves_ratios_unchanged():
    pred, batch = random_example(6, seed=3)
    plain = metrics_of(pred, batch)
    assert metrics_of(pred, batch, reduce=lambda t: 2 * t) == pytest.approx(plain, rel=1e-12, nan_ok=True)


# The reference's keys (its metrics.py EpochMetrics.averaged and ActionBreakdown.summary_metrics),
# written out by hand: training logs them bare, validation with "val_".
REFERENCE_KEYS = {
    "loss/total",
    "loss/continuous",
    "loss/velocity",
    "loss/dynamics",
    "loss/binary",
    "loss/action",
    "loss/jumps",
    "loss/l_cancel",
    "loss/hurtbox",
    "loss/ground",
    "loss/last_attack",
    "metric/position_mae",
    "metric/velocity_mae",
    "metric/damage_mae",
    "metric/p0_action_acc",
    "metric/p1_action_acc",
    "metric/binary_acc",
    "metric/action_change_acc",
    *(
        f"action/cat_{c}"
        for c in (
            "idle",
            "movement",
            "aerial",
            "ground_attack",
            "aerial_attack",
            "damage",
            "shield_dodge",
            "grab",
            "edge",
            "special",
            "other",
        )
    ),
}


def test_key_names_are_the_reference_s_plus_ours():
    pred, batch = hand_made_metric_example()
    assert set(metrics_of(pred, batch)) == REFERENCE_KEYS | {"metric/change_acc_both"}
    val = metrics_of(pred, batch, prefix="val_")
    assert set(val) == {f"val_{key}" for key in REFERENCE_KEYS | {"metric/change_acc_both"}}
    assert {"val_loss/total", "val_metric/action_change_acc", "val_metric/position_mae", "val_action/cat_edge"} <= set(val)


def test_action_categories_are_disjoint_and_inside_the_vocabulary():
    ids = [i for members in ACTION_CATEGORIES.values() for i in members]
    assert len(ids) == len(set(ids))
    assert 0 <= min(ids) and max(ids) < V3.vocab("action")


def test_target_std_weighting_measures_float_errors_in_each_targets_spread():
    pred, batch = random_example(16, seed=5)
    scale = torch.rand(V3.float_target_dim, generator=torch.Generator().manual_seed(1)) + 0.1
    scale[BLOCKS["binary"]] = 1.0
    plain, scaled = compute_losses(pred, batch, V3, LossConfig()), compute_losses(pred, batch, V3, LossConfig(), scale)
    for name in ("continuous", "velocity", "dynamics"):
        block = BLOCKS[name]
        by_hand = (((pred["float"][:, block] - batch["float_tgt"][:, block]) / scale[block]) ** 2).mean()
        assert scaled[name].item() == pytest.approx(by_hand.item(), rel=1e-5)
        assert scaled[name].item() != pytest.approx(plain[name].item(), rel=1e-3)
    for name in ("binary", *TARGET_FIELDS):
        assert scaled[name].item() == pytest.approx(plain[name].item(), rel=1e-6)


def test_float_scale_follows_the_configured_weighting():
    std = torch.full((V3.float_target_dim,), 0.2).numpy()
    std[0] = 0.0  # a target that never changed in the sample
    assert float_scale(V3, LossConfig(), lambda: pytest.fail("encoded units read no data"), "cpu") is None
    scale = float_scale(V3, LossConfig(float_weighting="target_std"), lambda: std, "cpu")
    assert scale[0].item() == pytest.approx(MIN_STD) and scale[1].item() == pytest.approx(0.2)
    assert torch.all(scale[BLOCKS["binary"]] == 1.0)
    with pytest.raises(ValueError, match="float_weighting must be one of encoded, target_std"):
        float_scale(V3, LossConfig(float_weighting="game_units"), lambda: std, "cpu")


def test_huber_float_loss_is_the_squared_error_below_delta_and_linear_above():
    pred, batch = zero_pred(2), zero_batch(2)
    block = BLOCKS["continuous"]
    batch["float_tgt"][0, block.start] = 0.03  # under delta 0.05: squared, 0.0009
    batch["float_tgt"][1, block.start] = 8.0  # a respawn's jump: 2 * 0.05 * 8 - 0.05**2 = 0.7975, where MSE gives 64
    huber = LossConfig(float_loss="huber", huber_delta=0.05)
    width = block.stop - block.start
    assert compute_losses(pred, batch, V3, huber)["continuous"].item() == pytest.approx((0.0009 + 0.7975) / (2 * width), rel=1e-5)
    assert compute_losses(pred, batch, V3, LossConfig())["continuous"].item() == pytest.approx((0.0009 + 64.0) / (2 * width), rel=1e-5)
    assert compute_losses(pred, batch, V3, huber)["binary"].item() == pytest.approx(
        compute_losses(pred, batch, V3, LossConfig())["binary"].item()
    )
    with pytest.raises(ValueError, match="float_loss must be one of mse, huber"):
        compute_losses(pred, batch, V3, LossConfig(float_loss="l1"))


def test_huber_deltas_set_one_blocks_delta_and_leave_the_others_at_huber_delta():
    pred, batch = zero_pred(1), zero_batch(1)
    for name in ("continuous", "velocity"):
        batch["float_tgt"][0, BLOCKS[name].start] = 0.03
    config = LossConfig(float_loss="huber", huber_delta=0.05, huber_deltas={"continuous": 0.0005})
    losses = compute_losses(pred, batch, V3, config)
    width = {name: BLOCKS[name].stop - BLOCKS[name].start for name in ("continuous", "velocity")}
    # continuous: over its delta 0.0005, linear: 2 * 0.0005 * 0.03 - 0.0005**2; velocity: under 0.05, 0.03**2
    assert losses["continuous"].item() == pytest.approx((2 * 0.0005 * 0.03 - 0.0005**2) / width["continuous"], rel=1e-5)
    assert losses["velocity"].item() == pytest.approx(0.0009 / width["velocity"], rel=1e-5)
    with pytest.raises(ValueError, match="unknown block.*binary.*options: continuous, velocity, dynamics"):
        compute_losses(pred, batch, V3, LossConfig(float_loss="huber", huber_deltas={"binary": 0.1}))
    with pytest.raises(ValueError, match="huber_deltas.velocity must be a positive number, got 'small'"):
        compute_losses(pred, batch, V3, LossConfig(float_loss="huber", huber_deltas={"velocity": "small"}))
