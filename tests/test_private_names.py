"""Canaries for the private (or internal) Pyro and torch names pyrovae relies on.

Each test checks one name: that the installed Pyro/torch still has it, and that it
still behaves as pyrovae's code assumes.  When an upgrade breaks one, the failure
names the thing to fix, instead of a wrong gradient somewhere downstream.

The names, and where pyrovae uses them:

* ``torch._C._get_tracing_state`` -- ``objectives/compiled.py`` (``_trace_elbo``
  refuses to record a score-function step) and ``objectives/importance.py``
  (``_minibatch_scale`` reads the plate scale without checks while recording).
* ``torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model``
  -- ``train.py`` (``_data_parallel``: the auxiliary optimiser's parameters stay
  out of DDP's all-reduce).
* ``pyro.poutine.subsample_messenger._Subsample`` -- ``objectives/graph.py``
  (``_Baselines``: a plate's subsample site is not a latent).
* ``"__baseline_avg_downstream_cost_"``, Pyro's param-store prefix of a
  decaying-average baseline -- ``objectives/graph.py`` (``BASELINE_PREFIX``: the
  ``graph`` objective's ``state_dict``/``load_state_dict`` checkpoint the baselines).
* ``pyro.infer.tracegraph_elbo.TrackNonReparam`` (internal to Pyro's
  ``TraceGraph_ELBO``) -- ``objectives/graph.py`` (``GraphELBO._get_trace``; it
  must read ``has_rsample`` after ``_Baselines`` turned it off for ``pathwise=False``).
* ``pyro.infer.ELBO._get_trace``, overridden -- ``objectives/graph.py``,
  ``objectives/importance.py``, ``objectives/compiled.py`` (``Compiled._get_trace``).
* ``pyro.infer.ELBO._get_traces`` -- ``objectives/importance.py``
  (``ImportanceELBO._draw``) and ``objectives/compiled.py`` (``_trace_elbo``,
  ``_mean_field_elbo``).
* ``pyro.infer.ELBO._vectorized_num_particles`` and its plate's name
  ``"num_particles_vectorized"`` -- ``objectives/importance.py`` (the score term
  reruns the vectorized guide) and ``programs.py`` (``PYRO_PARTICLES``).
* ``pyro.infer.Trace_ELBO._differentiable_loss_particle`` -- ``objectives/compiled.py``
  (``_trace_elbo``, for a guide that is not reparameterized).
* ``pyro.infer.TraceMeanField_ELBO._differentiable_loss_particle`` --
  ``objectives/compiled.py`` (``_mean_field_elbo``, which takes the surrogate's
  value as the loss).
* ``pyro.infer.TraceGraph_ELBO._loss_and_surrogate_loss`` -- ``objectives/graph.py``
  (``GraphELBO.differentiable_loss``); its canary sits beside the objective's other
  conventions, ``tests/test_objective_conventions.py::test_graph_uses_pyros_private_loss_and_surrogate_loss_as_its_step``.
* ``pyro.poutine.messenger.Messenger._process_message``, overridden --
  ``handlers.py`` (``_TensorWeight``, ``plate_scale``), ``programs.py``
  (``_Unscaled``), ``objectives/graph.py`` (``_Baselines``).

Found by searching ``pyrovae/`` for ``._`` attributes of Pyro/torch objects, underscore
imports and Pyro's ``"__..."`` keys; a new private name used in ``pyrovae/`` gets a canary here.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import ELBO, Trace_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO
from pyro.poutine.messenger import Messenger

from pyrovae.objectives.graph import BASELINE_PREFIX
from pyrovae.programs import PYRO_PARTICLES


def require(owner: object, name: str, where: str) -> object:
    """``getattr(owner, name)``, or a failure saying which pyrovae code depends on it."""
    if not hasattr(owner, name):
        pytest.fail(f"{getattr(owner, '__name__', owner)!s}.{name} is gone from the installed version; "
                    f"pyrovae uses it in {where}")
    return getattr(owner, name)


def pair(reparameterized: bool = True):
    """A small model/guide pair: latent "z" and observed "x" in the plate "data"."""

    def model(x, **kwargs):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(()), 1.0))
            pyro.sample("x", dist.Normal(z, 0.5), obs=x)

    def guide(x, **kwargs):
        loc = pyro.param("loc", torch.zeros(()))
        with pyro.plate("data", x.shape[0]):
            fn = dist.Normal(loc, 0.7)
            if not reparameterized:
                fn.has_rsample_(False)
            pyro.sample("z", fn)

    return model, guide


# ------------------------------------------------------------------------- torch
@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated:FutureWarning")  # Compiled records with it too
def test_torch_get_tracing_state_is_none_eagerly_and_set_while_jit_tracing():
    get_state = require(require(torch, "_C", "objectives/compiled.py"), "_get_tracing_state",
                        "objectives/compiled.py and objectives/importance.py")
    seen = []

    def fn(x):
        seen.append(get_state())
        return 2 * x

    fn(torch.ones(2))
    torch.jit.trace(fn, (torch.ones(2),))
    assert seen[0] is None, "torch._C._get_tracing_state() is not None outside tracing"
    assert seen[1] is not None, "torch._C._get_tracing_state() is None inside torch.jit.trace"


@pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                    reason="torch.distributed with gloo is not available in this torch build")
def test_ddp_ignores_the_parameters_named_by_set_params_and_buffers_to_ignore():
    from torch.nn.parallel import DistributedDataParallel

    ignore = require(DistributedDataParallel, "_set_params_and_buffers_to_ignore_for_model",
                     "train.py (_data_parallel)")

    class TwoParts(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.used = torch.nn.Linear(2, 1)
            self.aux = torch.nn.Linear(2, 1)  # trained elsewhere (an auxiliary optimiser): no grad from DDP's loss

        def forward(self, x):
            return self.used(x).sum()

    def two_steps(module):
        # find_unused_parameters=False: a parameter DDP waits for but never gets a grad makes the
        # second step fail, so passing shows the ignored parameters are outside DDP's reducer
        ddp = DistributedDataParallel(module, find_unused_parameters=False)
        for _ in range(2):
            ddp(torch.ones(3, 2)).backward()
        return ddp

    torch.distributed.init_process_group("gloo", store=torch.distributed.HashStore(), rank=0, world_size=1)
    try:
        with pytest.raises(RuntimeError):  # the control: without ignoring, the unused parameters are waited for
            two_steps(TwoParts())
        module = TwoParts()
        ignore(module, ["aux.weight", "aux.bias"])
        ddp = two_steps(module)
        assert set(ddp.parameters_to_ignore) == {"aux.weight", "aux.bias"}
    finally:
        torch.distributed.destroy_process_group()


# ------------------------------------------------------------------- Pyro handlers
def test_subsample_site_of_a_plate_is_an_unobserved_sample_of_type_subsample():
    from pyro.poutine import subsample_messenger

    subsample = require(subsample_messenger, "_Subsample", "objectives/graph.py (_Baselines)")

    def program():
        with pyro.plate("data", 10, subsample_size=3):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    trace = poutine.trace(program).get_trace()
    (site,) = [s for s in trace.nodes.values() if isinstance(s.get("fn"), subsample)]
    # _Baselines skips it by type: as a sample site that is not observed it would pass for a latent
    assert site["type"] == "sample" and not site["is_observed"] and site["name"] == "data"


def test_process_message_override_sees_sample_sites_and_its_changes_reach_the_trace():
    require(Messenger, "_process_message", "handlers.py, programs.py and objectives/graph.py")
    names = []

    class Triple(Messenger):
        def _process_message(self, msg):
            if msg["type"] == "sample":
                names.append(msg["name"])
                msg["scale"] = 3.0 * msg["scale"]
                msg["infer"] = {**msg["infer"], "seen": True}

    model, guide = pair()
    trace = poutine.trace(Triple()(guide)).get_trace(torch.zeros(4))
    assert "z" in names
    assert trace.nodes["z"]["scale"] == 3.0 and trace.nodes["z"]["infer"]["seen"] is True


def test_track_non_reparam_sees_has_rsample_turned_off_by_an_inner_handler():
    from pyro.infer import tracegraph_elbo
    from pyro.ops.provenance import get_provenance

    track = require(tracegraph_elbo, "TrackNonReparam", "objectives/graph.py (GraphELBO._get_trace)")

    class NoRsample(Messenger):  # what _Baselines does for pathwise=False
        def _process_message(self, msg):
            if msg["type"] == "sample" and not msg["is_observed"]:
                msg["fn"].has_rsample_(False)

    def program():
        a = pyro.sample("a", dist.Normal(0.0, 1.0))
        pyro.sample("b", dist.Normal(a, 1.0), obs=torch.tensor(0.5))

    for inner, expected in ((lambda f: f, frozenset()), (NoRsample(), frozenset({"a"}))):
        with track():
            trace = poutine.trace(inner(program)).get_trace()
        trace.compute_log_prob()
        assert get_provenance(trace.nodes["b"]["log_prob"]) == expected, (
            "TrackNonReparam no longer tracks exactly the sites whose has_rsample is False when it looks"
        )


# ------------------------------------------------------------------- Pyro's ELBO internals
def test_get_traces_calls_the_overridden_get_trace_once_per_particle_or_once_vectorized():
    calls = []

    class Recording(Trace_ELBO):
        def _get_trace(self, model, guide, args, kwargs):
            calls.append((args, kwargs))
            return super()._get_trace(model, guide, args, kwargs)

    require(ELBO, "_get_traces", "objectives/importance.py and objectives/compiled.py")
    require(ELBO, "_get_trace", "objectives/graph.py, objectives/importance.py and objectives/compiled.py")
    model, guide = pair()
    x = torch.zeros(4)
    for options, expected_calls in (({"num_particles": 3}, 3),
                                    ({"num_particles": 3, "vectorize_particles": True, "max_plate_nesting": 2}, 1)):
        calls.clear()
        traces = list(Recording(**options)._get_traces(model, guide, (x,), {"kl_weight": 1.0}))
        assert len(traces) == len(calls) == expected_calls, options
        assert all(c == ((x,), {"kl_weight": 1.0}) for c in calls), "_get_trace(model, guide, args, kwargs) changed"


def test_vectorized_num_particles_adds_the_particle_plate_left_of_the_data_plate():
    elbo = Trace_ELBO(num_particles=5, vectorize_particles=True, max_plate_nesting=2)
    wrap = require(elbo, "_vectorized_num_particles", "objectives/importance.py (_score_term's guide rerun)")
    _, guide = pair()
    trace = poutine.trace(wrap(guide)).get_trace(torch.zeros(4))
    frames = {f.name: f for f in trace.nodes["z"]["cond_indep_stack"]}
    assert PYRO_PARTICLES in frames, f"Pyro's particle plate is no longer named {PYRO_PARTICLES!r}: {set(frames)}"
    # the leftmost plate: ELBO counts it in max_plate_nesting (2 given, 3 kept)
    assert (frames[PYRO_PARTICLES].size, frames[PYRO_PARTICLES].dim) == (5, -elbo.max_plate_nesting) == (5, -3)
    assert trace.nodes["z"]["value"].shape == (5, 1, 4)


@pytest.mark.parametrize("reparameterized", [True, False])
def test_trace_elbo_particle_loss_is_the_negative_single_sample_elbo(reparameterized):
    elbo = Trace_ELBO()
    particle = require(elbo, "_differentiable_loss_particle", "objectives/compiled.py (_trace_elbo)")
    model, guide = pair(reparameterized)
    x = torch.tensor([0.3, -1.0, 2.0])
    pyro.clear_param_store()
    model_trace, guide_trace = next(elbo._get_traces(model, guide, (x,), {}))
    loss, surrogate = particle(model_trace, guide_trace)
    expected = -(model_trace.log_prob_sum() - guide_trace.log_prob_sum())
    assert float(loss) == pytest.approx(float(expected.detach()), rel=1e-6)
    assert isinstance(surrogate, torch.Tensor) and surrogate.requires_grad
    surrogate.backward()
    assert pyro.param("loc").grad is not None  # score-function or pathwise, the guide's parameter learns


def test_mean_field_particle_surrogate_has_the_loss_value():
    # compiled.py's _mean_field_elbo takes the surrogate's value as the loss
    elbo = TraceMeanField_ELBO()
    particle = require(elbo, "_differentiable_loss_particle", "objectives/compiled.py (_mean_field_elbo)")
    model, guide = pair()
    pyro.clear_param_store()
    model_trace, guide_trace = next(elbo._get_traces(model, guide, (torch.tensor([0.3, -1.0]),), {}))
    loss, surrogate = particle(model_trace, guide_trace)
    assert float(loss) == pytest.approx(float(surrogate.detach()), rel=1e-6)


# ------------------------------------------------------------------- Pyro's baselines
def test_decaying_average_baseline_lives_in_the_param_store_under_the_prefix_and_is_read_back():
    beta = 0.9

    def guide(x):
        loc = pyro.param("loc", torch.zeros(()))
        with pyro.plate("data", x.shape[0]):
            fn = dist.Normal(loc, 0.7)
            fn.has_rsample_(False)
            pyro.sample("z", fn, infer={"baseline": {"use_decaying_avg_baseline": True, "baseline_beta": beta}})

    model, _ = pair()
    x = torch.tensor([0.3, -1.0, 2.0])
    name = BASELINE_PREFIX + "z"

    def step(start: float | None) -> torch.Tensor:
        pyro.clear_param_store()
        if start is not None:
            TraceGraph_ELBO().loss_and_grads(model, guide, x)  # creates the baseline
            pyro.get_param_store()[name] = torch.full_like(pyro.get_param_store()[name], start)
        pyro.set_rng_seed(0)
        TraceGraph_ELBO().loss_and_grads(model, guide, x)
        keys = set(pyro.get_param_store().keys())
        assert name in keys, f"no param-store key {name!r} after a TraceGraph_ELBO step; keys: {sorted(keys)}"
        return pyro.get_param_store()[name].detach().clone()

    step(None)
    # the graph objective checkpoints and restores this value: Pyro must read it back as beta * old + ...
    new_a, new_b = step(1.0), step(11.0)
    torch.testing.assert_close(new_b - new_a, torch.full_like(new_a, beta * 10.0))
