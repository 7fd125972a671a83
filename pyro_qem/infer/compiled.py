"""The compiled step: trace the numeric step once, then replay it without Pyro.

An eager QEM step on a small or medium model is mostly Python: Pyro's handlers, the
distributions' constructors, the contraction's planning, the M-step's bookkeeping, each
around a small tensor op. None of that changes from step to step once the model's
structure and shapes are fixed, so :class:`CompiledStep` records the tensor operations
of one whole step (particle draws -> log factors -> contraction -> the backward pass
that gives the weights -> the moment update) as one graph of ATen ops with
:func:`torch.fx.experimental.proxy_tensor.make_fx`, and later steps run that graph:

- ``"trace"``: the recorded graph as it is (no Python handlers; ~1 s to record);
- ``"inductor"``: the graph compiled by :func:`torch.compile` (fused kernels; the
  compilation takes seconds to a minute, cached on disk by torch across processes);
- ``"cudagraphs"``: as ``"inductor"``, and on a CUDA device the compiled kernels are
  also captured in a CUDA graph (``torch.compile(mode="reduce-overhead")``), so that a
  step is one launch instead of hundreds (a small model's GPU step is launch-bound);
  the step's outputs are copied out of the graph's memory pool. On a CPU it is
  ``"inductor"``.
  Random draws use torch's own generator (``fallback_random``) so that a compiled step
  draws the same numbers as the eager one.

In every mode the recording's broadcast products summed over a dim (a model's
``(z * x).sum(-1)``) become ``einsum`` contractions first
(:func:`~pyro_qem.infer.graph_rewrites.contract_products`: the movielens-shaped step's
K x K x users x films x genres product is one batched matrix product instead, 105 to 32
ms a step replayed); such a step then rounds like a matrix product, not bit for bit
like the eager one (float64: ~1e-15 relative).

The traced step is a pure function ``(data tensors, lr, state) -> (log P_hat, weights,
new state)``: it runs on copies of the guide's state (:meth:`MomentState.substituted`),
and the new state is written back only once ``log P_hat`` is known to be finite; a
non-finite step is rerun eagerly from the same random state, which raises the eager
path's error with the sites it names.

When it applies. The graph is keyed by everything that the recorded Python decided:
the arguments' structure, their non-tensor values and their tensors' shapes, dtypes and
devices, the set of state tensors and whether the iterate average is updated. A key's
first step runs eagerly (set-up, first-step checks and warnings), its second is recorded
(the recording runs the step), and its third checks the recording: the recording and
the eager step run from the same state and random state, with new particles, so that a
value the recording would hold as a constant shows. A mismatch, or a step that Python
control flow on a tensor's value makes untraceable, switches compilation off with a
one-line :class:`CompileFallbackWarning`, and the fit goes on eagerly; a replay that
fails (e.g. an index out of range in new data) or whose data-dependent shortcuts
(:mod:`pyro_qem.handlers.trace_guards`) would take another path is rerun eagerly from
the same random state. Minibatches, distributed fits, gradient-fitted parameters,
contractions in chunks and particle sets are not compiled (the warning says which). A
model must be a function of its arguments: tensors it reads from elsewhere (globals,
closures) are captured by reference at the trace, so changing them in place
is seen, rebinding them is not.
"""

from __future__ import annotations

import re
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, Hashable, List, Optional, Tuple

import pyro
import torch
from torch.utils import _pytree as pytree

from ..estimator import estimate
from ..handlers.trace_guards import guards_hold, recording_guards
from .gradients import backward
from .mstep import moment_update
from .graph_rewrites import contract_products
from .random_inputs import lift_random_draws, with_draws

if TYPE_CHECKING:  # pragma: no cover
    from .inference import Inference

MODES = ("trace", "inductor", "cudagraphs")
# Distinct keys after which recording stops: arguments that change every step.
MAX_KEYS = 20

