"""Evaluation metrics (spec section 5), accumulated on the device and read back with one host transfer.

`MetricAccumulator.update` adds each batch's numerators and denominators to one (2, n_metrics) float64
tensor without a host sync (no .item(), no boolean-mask indexing: masks multiply). `compute` optionally
reduces that tensor across ranks, copies it to the host once, and divides. Every metric is a ratio of
sums, so a cross-rank sum of the two rows gives the exact global value. A batch with "weight" (B,)
(the sequence objective's rows, `melee_model.sequence.position_rows`) counts example i weight[i]
times: 0/1 weights select the target positions.

Keys, named as the reference logged them (to wandb, and here to metrics.jsonl too); validation
prefixes every key with "val_" (e.g. "val_loss/total", "val_metric/action_change_acc",
"val_action/cat_edge"). All over the examples seen since the last reset():
    loss/<term>                  each loss term and the total, averaged over examples; terms named as
                                 the reference: continuous, velocity, dynamics, binary, action, jumps,
                                 l_cancel, hurtbox, ground, last_attack
    metric/action_change_acc     among examples whose p0 target action differs from p0's action in the
                                 last context frame, the fraction whose argmax is the target: p0 only,
                                 the reference's definition and the published figures'
    metric/p0_action_acc, metric/p1_action_acc   argmax action == target action
    metric/position_mae          mean |pred - true| of the x/y deltas of both players, game units
    metric/damage_mae            mean |pred - true| of both players' percent deltas, percent units
    metric/velocity_mae          mean |pred - true| over the velocity-delta block, game units
    metric/binary_acc            sigmoid(logit) > 0.5 agrees with target > 0.5, over every binary entry
    action/cat_<category>        action accuracy among (example, player) pairs whose target is in the
                                 category (the reference logged it for validation only)
Ours, beside them (OWN_KEYS):
    metric/change_acc_both       change_acc over (example, player) pairs of both players
and, for a model with the hold gate only (HOLD_KEYS; model.hold_gate, absent without one):
    loss/hold                    the gate's cross-entropy, averaged over examples
    metric/hold_acc              the gate's logit > 0 agrees with whether the player's x and y stay put,
                                 over (example, player) pairs
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from melee_model.batches import batch_to_device
from melee_model.config import ScheduledSamplingConfig
from melee_model.layout import FrameLayout
from melee_model.losses import LOSS_TERMS, compute_losses, player_targets
from melee_model.objective import LastObjective

VAL_PREFIX = "val_"  # the key prefix of validation metrics

# Action-state ids per category, for per-category action accuracy; "other" holds every id not listed.
ACTION_CATEGORIES = {
    "idle": (14,),
    "movement": (*range(15, 24), 39, 40, 41, 244),
    "aerial": (*range(24, 38), 42, 43),
    "ground_attack": tuple(range(44, 65)),
    "aerial_attack": tuple(range(65, 75)),
    "damage": (38, *range(75, 92)),
    "shield_dodge": (*range(178, 183), *range(233, 237)),
    "grab": (*range(212, 233), *range(239, 244)),
    "edge": tuple(range(245, 264)),
    "special": tuple(range(342, 398)),
}
OTHER_CATEGORY = "other"
CATEGORY_NAMES = (*ACTION_CATEGORIES, OTHER_CATEGORY)
# The key of each loss term (LOSS_TERMS are named like their LossConfig weights) and of the total.
LOSS_KEYS = {
    **{term: f"loss/{term}" for term in LOSS_TERMS},
    "jumps_left": "loss/jumps",
    "hurtbox_state": "loss/hurtbox",
    "last_attack_landed": "loss/last_attack",
    "total": "loss/total",
}
REFERENCE_METRIC_KEYS = (
    "metric/action_change_acc",
    "metric/p0_action_acc",
    "metric/p1_action_acc",
    "metric/position_mae",
    "metric/damage_mae",
    "metric/velocity_mae",
    "metric/binary_acc",
)
CATEGORY_KEYS = tuple(f"action/cat_{category}" for category in CATEGORY_NAMES)
OWN_KEYS = ("metric/change_acc_both",)
HOLD_KEYS = ("loss/hold", "metric/hold_acc")


def action_category_table(vocab: int) -> torch.Tensor:
    """(vocab,) int64: the index in CATEGORY_NAMES of each action id."""
    table = torch.full((vocab,), CATEGORY_NAMES.index(OTHER_CATEGORY), dtype=torch.long)
    for index, ids in enumerate(ACTION_CATEGORIES.values()):
        table[list(ids)] = index
    return table


class MetricAccumulator:
    """Sums and counts of every metric across batches, kept on `device`.

    update(pred, batch, losses): pred is the model's dict ("float" (B, T), field -> (B, 2, V)), batch the
    data dict (float_ctx, int_ctx, next_ctrl, float_tgt, int_tgt), losses compute_losses' dict.
    compute(reduce=None, prefix="") -> {key: float}; a metric whose denominator is empty (e.g. no action
    change seen, or no target in a category) is NaN.
    """

    def __init__(self, layout: FrameLayout, device):
        self.layout = layout
        self.device = torch.device(device)
        self.names = [*LOSS_KEYS.values(), *REFERENCE_METRIC_KEYS, *OWN_KEYS, *CATEGORY_KEYS, *HOLD_KEYS]
        schema = layout.schema
        target_columns = [schema.float_columns[i] for i in layout.float_target_columns]
        # Dividing by a column's scale turns an encoded delta back into game units (offsets cancel).
        self.target_scale = torch.tensor([c.scale for c in target_columns], device=self.device)  # (T,)
        self.pos_mask = self._target_mask(["p0.x", "p0.y", "p1.x", "p1.y"])  # (T,)
        self.damage_mask = self._target_mask(["p0.percent", "p1.percent"])  # (T,)
        self.category_of_action = action_category_table(layout.vocab("action")).to(self.device)  # (V,)
        self.category_ids = torch.arange(len(CATEGORY_NAMES), device=self.device)  # (n_categories,)
        self.nothing = torch.zeros((), dtype=torch.float64, device=self.device)  # a term no example counts in
        self.reset()

    def _target_mask(self, names: list[str]) -> torch.Tensor:
        mask = torch.zeros(self.layout.float_target_dim, device=self.device)
        mask[[self.layout.float_target_index(name) for name in names]] = 1
        return mask

    def reset(self) -> None:
        # Row 0: numerators, row 1: denominators, one column per name.
        self.totals = torch.zeros(2, len(self.names), dtype=torch.float64, device=self.device)

    @torch.no_grad()
    def update(self, pred: dict, batch: dict, losses: dict) -> None:
        weight = batch.get("weight")
        terms = {
            **self._loss_terms(batch, losses, weight),
            **self._action_terms(pred, batch, weight),
            **self._float_terms(pred, batch, weight),
            **self._hold_terms(pred, batch, losses, weight),
        }
        nums = torch.stack([terms[name][0] for name in self.names])  # (n_metrics,)
        dens = torch.stack([terms[name][1] for name in self.names])  # (n_metrics,)
        self.totals += torch.stack([nums, dens])  # (2, n_metrics)

    def _examples(self, batch: dict, weight: torch.Tensor | None) -> tuple:
        """(what a batch's mean loss is multiplied by, the count added): weighting each batch's mean by
        its size makes the result the mean over examples."""
        if weight is None:
            size = batch["float_tgt"].shape[0]
            return size, torch.tensor(float(size), dtype=torch.float64, device=self.device)
        size = weight.double().sum()
        return size, size

    def _loss_terms(self, batch: dict, losses: dict, weight: torch.Tensor | None) -> dict:
        size, count = self._examples(batch, weight)
        return {key: (losses[term].detach().double() * size, count) for term, key in LOSS_KEYS.items()}

    def _hold_terms(self, pred: dict, batch: dict, losses: dict, weight: torch.Tensor | None) -> dict:
        if "hold" not in pred:  # no gate: nothing counted, and compute leaves the keys out
            return dict.fromkeys(HOLD_KEYS, (self.nothing, self.nothing))
        size, count = self._examples(batch, weight)
        correct = (pred["hold"] > 0) == (batch["hold"] > 0.5)  # (B, 2)
        return {
            "loss/hold": (losses["hold"].detach().double() * size, count),
            "metric/hold_acc": _ratio(correct, _counted(correct, weight)),
        }

    def _action_terms(self, pred: dict, batch: dict, weight: torch.Tensor | None) -> dict:
        target = player_targets(batch, "action")  # (B, 2)
        last_ctx = batch["int_ctx"][:, -1]  # (B, n_int)
        last = torch.stack([last_ctx[:, c] for c in self.layout.action_columns], dim=1).long()  # (B, 2)
        correct = pred["action"].argmax(-1) == target  # (B, 2)
        changed = target != last  # (B, 2)
        in_category = self.category_of_action[target][..., None] == self.category_ids  # (B, 2, n_categories)
        if weight is None:
            category_hits = (in_category & correct[..., None]).sum((0, 1))  # (n_categories,)
            category_counts = in_category.sum((0, 1))  # (n_categories,)
        else:
            counted = in_category * weight[:, None, None]  # (B, 2, n_categories)
            category_hits, category_counts = (counted * correct[..., None]).sum((0, 1)), counted.sum((0, 1))
        terms = {
            "metric/action_change_acc": _ratio(correct[:, 0], _counted(correct[:, 0], weight, changed[:, 0])),
            "metric/change_acc_both": _ratio(correct, _counted(correct, weight, changed)),
            "metric/p0_action_acc": _ratio(correct[:, 0], _counted(correct[:, 0], weight)),
            "metric/p1_action_acc": _ratio(correct[:, 1], _counted(correct[:, 1], weight)),
        }
        for k, key in enumerate(CATEGORY_KEYS):
            terms[key] = (category_hits[k].double(), category_counts[k].double())
        return terms

    def _float_terms(self, pred: dict, batch: dict, weight: torch.Tensor | None) -> dict:
        pred_float, target = pred["float"].float(), batch["float_tgt"].float()  # (B, T)
        error = (pred_float - target).abs() / self.target_scale  # (B, T), game units
        velocity, binary = self.layout.float_blocks["velocity"], self.layout.float_blocks["binary"]
        binary_correct = (torch.sigmoid(pred_float[:, binary]) > 0.5) == (target[:, binary] > 0.5)  # (B, n_binary)
        return {
            "metric/position_mae": _ratio(error, _counted(error, weight, self.pos_mask.expand_as(error))),
            "metric/damage_mae": _ratio(error, _counted(error, weight, self.damage_mask.expand_as(error))),
            "metric/velocity_mae": _ratio(error[:, velocity], _counted(error[:, velocity], weight)),
            "metric/binary_acc": _ratio(binary_correct, _counted(binary_correct, weight)),
        }

    def compute(self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None, prefix: str = "") -> dict[str, float]:
        """Every metric as a float, keyed `prefix + key` (VAL_PREFIX for validation); NaN where its
        denominator is zero, except HOLD_KEYS, which are left out then (a model without the hold gate).

        reduce, when given, maps the (2, n_metrics) tensor of sums to its cross-rank sum (e.g.
        `lambda t: accelerator.reduce(t, "sum")`); it receives a copy, so an in-place reduction is safe
        as long as it returns the result.
        """
        totals = self.totals if reduce is None else reduce(self.totals.clone())
        nums, dens = totals.tolist()  # the one host transfer
        return {
            prefix + name: num / den if den else math.nan for name, num, den in zip(self.names, nums, dens) if den or name not in HOLD_KEYS
        }


def _counted(like: torch.Tensor, weight: torch.Tensor | None, mask: torch.Tensor | None = None) -> torch.Tensor | None:
    """The denominator entries of a metric over `like` (B, ...): `mask` (None: every entry) times each
    example's weight (B,), broadcast over the trailing axes. Without weights the mask is returned as is."""
    if weight is None:
        return mask
    per_example = weight.view(-1, *(1,) * (like.dim() - 1)).expand_as(like)  # (B, ...)
    return per_example if mask is None else mask * per_example


def _ratio(values: torch.Tensor, weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of values * weights, sum of weights) as float64 scalars; no weights means every entry counts."""
    values = values.double()
    if weights is None:
        return values.sum(), values.new_full((), values.numel())
    weights = weights.double()
    return (values * weights).sum(), weights.sum()


@torch.no_grad()
def score(
    model: torch.nn.Module, batches, layout, loss_config, device: torch.device, autocast, objective=None, scale=None
) -> tuple[MetricAccumulator, int]:
    """The metrics of `model` over `batches` (loader dicts, moved to `device`, run under `autocast()`),
    and how many targets they held. `objective`: how batches become predictions (default: the card's);
    `scale`: the loss's float scale (`losses.float_scale`)."""
    objective = objective or LastObjective(layout, ScheduledSamplingConfig(), device)
    metrics, examples = MetricAccumulator(layout, device), 0
    for batch in batches:
        examples += objective.count(batch)
        batch = batch_to_device(batch, device)
        with autocast():
            pred, rows = objective.outputs(model, batch)
        metrics.update(pred, rows, compute_losses(pred, rows, layout, loss_config, scale))
    return metrics, examples
