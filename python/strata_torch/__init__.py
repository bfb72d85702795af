"""strata inside PyTorch: hierarchical model averaging over torch.distributed process groups.

``HierarchicalModelAverager`` takes the arguments and the call of PyTorch's
``torch.distributed.algorithms.model_averaging.hierarchical_model_averager.HierarchicalModelAverager``
and runs strata's averager (include/strata/averaging/averager.hpp) over the process group:

- the hierarchy is checked whole, with the rules and the words of strata's C++ checks, before any
  process group is touched (``ValueError``);
- each averaging is one fused collective over all parameters, written back in place;
- ``state_dict()`` / ``load_state_dict()`` keep the step counter (and the outer optimizer's state),
  so a restarted job continues the schedule instead of running the warm-up again;
- an outer optimizer (``Nesterov``: DiLoCo's) per level;
- ``post_local_sgd_hook``: the gradient synchronisation of post-local SGD as a DDP communication
  hook, reading the averager's own warm-up and step.

Gloo process groups and CPU tensors of one floating-point type (float32 or float64).
"""

from collections import OrderedDict
from datetime import timedelta

import torch
import torch.distributed as dist

from . import _C
from ._C import CollectiveTimeout, Error, UsageError

__all__ = [
    "CollectiveTimeout",
    "Error",
    "HierarchicalModelAverager",
    "Nesterov",
    "PostLocalSGDState",
    "UsageError",
    "check_hierarchy",
    "post_local_sgd_hook",
]


class Nesterov:
    """The Nesterov outer optimizer on a level's pseudo-gradient d = mean(anchor - p):
    m = momentum * m + d, p = anchor - lr * (d + momentum * m). ``Nesterov(0.7, 0.9)`` is DiLoCo's.
    """

    def __init__(self, lr, momentum=0.0):
        if not lr > 0.0:
            raise ValueError(f"Nesterov: the outer learning rate must be above 0, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Nesterov: the outer momentum must be in [0, 1), got {momentum}")
        self.lr = float(lr)
        self.momentum = float(momentum)

    def __repr__(self):
        return f"Nesterov(lr={self.lr}, momentum={self.momentum})"


def _levels(period_group_size_dict):
    if not period_group_size_dict:
        raise ValueError("Arg ``period_group_size_dict`` must not be empty.")
    levels = []
    for period, group_size in period_group_size_dict.items():
        for what, v in (("period", period), ("group size", group_size)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"RuntimeHierarchy: {what} {v!r} is not an integer")
            if v < 0:
                raise ValueError(f"RuntimeHierarchy: {what} {v} is negative")
        levels.append((period, group_size))
    return levels


def check_hierarchy(period_group_size_dict, world_size):
    """Raises ``ValueError`` (one line, naming the rule) unless ``period_group_size_dict``
    ({period: group size}, smallest group first) is a hierarchy of ``world_size`` ranks."""
    _C.check_hierarchy(_levels(period_group_size_dict), int(world_size))


def _store_of(group):
    """The store the process group rendezvoused through: strata creates its level groups there,
    under keys of its own."""
    if group is None or group is dist.group.WORLD:
        return dist.distributed_c10d._get_default_store()
    entry = dist.distributed_c10d._pg_map.get(group)
    if entry is None or entry[1] is None:
        raise ValueError("strata_torch: the process group was not created by torch.distributed "
                         "(no store is known for it)")
    return entry[1]


def _tensors(params, every=False):
    """The tensors PyTorch's averager would average: nn.Parameters with a gradient (as
    ``get_params_to_average``), every plain tensor, and the parameters of parameter groups with a
    gradient; with ``every``, all of them (an outer optimizer's anchors cover every parameter)."""
    # The tensors themselves, not their .data: the averaging writes them in place and moves
    # their version counters, as an optimizer's in-place step does.
    out = []
    for p in params:
        if isinstance(p, torch.nn.Parameter):
            if every or p.grad is not None:
                out.append(p)
        elif isinstance(p, torch.Tensor):
            out.append(p)
        elif isinstance(p, dict):
            for q in p["params"]:
                if every or q.grad is not None:
                    out.append(q)
        else:
            raise TypeError(f"strata_torch: cannot average a {type(p).__name__}; pass tensors, "
                            "parameters or parameter groups")
    return out


def _outer_spec(outer, periods):
    if outer is None:
        return []
    if isinstance(outer, Nesterov):
        return [None] * (len(periods) - 1) + [(outer.lr, outer.momentum)]
    if isinstance(outer, dict):
        unknown = [k for k in outer if k not in periods]
        if unknown:
            raise ValueError(f"strata_torch: outer names period {unknown[0]}, which is not a "
                             f"period of the hierarchy {list(periods)}")
        spec = []
        for period in periods:
            o = outer.get(period)
            if o is not None and not isinstance(o, Nesterov):
                raise TypeError(f"strata_torch: outer[{period}] is a {type(o).__name__}, not a "
                                "Nesterov")
            spec.append(None if o is None else (o.lr, o.momentum))
        return spec
    raise TypeError(f"strata_torch: outer must be None, a Nesterov or a dict {{period: Nesterov}}, "
                    f"not a {type(outer).__name__}")