# Recorded and replayed steps must agree with the eager one to this relative error
# (relative to 1 + |value|), by the model's precision (the dtype of log P_hat): a
# replayed graph runs the very same kernels (exact), a fused one reorders float
# arithmetic. In float32 a log likelihood summed over thousands of terms moves by ~1e-4
# in absolute terms, and the weights by that relative amount; a value held as a constant
# by mistake moves them by order one.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-3}


class CompileFallbackWarning(UserWarning):
    """The compiled step does not apply to this model or call; the fit runs eagerly."""


def check_compile(compile: Any) -> Optional[str]:
    """``compile=`` of :class:`~pyro_qem.infer.Inference`: False/None (eager), True
    (``"inductor"``), ``"trace"``, ``"inductor"`` or ``"cudagraphs"``."""
    if compile is None or compile is False:
        return None
    if compile is True:
        return "inductor"
    if compile in MODES:
        return compile
    raise ValueError(
        f"compile must be False, True, 'trace' (replay the recorded step), 'inductor' "
        f"(torch.compile the recorded step) or 'cudagraphs' (also a CUDA graph on a GPU), "
        f"got {compile!r}."
    )


@dataclass
class _Graph:
    fn: Callable  # the recording (or its compilation): inputs -> outputs
    groups: List[int]
    state_keys: List[str]
    body: Callable  # the same step, eager (to check the recording)


