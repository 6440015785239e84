"""Exact conversion of a Linear/ReLU network (``mlp``, ``text_mlp``) into implicit matrices (A, B, C, D).

For ``x_1 = relu(W_0 u + b_0)``, ``x_{l+1} = relu(W_l x_l + b_l)`` and ``y = W_L x_L + b_L`` the
states are stacked first hidden layer first, ``x = [x_1; ...; x_L]``, and the input is augmented
with a constant 1 (``u' = [u; 1]``) so that biases sit in the last column of ``B`` and ``D``::

    A[l+1, l] = (s_{l+1} / s_l) W_l       B[1] = [s_1 W_0, s_1 b_0]      C[:, L] = W_L / s_L
                                          B[l+1] = [0, s_{l+1} b_l]      D = [0, b_L]

``A`` is strictly block-lower-triangular (nilpotent), so the fixed point is exact after L+1 Picard
iterations whatever the scales. The positive scales ``s_l`` use ReLU's positive homogeneity
(``relu(s z) = s relu(z)``): the model computes the same logits for any ``s_l > 0``. They are chosen
so that the conversion is well-posed with margin:

* ``constrain="row"``: every row of ``[A B]`` has L1 norm <= kappa (the largest row of each layer
  equals kappa), ``s_1 = kappa / max_i ||[W_0 b_0]_i||_1`` and
  ``s_{l+1} = kappa / max_i (||W_l[i]||_1 / s_l + |b_l[i]|)``;
* ``constrain="A"``: only the rows of ``A`` are bounded, ``s_1 = 1`` and
  ``s_{l+1} = s_l kappa / ||W_l||_inf``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from consparse.errors import ParameterError

# Where the well-posedness bound kappa applies (config key ``constrain``): to the rows of [A B], or of A only.
BOUNDED_ROWS = ("row", "A")
# Modules a Linear/ReLU chain may contain besides Linear and ReLU (identities at evaluation time).
_PASSIVE = (nn.Flatten, nn.Dropout, nn.Identity)


@dataclass
class ConvertedNetwork:
    """The implicit matrices of a Linear/ReLU network and how its layers map onto the states.

    Attributes:
        A, B, C, D: the implicit matrices (dtype of the network).
        input_shape: shape of one input sample.
        bias: whether the input carries the constant 1 (the last column of B and D).
        scales: the positive scale ``s_l`` of each hidden layer.
        layer_slices: the state indices of each hidden layer.
        hidden_parameters: weights and biases of the hidden layers (the output layer excluded): the
            count the implicit-sparsification paper measures the sparsity of (A, B) against.
    """

    A: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor
    D: torch.Tensor
    input_shape: list[int]
    bias: bool
    scales: list[float]
    layer_slices: list[slice]
    hidden_parameters: int


def linear_relu_chain(net: nn.Module) -> list[nn.Linear]:
    """The Linear layers of ``net`` if it is a Linear/ReLU chain (``Linear (ReLU Linear)*``), in order.

    Flatten, Dropout and Identity modules are allowed anywhere (they are identities on flattened
    inputs in eval mode). Raises ParameterError naming the offending module otherwise.
    """
    leaves = [(name, module) for name, module in net.named_modules() if not list(module.children())]
    linears: list[nn.Linear] = []
    expect_linear = True
    for name, module in leaves:
        if isinstance(module, _PASSIVE):
            continue
        if isinstance(module, nn.Linear) and expect_linear:
            linears.append(module)
            expect_linear = False
        elif isinstance(module, nn.ReLU) and not expect_linear:
            expect_linear = True
        else:
            raise ParameterError(
                "model",
                f"implicit conversion needs a Linear/ReLU chain (mlp, text_mlp); module '{name}' "
                f"({type(module).__name__}) does not fit. Conv nets use layer-wise state matching.",
            )
    if not linears or expect_linear:
        raise ParameterError("model", "implicit conversion needs a network that ends with a Linear layer")
    return linears


def _float64_weights(layer: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's weight and bias (zeros without one) in float64, where the rescaling is done."""
    w = layer.weight.detach().to(torch.float64)
    b = layer.bias.detach().to(torch.float64) if layer.bias is not None else w.new_zeros(w.shape[0])
    return w, b


