"""melee_model: Mamba-2 world models of Melee trained on a melee-encode store (needs the `train` extra).

Modules, in the order data flows: config (experiment dataclasses) -> layout (store columns to example
parts) -> data, chunks (batches from the store) -> mamba2, model (the networks) -> losses, metrics ->
train, checkpoint (the loop) -> rollout, evaluate, plan (behind scripts/).
"""