class CompiledStep:
    """Records and replays :class:`~pyro_qem.infer.Inference`'s step (module docstring).

    :param inference: the inference whose steps it compiles.
    :param mode: ``"trace"``, ``"inductor"`` or ``"cudagraphs"``.
    """

    def __init__(self, inference: "Inference", mode: str) -> None:
        self.inference = inference
        self.mode = mode
        self.graphs: Dict[Hashable, _Graph] = {}
        self.unchecked: Dict[Hashable, _Graph] = {}
        self.seen: set = set()
        self.disabled: Optional[str] = None
        #: Seconds spent recording, compiling and checking graphs (beyond the steps
        #: they took).
        self.compile_seconds = 0.0
        #: Steps taken by a recorded graph.
        self.compiled_steps = 0
        #: Replays rerun eagerly because a data-dependent shortcut changed its path.
        self.eager_reruns = 0
        #: Broadcast products that the recordings contract by einsum instead.
        self.contracted_products = 0

    # ------------------------------------------------------------------ policy

    def disable(self, reason: str) -> None:
        """Switch compilation off for this inference, saying why once."""
        if self.disabled is None:
            self.disabled = reason
            warnings.warn(f"Inference(compile={self.mode!r}) runs eagerly: {reason}",
                          CompileFallbackWarning, stacklevel=5)

    def _unsupported(self) -> Optional[str]:
        inference = self.inference
        if inference.process_group is not None:
            return "a distributed fit (process_group) is not compiled."
        if inference.optim is not None:
            return "pyro.params fitted by gradient (optim=) are not compiled."
        if inference._minibatch:
            return "a subsampled plate (minibatch steps draw new indices) is not compiled."
        if inference.update == "regression":
            return ("update='regression' (its fallbacks branch on the weights) is not "
                    "compiled.")
        if inference._chunked:
            return ("a contraction in chunks (to stay within max_memory) is not compiled; "
                    "raise max_memory if the machine has the memory.")
        structure = inference.guide.structure
        gradient = sorted(n for n, s in structure.sites.items()
                          if not s.enumerated and n not in inference.guide.families)
        if gradient:
            return f"sites {gradient} are fitted by gradient, which is not compiled."
        return None

    def step(self, args: tuple, kwargs: dict, lr: float, average: bool
             ) -> Optional[Tuple[float, Dict[int, torch.Tensor]]]:
        """Take the step with a recorded graph: ``(loss, weights)``, or None when this
        step must run eagerly (the caller runs it)."""
        if self.disabled is not None or self.inference._largest_factor is None:
            return None
        reason = self._unsupported()
        if reason is not None:
            self.disable(reason)
            return None
        inference = self.inference
        if inference._choice.regressed(inference.guide, inference.K):
            # update="auto" refits a degenerate group by regression this step, whose
            # fallbacks branch on the weights: an eager step (the recordings match
            # moments, as the step does once the weights have spread).
            return None
        leaves, spec = pytree.tree_flatten((args, kwargs))
        key = self._key(leaves, spec, average)
        if key is None:
            return None
        graph = self.graphs.get(key)
        if graph is not None:
            return self._replay(graph, leaves, lr)
        if key in self.unchecked:
            return self._check(key, self.unchecked[key], leaves, lr)
        if key not in self.seen:  # its first step runs eagerly (set-up, warnings)
            self.seen.add(key)
            if len(self.seen) > MAX_KEYS:
                self.disable(f"the arguments' shapes or non-tensor values (or the guide's "
                             f"state) changed {MAX_KEYS} times, so recordings would not be "
                             "reused; pass data of fixed shapes, with numbers as tensors.")
            return None
        return self._build(key, leaves, spec, lr, average)

    def _key(self, leaves: list, spec, average: bool) -> Optional[Hashable]:
        inference = self.inference
        # Everything the recorded Python read that a user could change between steps.
        parts: List[Hashable] = [spec, average, tuple(sorted(inference.guide.state.tensors)),
                                 inference.K, inference.noise_compensation, inference.objective,
                                 id(inference.model), id(inference.guide.structure)]
        for leaf in leaves:
            if isinstance(leaf, torch.Tensor):
                parts.append(("tensor", tuple(leaf.shape), leaf.dtype, leaf.device, leaf.requires_grad))
                continue
            try:
                hash(leaf)
            except TypeError:
                self.disable(f"a model argument of type {type(leaf).__name__} is not hashable, "
                             "so a recorded step cannot tell whether it changed.")
                return None
            parts.append(("value", type(leaf), leaf))
        return tuple(parts)

    # --------------------------------------------------------------- recording

    def _body(self, spec, is_tensor: List[bool], state_keys: List[str], groups: List[int],
              constants: list, average: bool) -> Callable:
        inference, state = self.inference, self.inference.guide.state

        def body(*inputs):
            tensors = iter(inputs)
            leaves = [next(tensors) if tensor else constant
                      for tensor, constant in zip(is_tensor, constants)]
            args, kwargs = pytree.tree_unflatten(leaves, spec)
            lr = next(tensors)
            copies = {key: value.clone() for key, value in zip(state_keys, tensors)}
            with state.substituted(copies), recording_guards() as guards:
                run = inference._particle_run(args, kwargs)
                result = estimate(run.sites, run.structure, inference.K, links=run.links,
                                  plate_reducers=run.plate_reducers, check=False)
                source_grads, _ = backward(result.log_p_hat, result.sources, run.params,
                                           run.sites, inference.objective)
                weights = result.weights(source_grads)
                moment_update(inference.guide, run.sites, run.subsamples, weights, lr, average,
                              inference.noise_compensation)
            if sorted(weights) != groups:
                raise _Untraceable("the particle groups of a run changed between steps.")
            if sorted(state.tensors) != state_keys:
                raise _Untraceable("the step created new guide state while being recorded.")
            held = guards_hold(guards)
            if held is None:
                held = torch.ones((), dtype=torch.bool, device=result.log_p_hat.device)
            return (result.log_p_hat.detach(), held) + tuple(weights[g].detach() for g in groups) \
                + tuple(copies[k] for k in state_keys)

        return body

    def _inputs(self, leaves: list, lr: float, state_keys: List[str]) -> list:
        state = self.inference.guide.state
        # On the state's device: a CPU input would keep a CUDA step out of a CUDA graph.
        device = state.leaf(state_keys[0]).device if state_keys else None
        lr_tensor = torch.tensor(float(lr), dtype=torch.float64, device=device)
        return [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)] + [lr_tensor] + \
            [state.leaf(key).detach() for key in state_keys]

    def _build(self, key, leaves: list, spec, lr: float, average: bool
               ) -> Optional[Tuple[float, Dict[int, torch.Tensor]]]:
        """Record this step (a real-mode trace runs it: its result is the eager one);
        the recording is checked at the next step with this key."""
        from torch.fx.experimental.proxy_tensor import make_fx

        start = time.perf_counter()
        inference = self.inference
        state_keys = sorted(inference.guide.state.tensors)
        groups = [g.index for g in inference.guide.structure.groups]
        is_tensor = [isinstance(leaf, torch.Tensor) for leaf in leaves]
        constants = [None if t else leaf for t, leaf in zip(is_tensor, leaves)]
        inputs = self._inputs(leaves, lr, state_keys)
        body = self._body(spec, is_tensor, state_keys, groups, constants, average)
        rng = _rng_state(inputs)
        traced_out: list = []

        def recording(*xs):
            out = body(*xs)
            traced_out.append(out)  # the real values: a real-mode trace runs the step
            return out

        try:
            with pyro.validation_enabled(False), torch.enable_grad():
                graph_module = make_fx(recording)(*inputs)
        except _Untraceable as error:
            _set_rng_state(rng)
            self.disable(str(error))
            return None
        except Exception as error:  # a data-dependent model, an op make_fx cannot record
            _set_rng_state(rng)
            self.disable(f"the step could not be recorded ({type(error).__name__}: "
                         f"{_first_line(error)}){_value_read_hint(error)}.")
            return None
        out = [t.detach() for t in traced_out[0]]
        # Broadcast products summed over a dim become BLAS contractions (the check at
        # the next step compares the rewritten graph with the eager step).
        self.contracted_products += contract_products(graph_module)
        fn = graph_module
        if self.mode != "trace":
            # Lifted, the draws keep the eager order whatever the compiler schedules;
            # where some cannot be, the check below catches a reordering.
            draws = lift_random_draws(graph_module)
            fn = _inductor(graph_module, self.mode)
            if draws:
                fn = with_draws(fn, draws)
        graph = _Graph(fn, groups, state_keys, body)
        self.unchecked[key] = graph
        self.compile_seconds += time.perf_counter() - start
        if not torch.isfinite(out[0]):
            _set_rng_state(rng)  # rerun eagerly: it raises with the sites it names
            return None
        return self._finish(graph, out)

    def _check(self, key, graph: _Graph, leaves: list, lr: float
               ) -> Optional[Tuple[float, Dict[int, torch.Tensor]]]:
        """Run the recording and the eager step from the same state and random state
        (new particles, unlike at the trace, so that values the recording holds as
        constants show), and keep the recording if they agree."""
        start = time.perf_counter()
        del self.unchecked[key]
        inputs = self._inputs(leaves, lr, graph.state_keys)
        rng = _rng_state(inputs)
        try:
            with torch.no_grad():
                replayed = list(graph.fn(*inputs))
        except Exception as error:
            replayed = None
            reason = f"the recorded step failed ({type(error).__name__}: {_first_line(error)})."
        _set_rng_state(rng)
        with torch.enable_grad():
            eager = [t.detach() for t in graph.body(*inputs)]
        if replayed is not None and not bool(replayed[1]):
            # This step's data took another path at a guarded decision than the trace's:
            # nothing to compare; check at the next step with this key instead.
            self.unchecked[key] = graph
            self.eager_reruns += 1
        elif replayed is not None:
            mismatch = _mismatch(eager, replayed)
            if mismatch is None:
                self.graphs[key] = graph
            else:
                reason = f"the recorded step differs from the eager one ({mismatch})."
        if key not in self.graphs and key not in self.unchecked:
            self.disable(reason)
        self.compile_seconds += time.perf_counter() - start
        if not torch.isfinite(eager[0]):
            _set_rng_state(rng)
            return None
        return self._finish(graph, eager)

    # ---------------------------------------------------------------- replaying

    def _replay(self, graph: _Graph, leaves: list, lr: float
                ) -> Optional[Tuple[float, Dict[int, torch.Tensor]]]:
        inputs = self._inputs(leaves, lr, graph.state_keys)
        rng = _rng_state(inputs)
        try:
            with torch.no_grad():
                out = list(graph.fn(*inputs))
        except Exception:
            out = None  # e.g. an index out of range: the eager step says what is wrong
        if out is None or not bool(out[1]):
            # Or a numeric shortcut took another path than at the trace.
            _set_rng_state(rng)
            self.eager_reruns += 1
            return None
        if not torch.isfinite(out[0]):
            _set_rng_state(rng)  # the eager rerun raises the error that names the sites
            return None
        self.compiled_steps += 1
        return self._finish(graph, out)

    def _finish(self, graph: _Graph, out: list) -> Tuple[float, Dict[int, torch.Tensor]]:
        state = self.inference.guide.state
        num_groups = len(graph.groups)
        weights = dict(zip(graph.groups, out[2:2 + num_groups]))
        with torch.no_grad():
            for key, value in zip(graph.state_keys, out[2 + num_groups:]):
                state.leaf(key).copy_(value)
        return -out[0].item(), weights


