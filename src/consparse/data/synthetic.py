"""Generated data for tests: FakeData-style random inputs, but with a learnable class signal."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from consparse.data.base import ConsparseDataModule, Splits
from consparse.data.info import DatasetInfo
from consparse.errors import ParameterError
from consparse.validation import check_choice, check_int, check_range


class SyntheticDataModule(ConsparseDataModule):
    """Gaussian noise plus a class-dependent template, so that a model can learn it in a few steps.

    Args:
        input_shape: shape of one sample, e.g. ``[3, 32, 32]`` or ``[100]``.
        num_classes: number of classes.
        train_size / test_size: number of generated samples per split.
        signal: scale of the class template relative to unit noise (0 gives pure noise).
        kind: ``image`` or ``vector`` (reported in DatasetInfo).
        data_seed: seed of the generator, independent of the run seed.
    """

    def __init__(
        self,
        input_shape: list[int] | tuple[int, ...] = (1, 28, 28),
        num_classes: int = 10,
        train_size: int = 512,
        test_size: int = 256,
        signal: float = 1.0,
        kind: str = "image",
        data_seed: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        shape = tuple(int(d) for d in input_shape)
        if not shape or any(d < 1 for d in shape):
            raise ParameterError("input_shape", f"got {list(input_shape)}; every dimension must be >= 1")
        check_int("num_classes", num_classes, 2)
        check_int("train_size", train_size, 2)
        check_int("test_size", test_size, 1)
        check_range("signal", signal, 0.0)
        check_choice("kind", kind, ["image", "vector", "text"])
        self.input_shape = shape
        self.num_classes = num_classes
        self.train_size = train_size
        self.test_size = test_size
        self.signal = signal
        self.kind = kind
        self.data_seed = data_seed

    @property
    def info(self) -> DatasetInfo:
        return DatasetInfo("synthetic", self.input_shape, self.num_classes, self.kind)  # type: ignore[arg-type]

    def build_splits(self) -> Splits:
        generator = torch.Generator().manual_seed(self.data_seed)
        templates = torch.randn((self.num_classes, *self.input_shape), generator=generator)

        def make(n: int) -> TensorDataset:
            labels = torch.randint(0, self.num_classes, (n,), generator=generator)
            noise = torch.randn((n, *self.input_shape), generator=generator)
            return TensorDataset(noise + self.signal * templates[labels], labels)

        train = make(self.train_size)
        return Splits(train=train, train_eval=train, test=make(self.test_size))
