"""Data: text sources, seqio task registrations (pre-training and downstream) and sharded global batches."""

from littlehelp.data import downstream, tasks  # register the built-in seqio tasks
from littlehelp.data.pipeline import DatasetConfig, GlobalBatches

__all__ = ["DatasetConfig", "GlobalBatches", "downstream", "tasks"]