class _Untraceable(Exception):
    pass


def _inductor(graph_module: torch.fx.GraphModule, mode: str) -> Callable:
    import torch._inductor.config as inductor_config

    # The compiled kernels draw from torch's generator like the eager ops, so a compiled
    # fit is the eager fit (same seed, same particles).
    inductor_config.fallback_random = True
    if mode != "cudagraphs":
        return torch.compile(graph_module, dynamic=False)
    compiled = torch.compile(graph_module, dynamic=False, mode="reduce-overhead")

    def run(*inputs):
        # A CUDA graph's outputs live in its memory pool and are overwritten by the
        # next replay; the step keeps its weights beyond that.
        return [t.clone() for t in compiled(*inputs)]

    return run


def _rng_state(inputs: list) -> tuple:
    cuda = any(isinstance(t, torch.Tensor) and t.is_cuda for t in inputs)
    return torch.get_rng_state(), (torch.cuda.get_rng_state() if cuda else None)


def _set_rng_state(rng: tuple) -> None:
    torch.set_rng_state(rng[0])
    if rng[1] is not None:
        torch.cuda.set_rng_state(rng[1])


def _mismatch(eager: List[torch.Tensor], replayed: List[torch.Tensor]) -> Optional[str]:
    if len(eager) != len(replayed):
        return "a different number of outputs"
    tolerance = TOLERANCE.get(eager[0].dtype, 1e-3)
    for i, (a, b) in enumerate(zip(eager, replayed)):
        if a.shape != b.shape:
            return f"output {i} has shape {tuple(b.shape)} instead of {tuple(a.shape)}"
        if a.numel() == 0:
            continue
        a, b = a.double(), b.double()
        both_nan = torch.isnan(a) & torch.isnan(b)
        error = ((a - b).abs() / (1.0 + a.abs())).masked_fill(both_nan, 0.0)
        worst = error.max().item()
        if not worst <= tolerance:
            return f"relative error {worst:.2g} in output {i}"
    return None


def _value_read_hint(error: Exception) -> str:
    """Why a recording failed when Python read a tensor's value mid-step."""
    if "_local_scalar_dense" not in str(error) and "data-dependent" not in str(error):
        return ""
    return ("; the step reads a tensor's value in Python (data-dependent control flow), "
            "as the model's own .item() or if x > 0: would, or a sampler that loops until "
            "it accepts (a VonMises latent's q draws by rejection), so it runs eagerly")


def _first_line(error: Exception) -> str:
    """The error's first sentence (at most 200 characters)."""
    text = str(error).strip().splitlines()
    if not text:
        return ""
    end = re.search(r"[.!?](\s|$)", text[0])
    return (text[0][:end.start() + 1] if end else text[0])[:200]

