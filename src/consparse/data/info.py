"""What a datamodule tells the model builder, so that models never hard-code 784 or 10."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

DataKind = Literal["image", "vector", "text"]


@dataclass(frozen=True)
class DatasetInfo:
    """Static description of a dataset, known before any file is read.

    ``input_shape`` is the shape of one sample as the model receives it: ``(C, H, W)`` for images,
    ``(features,)`` for vectors and TF-IDF text.
    """

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    kind: DataKind = "image"

    @property
    def input_size(self) -> int:
        """Number of input features once flattened."""
        size = 1
        for dim in self.input_shape:
            size *= dim
        return size
