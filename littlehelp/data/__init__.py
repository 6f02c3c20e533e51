"""Data: text sources, seqio task registrations and sharded global batches."""

from littlehelp.data import tasks  # registers the built-in seqio tasks
from littlehelp.data.pipeline import DatasetConfig, GlobalBatches

__all__ = ["DatasetConfig", "GlobalBatches", "tasks"]
