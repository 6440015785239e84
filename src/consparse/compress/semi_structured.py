"""A 2:4 model deployed on an NVIDIA GPU with semi-structured sparse Linear weights, and its latency.

``torch.sparse.to_sparse_semi_structured`` stores a 2:4 weight as its kept half plus metadata and
multiplies with the sparse tensor cores of Ampere and Hopper GPUs (cuSPARSELt, or CUTLASS where
cuSPARSELt is missing); in float16 / bfloat16 that is the one sparse format standard libraries run
faster than dense. ``to_semi_structured`` converts every Linear layer whose weight is 2:4 and whose
shape the backend takes (multiples of 16 to 64 depending on backend and dtype); a layer it cannot
take stays dense and is listed with the reason, so the model always computes the same function.
Convolutions stay dense: PyTorch has no semi-structured convolution.

Everything here needs a CUDA device of compute capability 8.0 or newer; ``unavailable_reason``
says why not otherwise, and ``compare_semi_structured`` then returns a record saying "not
measured" instead of a latency. On the CPU, the N:M masked model is the reference the deployed
model must agree with (``max_abs_difference``).
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from consparse.nm_pattern import NMPattern

SEMI_STRUCTURED = NMPattern(2, 4)
# The batch of the GPU latency: large enough that the matmuls, not the launches, take the time.
GPU_BATCH = 256
# Sparse tensor cores arrived with Ampere (compute capability 8.0).
MIN_CAPABILITY = (8, 0)
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def unavailable_reason() -> str | None:
    """None when this process can run semi-structured sparse matmuls, else why not (one line)."""
    if not torch.cuda.is_available():
        return "no CUDA device"
    capability = torch.cuda.get_device_capability()
    if capability < MIN_CAPABILITY:
        name = torch.cuda.get_device_name()
        return f"{name} (compute capability {capability[0]}.{capability[1]}) has no sparse tensor cores (8.0+ needed)"
    return None


def to_semi_structured(model: nn.Module, dtype: torch.dtype = torch.float16) -> tuple[nn.Module, dict[str, Any]]:
    """A copy of ``model`` on the GPU in ``dtype`` whose 2:4 Linear weights are semi-structured sparse tensors.

    Returns the model and ``{"converted": [layer names], "kept_dense": {layer name: reason}}``.
    """
    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"semi-structured sparsity needs an NVIDIA GPU of compute capability 8.0+: {reason}")
    from torch.sparse import to_sparse_semi_structured

    deployed = copy.deepcopy(model).to(device="cuda", dtype=dtype).eval()
    converted: list[str] = []
    kept_dense: dict[str, str] = {}
    for name, module in deployed.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        weight = module.weight.detach()
        if not SEMI_STRUCTURED.holds_for(weight) or weight.shape[1] % SEMI_STRUCTURED.m:
            kept_dense[name] = f"not {SEMI_STRUCTURED}"
            continue
        try:
            sparse = to_sparse_semi_structured(weight.contiguous())
        except (RuntimeError, ValueError) as exc:
            kept_dense[name] = str(exc).splitlines()[0]
            continue
        module.weight = nn.Parameter(sparse, requires_grad=False)
        converted.append(name)
    return deployed, {"converted": converted, "kept_dense": kept_dense}


def gpu_latency(
    models: dict[str, nn.Module],
    input_shape: Sequence[int],
    batch_size: int = GPU_BATCH,
    rounds: int = 3,
    min_run_time: float = 0.2,
) -> dict[str, float]:
    """Milliseconds per forward pass of each (GPU) model on a batch of random inputs, models timed
    alternately over ``rounds`` (median of the per-round medians; ``torch.utils.benchmark``
    synchronises the device around every timed block)."""
    from torch.utils.benchmark import Timer

    per_round: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for _ in range(rounds):
            for name, model in models.items():
                parameter = next(model.parameters())
                inputs = torch.randn(batch_size, *input_shape, device="cuda", dtype=parameter.dtype)
                model(inputs)  # warm-up: kernel selection, workspace
                timer = Timer("model(inputs)", globals={"model": model, "inputs": inputs})
                per_round[name].append(timer.blocked_autorange(min_run_time=min_run_time).median * 1e3)
    return {name: statistics.median(values) for name, values in per_round.items()}


def max_abs_difference(model: nn.Module, reference: nn.Module, input_shape: Sequence[int], batch_size: int = 8) -> float:
    """The largest ``|model(x) - reference(x)|`` on random inputs, the reference run in float32 on its device."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(batch_size, *input_shape, generator=generator)
    parameter = next(model.parameters())
    with torch.inference_mode():
        expected = reference.float().eval()(inputs.to(next(reference.parameters()).device))
        got = model(inputs.to(device=parameter.device, dtype=parameter.dtype))
    return float((got.float().cpu() - expected.float().cpu()).abs().max())


def compare_semi_structured(
    masked: nn.Module,
    dense: nn.Module,
    input_shape: Sequence[int],
    batch_size: int = GPU_BATCH,
    dtype: str = "float16",
) -> dict[str, Any]:
    """The 2:4 ``masked`` model deployed semi-structured against ``dense``, both on the GPU in ``dtype``.

    Returns ``measured`` and, when measured, ``latency_ms`` and ``dense_latency_ms`` (batch
    ``batch_size``), ``speedup`` (dense / 2:4), ``gpu``, ``dtype``, ``converted``, ``kept_dense``
    and ``max_abs_difference`` of the deployed model against the masked one in float32; otherwise
    ``reason``.
    """
    reason = unavailable_reason()
    if reason is not None:
        return {"measured": False, "reason": f"not measured: {reason}", "batch_size": batch_size, "dtype": dtype}
    torch_dtype = DTYPES[dtype]
    deployed, layers = to_semi_structured(masked, torch_dtype)
    dense_gpu = copy.deepcopy(dense).to(device="cuda", dtype=torch_dtype).eval()
    latency = gpu_latency({"nm": deployed, "dense": dense_gpu}, input_shape, batch_size)
    reference = copy.deepcopy(masked).cuda()
    return {
        "measured": True,
        "gpu": torch.cuda.get_device_name(),
        "dtype": dtype,
        "batch_size": batch_size,
        "latency_ms": latency["nm"],
        "dense_latency_ms": latency["dense"],
        "speedup": latency["dense"] / latency["nm"],
        **layers,
        "max_abs_difference": max_abs_difference(deployed, reference, input_shape),
        "torch_version": torch.__version__,
    }
