"""Datasets: one LightningDataModule subclass per dataset, chosen by the ``dataset`` config group."""

from consparse.data.base import ConsparseDataModule, Splits
from consparse.data.info import DatasetInfo

__all__ = ["ConsparseDataModule", "DatasetInfo", "Splits"]