class HierarchicalModelAverager:
    """PyTorch's ``HierarchicalModelAverager``, on strata.

    ``period_group_size_dict`` maps each period to the size of the groups that average at that
    period, smallest group first; the last group is the whole ``process_group``. From step
    ``warmup_steps`` on, each ``average_parameters`` call averages over the groups of the largest
    period that divides the step. Construction is collective over ``process_group`` (the default
    group when ``None``): it creates one gloo group per level.
    """

    def __init__(self, period_group_size_dict=None, warmup_steps=0, process_group=None,
                 outer=None, timeout=None, verify_arguments=True):
        levels = _levels(period_group_size_dict)
        # Every rule but the world size first, so that a bad hierarchy is a ValueError even
        # before torch.distributed is set up.
        _C.check_hierarchy(levels, levels[-1][1])
        if warmup_steps < 0:
            raise ValueError("Arg ``warmup_steps`` must be a non-negative number.")
        group = process_group if process_group is not None else dist.group.WORLD
        if group is None:
            raise RuntimeError("strata_torch: torch.distributed is not initialised "
                               "(init_process_group) and no process group was given")
        periods = [p for p, _ in levels]
        spec = _outer_spec(outer, periods)
        if timeout is not None and not isinstance(timeout, timedelta):
            raise TypeError("strata_torch: timeout must be a datetime.timedelta")
        if timeout is not None and timeout.total_seconds() < 1e-3:
            raise ValueError(f"strata_torch: the timeout must be at least a millisecond, got "
                             f"{timeout}")
        seconds = None if timeout is None else timeout.total_seconds()
        self._group = group
        self._sizes = [g for _, g in levels]
        self._outer = outer
        self.period_group_size_dict = OrderedDict(levels)
        self.warmup_steps = int(warmup_steps)
        self._impl = _C.Averager(group, _store_of(process_group), levels, self.warmup_steps, spec,
                                 seconds, bool(verify_arguments))
        self._elements = None

    @property
    def step(self):
        """How many ``average_parameters`` calls have completed. Assignable, as PyTorch's
        averager's attribute: the schedule continues from the step assigned."""
        return self._impl.step

    @step.setter
    def step(self, value):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"strata_torch: the step must be a non-negative integer, got {value!r}")
        _, warmup, hierarchy, phase = self._impl.state()
        self._impl.restore(value, warmup, hierarchy, phase)

    def begin(self, params):
        """Records the current parameters as every outer optimizer's anchor; needed once, before
        the first step, with an outer optimizer (and restarts the outer optimizers when called
        again). Takes every parameter, with a gradient or not: with an outer optimizer,
        ``average_parameters`` averages every parameter too."""
        tensors = _tensors(params, every=True)
        self._impl.begin(tensors)
        self._elements = sum(t.numel() for t in tensors)

    def average_parameters(self, params):
        """Averages ``params`` (tensors, a module's parameters or an optimizer's parameter groups)
        in place if this step averages; returns the size of the groups that averaged, or
        ``None``. As PyTorch's averager, it skips parameters without a gradient, unless an outer
        optimizer is set (then it takes every parameter, as ``begin``). A failed call leaves the
        parameters and the step as they were."""
        level = self._impl.average(_tensors(params, every=self._outer is not None))
        return None if level is None else self._sizes[level]

    def schedule(self, steps, start=0):
        """For each step of ``[start, start + steps)``, the group size that averages there, or
        ``None``."""
        return [None if l is None else self._sizes[l] for l in self._impl.schedule(start, steps)]

    def state_dict(self):
        """What a restart needs: the step, what it counts for, and the outer optimizers' anchors
        and momenta."""
        step, warmup, hierarchy, phase = self._impl.state()
        sd = {"step": step, "warmup_steps": warmup, "hierarchy": hierarchy, "phase": phase}
        if self._outer is not None:
            outer = dict(self._impl.outer_state())
            outer["elements"] = self._elements
            sd["outer"] = outer
        return sd

    def load_state_dict(self, state_dict):
        """Continues from ``state_dict()``'s result; ``ValueError`` when it was saved for another
        hierarchy or warm-up."""
        # All or nothing: the step is put back when the outer state is refused.
        before = self._impl.state()
        self._impl.restore(int(state_dict["step"]), int(state_dict["warmup_steps"]),
                           str(state_dict["hierarchy"]), str(state_dict["phase"]))
        outer = state_dict.get("outer")
        if self._outer is not None and outer is not None and outer.get("anchors"):
            kept = [t for t in outer["anchors"] if t is not None]
            single = bool(kept) and kept[0].dtype == torch.float32
            try:
                self._impl.load_outer_state(list(outer["anchors"]), list(outer["states"]),
                                            int(outer["elements"]), single)
            except BaseException:
                self._impl.restore(*before)
                raise
            self._elements = int(outer["elements"])


class PostLocalSGDState:
    """The state of ``post_local_sgd_hook``: the averager whose warm-up and step it follows, and
    the nodes of ``ranks_per_node`` consecutive ranks inside which gradients are averaged after
    the warm-up. Collective over the averager's process group (it creates the node groups)."""

    def __init__(self, averager, ranks_per_node):
        self.averager = averager
        self.ranks_per_node = int(ranks_per_node)
        averager._impl.make_gradient_sync(self.ranks_per_node)
        self.last_sync = None

    # DDP keeps the hook's state with the model; nothing of it is pickled.
    def __getstate__(self):
        raise TypeError("PostLocalSGDState cannot be pickled")


def post_local_sgd_hook(state, bucket):
    """DDP communication hook of post-local SGD: during the averager's warm-up each gradient
    bucket is averaged over the whole process group (synchronous SGD), afterwards inside each
    node. Register with ``ddp_model.register_comm_hook(PostLocalSGDState(avg, n), hook)``."""
    buffer = bucket.buffer()
    state.last_sync = state.averager._impl.sync_gradients(buffer)
    fut = torch.futures.Future()
    fut.set_result(buffer)
    return fut
