"""The deployed form of an implicit model: its states in levels, each one sparse-or-dense product.

``DeployedImplicitModel.from_implicit(model)`` turns a trained ``ImplicitModel``
(``X = relu(A X + B u), y = C X + D u``) into a plain ``nn.Module`` that computes the same logits
faster (``consparse.implicit.structure`` says how):

* states that are always 0 or never reach the output are dropped;
* the kept states are ordered by level (topological generations of the strongly connected
  components of A's support); a level is one product over the input and every earlier state,
  ``x_level = relu(W_level [u; x_earlier] + b_level)``, written in place into a feature-major buffer;
* a level whose states lie on a cycle of A (implicit_fw) iterates ``x = relu(A_ll x + drive)`` over
  its own states only, from ``relu(drive)`` (the first Picard iterate from 0) or from stored warm
  states, with the implicit model's per-sample stopping rule; a nilpotent A (every converted
  network) has no such level, and one pass is exact;
* every product (``SparseLinear``) is stored dense or CSR, whichever ``choose_format`` finds faster.

The module is described by JSON arguments alone (level sizes, the shape and format of each kernel,
the solver settings), so an export rebuilds it as a registered architecture and loads its tensors
from safetensors. ``as_matrices()`` gives back an equivalent ``(A, B, C, D)`` over the kept states.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from consparse.implicit.solvers import FixedPointSettings, solve_fixed_point
from consparse.implicit.structure import plan_states
from consparse.models.implicit import ImplicitModel
from consparse.models.sparse_linear import SparseLinear, choose_format, to_csr

# A kernel as a JSON list: [format, start, columns, nnz] (rows are the level's size).
# Fixed-point iterations between two checks of the stopping rule.
CHECK_EVERY = 4
KernelSpec = list[Any]


def _kernel(rows: int, spec: Sequence[Any], bias: bool) -> SparseLinear:
    format, start, columns, nnz = spec
    return SparseLinear(rows, int(start), int(columns), int(nnz), str(format), bias)


def _spec(kernel: SparseLinear) -> KernelSpec:
    kwargs = kernel.constructor_kwargs()
    return [kwargs["format"], kwargs["start"], kwargs["columns"], kwargs["nnz"]]


class DeployedImplicitModel(nn.Module):
    """Level-by-level evaluation of an implicit model (see the module docstring).

    Args:
        input_shape, num_classes: as every architecture.
        level_sizes: states per level, in evaluation order.
        drives: per level, the kernel ``[format, start, columns, nnz]`` of its product over the
            buffer ``[u; states]`` (plus bias).
        recurrences: per level, null for a one-pass level, else ``[format, nnz]`` of ``A`` restricted
            to the level's states (a fixed point).
        readout: the kernel of ``[D C]`` over the buffer (plus bias).
        max_iter, rtol, atol: the fixed point's cap and per-sample stopping rule (as ``ImplicitModel``).
        anderson_memory, anderson_damping: 0 for the plain iteration, else Anderson acceleration
            (``consparse.implicit.solvers``).
        warm_start: store one initial value per state (``warm_states``) that cyclic levels start from.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        level_sizes: Sequence[int] = (),
        drives: Sequence[KernelSpec] = (),
        recurrences: Sequence[Sequence[Any] | None] = (),
        readout: KernelSpec = ("dense", 0, 0, 0),
        max_iter: int = 300,
        rtol: float = 1e-5,
        atol: float = 1e-8,
        anderson_memory: int = 0,
        anderson_damping: float = 1.0,
        warm_start: bool = False,
    ) -> None:
        super().__init__()
        if not (len(level_sizes) == len(drives) == len(recurrences)):
            raise ValueError("level_sizes, drives and recurrences need one entry per level")
        self.input_shape = [int(d) for d in input_shape]
        self.input_size = math.prod(self.input_shape)
        self.num_classes = int(num_classes)
        self.level_sizes = [int(size) for size in level_sizes]
        self.starts = [self.input_size + sum(self.level_sizes[:i]) for i in range(len(self.level_sizes))]
        self.width = self.input_size + sum(self.level_sizes)
        self.settings = FixedPointSettings(max_iter, rtol, atol, anderson_memory, anderson_damping)
        self.settings.validate()
        self.drives = nn.ModuleList(_kernel(size, spec, True) for size, spec in zip(self.level_sizes, drives))
        self.recurrences = nn.ModuleDict({
            str(index): SparseLinear(size, start, size, int(spec[1]), str(spec[0]), bias=False)
            for index, (size, start, spec) in enumerate(zip(self.level_sizes, self.starts, recurrences))
            if spec is not None
        })
        self.readout = _kernel(self.num_classes, readout, True)
        recurrent = dict(self.recurrences.items())
        # The forward's plan, kept out of Module's attribute machinery (a plain tuple): per level
        # (drive, recurrence or None, first buffer row, end row), then the read-out. Kernels are
        # applied through ``forward`` directly: a module call costs as much as a small product.
        self._plan = (
            [(drive, recurrent.get(str(i)), start, start + size)
             for i, (drive, start, size) in enumerate(zip(self.drives, self.starts, self.level_sizes))],
            self.readout,
        )
        self.warm_start = bool(warm_start)
        if self.warm_start:
            self.register_buffer("warm_states", torch.zeros(sum(self.level_sizes)))
        self.reset_fixed_point_summary()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_implicit(
        cls,
        model: ImplicitModel,
        formats: str = "measure",
        batch_sizes: Sequence[int] = (1, 64),
        settings: FixedPointSettings | None = None,
    ) -> DeployedImplicitModel:
        """The deployed form of ``model`` (its dtype kept, on the CPU).

        ``formats`` (``measure``, ``threshold``, ``dense``, ``csr``) and ``batch_sizes`` decide each
        kernel's storage (``consparse.models.sparse_linear.choose_format``); ``settings`` replaces the
        model's forward fixed-point settings.
        """
        A, B, C, D = (matrix.detach().cpu() for matrix in (model.A, model.B, model.C, model.D))
        p = model.input_size
        bias_column = p if model.bias else None
        plan = plan_states(A, B, C, bias_column)
        order = torch.tensor(plan.order, dtype=torch.long)
        # Every kernel reads the buffer [u; states in evaluation order]; the bias column is apart.
        buffer_B = torch.cat([B[:, :p], A[:, order]], dim=1)
        buffer_D = torch.cat([D[:, :p], C[:, order]], dim=1)
        bias_B = B[:, p] if model.bias else B.new_zeros(B.shape[0])
        bias_D = D[:, p] if model.bias else D.new_zeros(D.shape[0])
        drives, recurrences = [], []
        start = p
        for states, cyclic in zip(plan.levels, plan.cyclic):
            rows = torch.tensor(states, dtype=torch.long)
            weight = buffer_B[rows].clone()
            own = weight[:, start:start + len(states)].clone()
            weight[:, start:] = 0  # the level's own states (its recurrence) and later ones (none: topological)
            drives.append(SparseLinear.from_weight(weight, bias_B[rows], choose_format(weight, formats, batch_sizes)))
            if cyclic:
                recurrences.append(_recurrence(own, start, choose_format(own, formats, batch_sizes)))
            else:
                recurrences.append(None)
            start += len(states)
        readout = SparseLinear.from_weight(buffer_D, bias_D, choose_format(buffer_D, formats, batch_sizes))
        settings = settings or model.forward_settings
        deployed = cls(
            model.input_shape, model.num_classes, [len(level) for level in plan.levels],
            [_spec(kernel) for kernel in drives],
            [None if kernel is None else [kernel.format, _spec(kernel)[3]] for kernel in recurrences],
            _spec(readout), settings.max_iter, settings.rtol, settings.atol,
            settings.anderson_memory, settings.anderson_damping,
        ).to(A.dtype)
        deployed.structure = plan.describe()
        with torch.no_grad():
            for target, source in zip(deployed.drives, drives):
                target.load_state_dict(source.state_dict())
            for index, source in enumerate(recurrences):
                if source is not None:
                    deployed.recurrences[str(index)].load_state_dict(source.state_dict())
            deployed.readout.load_state_dict(readout.state_dict())
        return deployed.eval()

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        flat = x.reshape(batch, -1)
        if flat.shape[1] != self.input_size:
            raise ValueError(f"the implicit model takes {self.input_size} input features, got {flat.shape[1]}")
        iterations = 0
        converged = True
        levels, readout = self._plan
        # One sample: a vector buffer, so that every product is a matrix-vector one.
        buffer = readout.bias.new_empty((self.width,) if batch == 1 else (self.width, batch))
        buffer[:self.input_size].copy_(flat[0] if batch == 1 else flat.T)
        for drive, recurrence, start, stop in levels:
            states = buffer[start:stop]
            if recurrence is None:
                drive.forward(buffer, states).relu_()
                continue
            used, met = self._fixed_point(recurrence, drive.forward(buffer), buffer, states, start)
            iterations, converged = iterations + used, converged and met
        self._record(iterations, converged, batch)
        logits = readout.forward(buffer)
        return logits[None] if batch == 1 else logits.T

    def _fixed_point(
        self, recurrence: SparseLinear, drive: torch.Tensor, buffer: torch.Tensor, states: torch.Tensor, start: int
    ) -> tuple[int, bool]:
        """Solve ``x = relu(A_ll x + drive)`` into ``states``; returns (iterations, all samples converged)."""
        settings = self.settings
        if settings.anderson_memory > 0:
            columns = drive.reshape(drive.shape[0], -1)

            def step(x: torch.Tensor) -> torch.Tensor:
                states.copy_(x.T.reshape(states.shape))
                return recurrence.forward(buffer, add=drive).relu_().reshape(columns.shape).T

            x0 = self._initial(columns, start).T.contiguous() if self.warm_start else columns.new_zeros(columns.T.shape)
            solution, stats = solve_fixed_point(step, x0, settings)
            states.copy_(solution.T.reshape(states.shape))
            return stats.iterations, stats.converged
        # Two iterates swap roles, so an iteration is one product and one in-place ReLU; the rule is
        # checked every CHECK_EVERY iterations (and at max_iter), since a check costs more than an iteration.
        product = torch.addmv if drive.dim() == 1 else torch.addmm
        matrix = recurrence.matrix()
        previous, current = states, torch.empty_like(drive)
        if self.warm_start:
            previous.copy_(self._initial(drive, start))
            product(drive, matrix, previous, out=current).relu_()
        else:
            current.copy_(drive).relu_()
        iterations, met = 1, False
        while iterations < settings.max_iter:
            previous, current = current, previous
            product(drive, matrix, previous, out=current).relu_()
            iterations += 1
            if iterations % CHECK_EVERY == 0 or iterations == settings.max_iter:
                met = _converged(previous, current, settings)
                if met:
                    break
        if current is not states:
            states.copy_(current)
        return iterations, met

    def _initial(self, drive: torch.Tensor, start: int) -> torch.Tensor:
        """The stored warm states of the level that starts at buffer row ``start``, shaped like ``drive``."""
        offset = start - self.input_size
        initial = self.warm_states[offset:offset + drive.shape[0]]
        return initial[:, None].expand_as(drive) if drive.dim() == 2 else initial

    # ------------------------------------------------------------------ statistics
    def _record(self, iterations: int, converged: bool, samples: int) -> None:
        summary = self._summary  # a plain object: Module.__setattr__ would cost more than a product
        summary.forwards += 1
        summary.samples += samples
        summary.iteration_sum += iterations
        summary.max_iterations = max(summary.max_iterations, iterations)
        summary.converged = summary.converged and converged

    def reset_fixed_point_summary(self) -> None:
        self._summary = SimpleNamespace(forwards=0, samples=0, iteration_sum=0, max_iterations=0, converged=True)

    def fixed_point_summary(self) -> dict[str, Any]:
        """How the forwards since the last reset were evaluated: one pass, or fixed-point iterations.

        Iterations are applications of a cyclic level's map per forward (summed over cyclic
        levels, the batch as a whole: it stops when every sample has met the rule).
        """
        summary = self._summary
        return {
            "evaluation": "fixed_point" if self.recurrences else "one_pass",
            "levels": len(self.level_sizes),
            "cyclic_levels": len(self.recurrences),
            "forwards": summary.forwards,
            "samples": summary.samples,
            "mean_iterations": summary.iteration_sum / summary.forwards if summary.forwards else 0.0,
            "max_iterations": summary.max_iterations,
            "converged": summary.converged,
        }

    # ------------------------------------------------------------------ platform seams
    def kernels(self) -> dict[str, SparseLinear]:
        named = {f"drive{index}": kernel for index, kernel in enumerate(self.drives)}
        named.update({f"recurrence{index}": kernel for index, kernel in self.recurrences.items()})
        named["readout"] = self.readout
        return named

    def sparsifiable_weights(self) -> dict[str, torch.Tensor]:
        """Every product's matrix with its zeros, whatever its storage, and its bias: the entries of
        ``A, B, C, D`` the deployed model keeps (B's and D's bias column included, as ``ImplicitModel``
        counts them). Dense in every format, so that counts and per-layer densities do not depend on
        which kernel the timing at deployment chose."""
        weights: dict[str, torch.Tensor] = {}
        for name, kernel in self.kernels().items():
            weights[f"{name}.weight"] = kernel.dense_weight()
            if kernel.bias is not None:
                weights[f"{name}.bias"] = kernel.bias
        return weights

    def macs_per_sample(self, sparse: bool = True) -> int:
        """Nonzeros (``sparse``) or entries of every product, a recurrence once per mean iteration."""
        def count(kernel: SparseLinear) -> int:
            weights = kernel.stored_weights().detach()
            return int(torch.count_nonzero(weights)) if sparse else kernel.rows * kernel.columns

        summary = self._summary
        iterations = summary.iteration_sum / summary.forwards if summary.forwards else float(self.settings.max_iter)
        recurrent = sum(count(kernel) for kernel in self.recurrences.values())
        once = sum(count(kernel) for kernel in (*self.drives, self.readout))
        return once + round(recurrent * iterations)

    def formats(self) -> dict[str, str]:
        return {name: kernel.format for name, kernel in self.kernels().items()}

    def constructor_kwargs(self) -> dict[str, Any]:
        return {
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "level_sizes": list(self.level_sizes),
            "drives": [_spec(kernel) for kernel in self.drives],
            "recurrences": [
                [self.recurrences[str(i)].format, _spec(self.recurrences[str(i)])[3]] if str(i) in self.recurrences else None
                for i in range(len(self.level_sizes))
            ],
            "readout": _spec(self.readout),
            "max_iter": self.settings.max_iter,
            "rtol": self.settings.rtol,
            "atol": self.settings.atol,
            "anderson_memory": self.settings.anderson_memory,
            "anderson_damping": self.settings.anderson_damping,
            "warm_start": self.warm_start,
        }

    @property
    def export_spec(self) -> dict[str, Any]:
        """The registered architecture (``implicit_deployed``) and the JSON arguments that rebuild this module."""
        return {"_target_": f"{type(self).__module__}.{type(self).__qualname__}", **self.constructor_kwargs()}

    def as_matrices(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """An equivalent ``(A, B, C, D)`` over the kept states in evaluation order (bias as B's and D's last column)."""
        n, p = sum(self.level_sizes), self.input_size
        dtype = self.readout.stored_weights().dtype

        def full(kernel: SparseLinear, rows: int) -> torch.Tensor:
            matrix = torch.zeros(rows, self.width + 1, dtype=dtype)
            matrix[:, kernel.start:kernel.start + kernel.columns] = kernel.dense_weight()
            if kernel.bias is not None:
                matrix[:, -1] = kernel.bias.detach()
            return matrix

        rows = [full(kernel, size) for kernel, size in zip(self.drives, self.level_sizes)]
        for index, kernel in self.recurrences.items():
            rows[int(index)] += full(kernel, kernel.rows)
        states = torch.cat(rows) if rows else torch.zeros(0, self.width + 1, dtype=dtype)
        out = full(self.readout, self.num_classes)
        columns = [*range(p), self.width]
        A, B = states[:, p:self.width], states[:, columns]
        C, D = out[:, p:self.width], out[:, columns]
        assert A.shape == (n, n)
        return A, B, C, D


def _converged(previous: torch.Tensor, current: torch.Tensor, settings: FixedPointSettings) -> bool:
    """Every sample (column) meets ``||current - previous||_inf <= atol + rtol ||current||_inf`` (states >= 0)."""
    if current.dim() == 1:
        step = float(torch.dist(current, previous, math.inf))
        return step <= settings.atol + settings.rtol * float(current.max())
    step = (current - previous).abs_().amax(dim=0)
    return bool((step <= current.amax(dim=0).mul_(settings.rtol).add_(settings.atol)).all())


def _recurrence(own: torch.Tensor, start: int, format: str) -> SparseLinear:
    """A level's recurrence over exactly its own states (untrimmed: it reads the states it writes)."""
    csr = to_csr(own)
    kernel = SparseLinear(own.shape[0], start, own.shape[1], int(csr.values().numel()), format, bias=False).to(own.dtype)
    with torch.no_grad():
        if format == "dense":
            kernel.weight.copy_(own)
        else:
            kernel.values.copy_(csr.values())
            kernel.col_indices.copy_(csr.col_indices())
            kernel.crow_indices.copy_(csr.crow_indices())
    return kernel


def deploy_implicit(model: ImplicitModel, formats: str = "measure") -> DeployedImplicitModel:
    """``DeployedImplicitModel.from_implicit(model, formats)``: what the implicit methods' ``finalize`` returns."""
    return DeployedImplicitModel.from_implicit(model, formats)


def deployment_metrics(deployed: DeployedImplicitModel) -> dict[str, Any]:
    """What ``method_metrics`` reports about a deployed implicit model: its structure, kernel formats
    and how its forwards since deployment were evaluated (one pass, or fixed-point iterations)."""
    return {
        "structure": dict(getattr(deployed, "structure", {})),
        "formats": deployed.formats(),
        "fixed_point": deployed.fixed_point_summary(),
    }
