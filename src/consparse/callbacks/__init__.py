"""Lightning callbacks the training entry adds to every run, one concern per module."""

from consparse.callbacks.checkpoint import RandomState, RunCheckpoint
from consparse.callbacks.divergence import DivergenceGuard
from consparse.callbacks.progress import EpochSummary, TrainTimer
from consparse.callbacks.ranks import DistinctRankStreams, RankAgreement, SharedRunDirectory

__all__ = [
    "DistinctRankStreams",
    "DivergenceGuard",
    "EpochSummary",
    "RandomState",
    "RankAgreement",
    "RunCheckpoint",
    "SharedRunDirectory",
    "TrainTimer",
]
