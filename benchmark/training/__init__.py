"""Training: one model with the per-model loop, many with the stacked trainer, the shared per-epoch
bookkeeping (history rows, probes, stopping rule), and training a zoo into a store with workers."""
from benchmark.training.history import Probe, final_metrics
from benchmark.training.loop import TrainResult, evaluate, train_model
from benchmark.training.stacked import Stack, group_stacks, stack_key, train_many

__all__ = ["Probe", "final_metrics", "TrainResult", "evaluate", "train_model", "Stack", "group_stacks",
           "stack_key", "train_many"]