def sequential_to_matrices(
    net: nn.Module, kappa: float, constrain: str = "row", input_shape: Sequence[int] | None = None
) -> ConvertedNetwork:
    """Convert a Linear/ReLU chain into implicit matrices with the rescaling described above.

    Args:
        net: the trained network (read only).
        kappa: the radius in (0, 1) the rescaled rows must respect.
        constrain: ``row`` (rows of [A B]) or ``A`` (rows of A only).
        input_shape: shape of one input (default: the first layer's ``in_features``).
    """
    if not 0.0 < kappa < 1.0:
        raise ParameterError("conversion_kappa", f"got {kappa!r}; allowed: (0, 1)")
    if constrain not in BOUNDED_ROWS:
        raise ParameterError("constrain", f"got {constrain!r}; allowed: {', '.join(BOUNDED_ROWS)}")
    linears = linear_relu_chain(net)
    hidden, output = linears[:-1], linears[-1]
    if not hidden:
        raise ParameterError("model.hidden", "the network has no hidden layer, so there are no states to sparsify")
    dtype, device = output.weight.dtype, output.weight.device
    p = hidden[0].in_features
    bias = any(layer.bias is not None for layer in linears)
    width = p + int(bias)
    widths = [layer.out_features for layer in hidden]
    n = sum(widths)
    starts = [sum(widths[:i]) for i in range(len(widths))]
    slices = [slice(start, start + w) for start, w in zip(starts, widths)]

    scales = _scales([_float64_weights(layer) for layer in hidden], kappa, constrain)
    A = torch.zeros(n, n, dtype=torch.float64, device=device)
    B = torch.zeros(n, width, dtype=torch.float64, device=device)
    w0, b0 = _float64_weights(hidden[0])
    B[slices[0], :p] = scales[0] * w0
    if bias:
        B[slices[0], p] = scales[0] * b0
    for index in range(1, len(hidden)):
        w, b = _float64_weights(hidden[index])
        A[slices[index], slices[index - 1]] = (scales[index] / scales[index - 1]) * w
        if bias:
            B[slices[index], p] = scales[index] * b
    w_out, b_out = _float64_weights(output)
    C = torch.zeros(w_out.shape[0], n, dtype=torch.float64, device=device)
    D = torch.zeros(w_out.shape[0], width, dtype=torch.float64, device=device)
    C[:, slices[-1]] = w_out / scales[-1]
    if bias:
        D[:, p] = b_out
    hidden_parameters = sum(layer.weight.numel() + (layer.bias.numel() if layer.bias is not None else 0) for layer in hidden)
    return ConvertedNetwork(
        A=A.to(dtype),
        B=B.to(dtype),
        C=C.to(dtype),
        D=D.to(dtype),
        input_shape=[int(d) for d in input_shape] if input_shape is not None else [p],
        bias=bias,
        scales=scales,
        layer_slices=slices,
        hidden_parameters=hidden_parameters,
    )


def _scales(layers: list[tuple[torch.Tensor, torch.Tensor]], kappa: float, constrain: str) -> list[float]:
    """The scale of each hidden layer (see the module doc); a layer of zeros keeps its predecessor's scale."""
    scales: list[float] = []
    for index, (w, b) in enumerate(layers):
        previous = scales[-1] if scales else 1.0
        if constrain == "row":
            inputs = w.abs().sum(dim=1) / (previous if index else 1.0)
            largest = float((inputs + b.abs()).max())
            scales.append(kappa / largest if largest > 0 else previous)
        elif index == 0:
            scales.append(1.0)
        else:
            largest = float(w.abs().sum(dim=1).max())
            scales.append(previous * kappa / largest if largest > 0 else previous)
    return scales
