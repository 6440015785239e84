"""The support graph of an implicit model's ``A``: which states matter, and in which order to evaluate them.

State ``j`` feeds state ``i`` when ``A[i, j] != 0`` (an edge ``j -> i``). The strongly connected
components of that graph, taken in topological order of its condensation, give an exact evaluation
of ``X = relu(A X + B u)``:

* a component that is one state without a self-loop is evaluated once, from states already known:
  ``x_i = relu(A_i x + B_i u)``;
* a component with a cycle needs a fixed point, but only over its own states, with every input
  from earlier components already known.

Components are grouped into levels, the topological generations of the condensation (a level holds
every component whose predecessors all lie in earlier levels), so that each level is one matrix
product over the states before it. Consecutive levels that need a fixed point are merged into one
(one loop over their union rather than one per level). When the support of ``A`` has no cycle (``A`` is then nilpotent:
every network converted by ``consparse.implicit.convert``, and any ``A`` that is strictly triangular
after a permutation of the states) one pass over the levels is the exact fixed point.

Two kinds of state are dropped, since the output cannot tell them apart from their absence:

* zero states: a state whose input drive is a constant ``<= 0`` (no input column, a non-positive
  bias) and whose predecessors are all zero states is 0 at the fixed point (``x = 0`` solves the
  subsystem, and the fixed point is unique);
* unobserved states: a state from which no path leads to a column of ``C`` with a nonzero entry.

The analysis reads only the support (exact zeros), never values, beside the sign of a lone bias.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import torch


@dataclass(frozen=True)
class StatePlan:
    """How the states of an implicit model are evaluated.

    Attributes:
        levels: the kept states of each level, in evaluation order (ascending within a level).
        cyclic: per level, whether it holds a state on a cycle (then it needs a fixed point).
        zero_states: states that are 0 for every input (dropped).
        unobserved_states: nonzero states the output does not read, directly or through other states (dropped).
    """

    levels: list[list[int]]
    cyclic: list[bool]
    zero_states: list[int]
    unobserved_states: list[int]

    @property
    def acyclic(self) -> bool:
        """True when one pass over the levels is exact (no level needs a fixed point)."""
        return not any(self.cyclic)

    @property
    def order(self) -> list[int]:
        """The kept states in evaluation order."""
        return [state for level in self.levels for state in level]

    def describe(self) -> dict[str, int | bool]:
        return {
            "acyclic": self.acyclic,
            "levels": len(self.levels),
            "kept_states": len(self.order),
            "cyclic_states": sum(len(level) for level, cyclic in zip(self.levels, self.cyclic) if cyclic),
            "zero_states": len(self.zero_states),
            "unobserved_states": len(self.unobserved_states),
        }


def support_graph(A: torch.Tensor) -> nx.DiGraph:
    """The directed graph with one node per state and an edge ``j -> i`` for each ``A[i, j] != 0``."""
    graph = nx.DiGraph()
    graph.add_nodes_from(range(A.shape[0]))
    rows, columns = torch.nonzero(A.detach(), as_tuple=True)
    graph.add_edges_from(zip(columns.tolist(), rows.tolist()))
    return graph


def is_acyclic(A: torch.Tensor) -> bool:
    """True when the support of ``A`` is a DAG (no cycle, no self-loop), so that ``A`` is nilpotent."""
    return nx.is_directed_acyclic_graph(support_graph(A))


def _zero_states(graph: nx.DiGraph, constant_drive: list[bool]) -> set[int]:
    """The largest set of states whose drive is a constant <= 0 and whose predecessors all lie in the set."""
    zero = {state for state, constant in enumerate(constant_drive) if constant}
    changed = True
    while changed:
        changed = False
        for state in list(zero):
            if any(predecessor not in zero for predecessor in graph.predecessors(state)):
                zero.discard(state)
                changed = True
    return zero


def plan_states(A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, bias_column: int | None) -> StatePlan:
    """The ``StatePlan`` of an implicit model ``(A, B, C)``; ``bias_column`` is B's constant column, if any."""
    n = A.shape[0]
    graph = support_graph(A)
    inputs = B.detach().clone()
    bias = inputs[:, bias_column].clone() if bias_column is not None else inputs.new_zeros(n)
    if bias_column is not None:
        inputs[:, bias_column] = 0
    constant_drive = ((inputs != 0).sum(dim=1) == 0) & (bias <= 0)
    zero = _zero_states(graph, constant_drive.tolist())
    live = graph.subgraph(set(range(n)) - zero)
    observed = {int(j) for j in torch.nonzero((C.detach() != 0).any(dim=0)).flatten().tolist()} - zero
    kept: set[int] = set(observed)
    for state in observed:
        kept |= nx.ancestors(live, state)
    kept_graph = live.subgraph(kept)
    condensation = nx.condensation(kept_graph)
    levels: list[list[int]] = []
    cyclic: list[bool] = []
    for generation in nx.topological_generations(condensation):
        members = [state for component in generation for state in condensation.nodes[component]["members"]]
        levels.append(sorted(members))
        cyclic.append(any(kept_graph.has_edge(state, state) for state in members)
                      or any(len(condensation.nodes[component]["members"]) > 1 for component in generation))
    levels, cyclic = _merge_cyclic_runs(levels, cyclic)
    unobserved = sorted(set(range(n)) - zero - kept)
    return StatePlan(levels=levels, cyclic=cyclic, zero_states=sorted(zero), unobserved_states=unobserved)


def _merge_cyclic_runs(levels: list[list[int]], cyclic: list[bool]) -> tuple[list[list[int]], list[bool]]:
    """Consecutive cyclic levels as one: a single fixed point over their union (its A block-triangular)
    converges in about the iterations of its slowest part, where one loop per level adds them up."""
    merged: list[list[int]] = []
    flags: list[bool] = []
    for level, needs_fixed_point in zip(levels, cyclic):
        if needs_fixed_point and flags and flags[-1]:
            merged[-1] = sorted(merged[-1] + level)
        else:
            merged.append(list(level))
            flags.append(needs_fixed_point)
    return merged, flags
