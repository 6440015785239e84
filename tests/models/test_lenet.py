"""LeNet-5: layer order, flatten size from the input shape, and the errors for inputs it cannot take."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from consparse.errors import ParameterError
from consparse.models.lenet import LeNet5, min_input_side


def test_layer_order_is_the_l0_papers_lenet5() -> None:
    model = LeNet5([1, 28, 28], 10)
    kinds = [type(m) for m in model.layers]
    assert kinds == [
        nn.Conv2d,
        nn.ReLU,
        nn.MaxPool2d,
        nn.Conv2d,
        nn.ReLU,
        nn.MaxPool2d,
        nn.Flatten,
        nn.Linear,
        nn.ReLU,
        nn.Linear,
    ]
    convs = [m for m in model.layers if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.layers if isinstance(m, nn.Linear)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (1, 20, (5, 5)),
        (20, 50, (5, 5)),
    ]
    assert [(fc.in_features, fc.out_features) for fc in linears] == [(800, 500), (500, 10)]


@pytest.mark.parametrize(
    ("shape", "flatten"),
    [((1, 28, 28), 50 * 4 * 4), ((3, 32, 32), 50 * 5 * 5), ((1, 16, 16), 50), ((1, 16, 40), 50 * 1 * 7)],
)
def test_flatten_size_follows_the_input_and_the_model_runs(shape: tuple[int, ...], flatten: int) -> None:
    model = LeNet5(shape, 7)
    first_linear = next(m for m in model.layers if isinstance(m, nn.Linear))
    assert first_linear.in_features == flatten
    assert model(torch.randn(2, *shape)).shape == (2, 7)


def test_widths_and_stages_are_configurable_and_hidden_may_be_an_int() -> None:
    # 40 -> conv 36 -> pool 18 -> conv 14 -> pool 7 -> conv 3 -> pool 1
    model = LeNet5([1, 40, 40], 10, conv_channels=[4, 8, 6], hidden=16)
    convs = [m.out_channels for m in model.layers if isinstance(m, nn.Conv2d)]
    linears = [(m.in_features, m.out_features) for m in model.layers if isinstance(m, nn.Linear)]
    assert convs == [4, 8, 6]
    assert linears == [(6 * 1 * 1, 16), (16, 10)]
    assert model(torch.randn(1, 1, 40, 40)).shape == (1, 10)


def test_three_stages_need_36_pixels() -> None:
    assert min_input_side(3) == 36
    LeNet5([1, 36, 36], 10, conv_channels=[4, 8, 6])
    with pytest.raises(ParameterError, match="36x36"):
        LeNet5([1, 28, 28], 10, conv_channels=[4, 8, 6])


def test_smallest_input_is_16_pixels_for_two_stages() -> None:
    assert min_input_side(2) == 16
    LeNet5([1, 16, 16], 10)
    with pytest.raises(ParameterError):
        LeNet5([1, 15, 16], 10)


def test_too_small_input_names_the_sizes_that_work() -> None:
    with pytest.raises(ParameterError) as error:
        LeNet5([1, 8, 8], 10)
    assert error.value.name == ""
    assert "16x16" in str(error.value)
    assert "dataset.image_size=28" in str(error.value)


def test_vector_input_is_a_config_error() -> None:
    with pytest.raises(ParameterError, match=r"\[C, H, W\]"):
        LeNet5([784], 10)


@pytest.mark.parametrize(
    ("kwargs", "field"), [({"conv_channels": []}, "conv_channels"), ({"hidden": [0]}, "hidden")]
)
def test_bad_widths_are_config_errors(kwargs: dict, field: str) -> None:
    with pytest.raises(ParameterError) as error:
        LeNet5([1, 28, 28], 10, **kwargs)
    assert error.value.name == field
