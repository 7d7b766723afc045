"""The compiled training step (pyrovae.objectives.compiled) computes the same estimator as the eager one.

A compiled step and an eager step run on the same random numbers (same RNG
state), so their losses and gradients must agree to float32 rounding: the
tolerances below are rounding tolerances (a reordered float32 sum over a few
hundred terms), not Monte Carlo ones, because no Monte Carlo noise separates
the two.  A number wrongly baked into a graph (a β that should move) shows up
as a difference many orders of magnitude larger.
"""

from __future__ import annotations

import math
import re
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch import nn

import pyrovae
from pyrovae import MODELS, OBJECTIVES
from pyrovae.handlers import plate_scale
from pyrovae.objectives import make_objective
from pyrovae.objectives.compiled import Compiled, loss_and_surrogate_of
from test_contracts import incompatibility, make_data, small_model

#: every estimator that exposes a single surrogate (graph keeps baselines in Python)
COMPILABLE = {"elbo": {}, "meanfield": {}, "iwae": {"num_particles": 3}, "renyi": {"num_particles": 3},
              "stl": {}, "rws": {"num_particles": 3}, "dreg": {"num_particles": 3}}
#: float32 rounding of reordered sums: relative 1e-5 on the loss, 1e-4 on gradients (plus a floor
#: of 1e-6 times the largest gradient for entries that are rounding noise around zero)
LOSS_RTOL, GRAD_RTOL = 1e-5, 1e-4


def test_every_objective_is_either_compilable_or_says_why():
    assert set(COMPILABLE) <= set(OBJECTIVES)
    for name in OBJECTIVES:
        has = loss_and_surrogate_of(make_objective(name)) is not None
        assert has == (name in COMPILABLE), name


def _step(step_objective, model, guide, x, kwargs, params):
    for p in params:
        p.grad = None
    loss = step_objective.loss_and_grads(model, guide, x, **kwargs)
    return loss, [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]


def _assert_same_step(compiled_step, eager_step):
    (loss_c, grads_c), (loss_e, grads_e) = compiled_step, eager_step
    assert loss_c == pytest.approx(loss_e, rel=LOSS_RTOL)
    floor = 1e-6 * max(float(g.abs().max()) for g in grads_e)
    for gc, ge in zip(grads_c, grads_e):
        torch.testing.assert_close(gc, ge, rtol=GRAD_RTOL, atol=floor)


@pytest.mark.parametrize("objective", sorted(COMPILABLE))
@pytest.mark.parametrize("name", sorted(MODELS))
def test_compiled_step_equals_eager_step(name, objective):
    """Loss and every gradient, at two β values (the second one a graph input), on two batches."""
    reason = incompatibility(MODELS[name], make_objective(objective))
    if reason is None and not MODELS[name].reparameterized:
        reason = f"a compiled step needs reparameterized guide sites; {MODELS[name].__name__}.reparameterized is False"
    if reason is not None:
        pytest.skip(reason)
    pyro.set_rng_seed(0)
    vae = small_model(name, "real_flat")
    x = make_data("real_flat", 64)
    set_num_data = getattr(vae, "set_num_data", None)
    if callable(set_num_data):
        set_num_data(64)
    extra = vae.training_kwargs(0) if hasattr(vae, "training_kwargs") else {}
    scaler = plate_scale("data", 2.0)
    model, guide = scaler(vae.model), scaler(vae.guide)
    params = list(vae.parameters())
    eager = make_objective(objective, **COMPILABLE[objective])
    eager.max_plate_nesting = 1 + int(getattr(eager, "vectorize_particles", False))
    compiled = Compiled(eager, vae, strict=True)
    with pyro.validation_enabled(False):
        for kl_weight, batch in ((1.0, x[:32]), (0.25, x[32:])):
            kwargs = {"kl_weight": kl_weight, **extra}
            state = torch.get_rng_state()
            got = _step(compiled, model, guide, batch, kwargs, params)
            torch.set_rng_state(state)
            want = _step(eager, model, guide, batch, kwargs, params)
            _assert_same_step(got, want)
    assert compiled.compiled and compiled.eager_reason is None


def test_fit_compiles_by_default_and_trains_like_the_eager_step():
    """Same seed, same data: the compiled and eager runs draw the same numbers and take the same steps."""
    x = make_data("real_flat", 96)
    runs = {}
    for jit in (None, False):
        pyro.set_rng_seed(0)
        vae = small_model("vae", "real_flat")
        runs[jit] = pyrovae.fit(vae, x, epochs=2, batch_size=40, device="cpu", progress=False, jit=jit,
                                kl_weight={"name": "linear", "start": 0.0, "end": 1.0, "num_steps": 4})
    assert runs[None].eager_reason is None
    assert runs[False].eager_reason == "jit=False"
    for a, b in zip(runs[None].history, runs[False].history):
        # Adam turns rounding-level gradient differences into differences of at most lr per step
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)


def test_an_annealed_weight_is_a_graph_input_not_a_new_graph_per_step():
    pyro.set_rng_seed(0)
    vae = small_model("vae", "real_flat")
    x = make_data("real_flat", 64)
    compiled = Compiled(make_objective("elbo"), vae, strict=True)
    with pyro.validation_enabled(False):
        for step in range(6):
            compiled.loss_and_grads(vae.model, vae.guide, x[:32], kl_weight=step / 5)
        compiled.loss_and_grads(vae.model, vae.guide, x[:20], kl_weight=1.0)  # a last, smaller batch
    # one graph with β = 0 as a constant, one with β an input, one for the smaller batch
    assert len(compiled._graphs) == 3


def test_a_number_baked_into_the_graph_is_caught_and_the_step_runs_eagerly():
    """An objective that reads β as a Python float (silently) would freeze it: the check sees it."""
    pyro.set_rng_seed(0)
    vae = small_model("vae", "real_flat")
    x = make_data("real_flat", 32)

    class Frozen(pyro.infer.Trace_ELBO):
        def loss_and_surrogate(self, model, guide, *args, **kwargs):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # hides the tracer's warning from Compiled's own check
                weight = float(kwargs.pop("kl_weight"))
            loss = -(0.0 * vae.encoder(args[0])["loc"].sum() + weight * args[0].sum())
            return loss, loss

    compiled = Compiled(Frozen(), vae)
    with pyro.validation_enabled(False):
        compiled.loss_and_grads(vae.model, vae.guide, x, kl_weight=0.5)
        compiled.loss_and_grads(vae.model, vae.guide, x, kl_weight=0.75)
    assert not compiled.compiled
    assert "differs from the eager step" in compiled.eager_reason
    with pytest.raises(ValueError, match="differs from the eager step"):
        strict = Compiled(Frozen(), vae, strict=True)
        with pyro.validation_enabled(False):
            strict.loss_and_grads(vae.model, vae.guide, x, kl_weight=0.5)
            strict.loss_and_grads(vae.model, vae.guide, x, kl_weight=0.75)


_CALLS: list[int] = []


class _Pair(nn.Module):
    """A user's pair: Gaussian latent, Gaussian observation, with a switch for each way to break compiling."""

    def __init__(self, *, branch_on_data=False, free_param=False, discrete=False, counter=False,
                 global_shift=False, batch_norm=False):
        super().__init__()
        self.enc = nn.Linear(4, 4)
        self.dec = nn.Linear(2, 4)
        self.norm = nn.BatchNorm1d(4) if batch_norm else None
        self.branch_on_data, self.free_param, self.discrete = branch_on_data, free_param, discrete
        self.counter, self.global_shift, self.calls = counter, global_shift, 0

    def model(self, x):
        pyro.module("dec", self.dec)
        shift = pyro.param("shift", torch.zeros(4)) if self.free_param else 0.0
        if self.counter:  # an annealing counter kept on the module: a trace would freeze its value
            self.calls += 1
            shift = min(self.calls, 100) / 100
        if self.global_shift:  # state kept outside the module, moved by every call
            _CALLS.append(1)
            shift = len(_CALLS) / 10
        if self.norm is not None:
            pyro.module("norm", self.norm)
        with pyro.plate("data", x.shape[0]):
            if self.discrete:
                z = pyro.sample("z", dist.Bernoulli(0.5 * torch.ones(x.shape[0], 2)).to_event(1))
            else:
                z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))
            loc = self.dec(z) + shift
            if self.branch_on_data and x.mean() > 0:  # Python reading data: a trace would freeze it
                loc = loc + 1.0
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("enc", self.enc)
        with pyro.plate("data", x.shape[0]):
            out = self.enc(x if self.norm is None else self.norm(x))
            if self.discrete:
                pyro.sample("z", dist.Bernoulli(logits=out[:, :2]).to_event(1))
            else:
                pyro.sample("z", dist.Normal(out[:, :2], nn.functional.softplus(out[:, 2:]) + 1e-3).to_event(1))


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({}, None),
        ({"branch_on_data": True}, r"test_compiled\.py:\d+ reads a tensor's value in Python"),
        ({"free_param": True}, "parameter 'shift' is not a parameter of the module"),
        ({"discrete": True}, "guide site 'z' is not reparameterized"),
        ({"counter": True}, "calling the programs changes the module's attribute 'calls'"),
        ({"global_shift": True}, "differs from the eager step"),
        ({"batch_norm": True}, "calling the programs changes the module's buffer 'norm.num_batches_tracked'"),
    ],
    ids=["compiles", "python-branch-on-data", "pyro-param-outside-module", "discrete-latent",
         "attribute-changed-by-a-call", "global-state-changed-by-a-call", "running-statistics"],
)
def test_user_pairs_compile_by_default_or_run_eagerly_saying_why(options, reason):
    pyro.set_rng_seed(0)
    x = torch.randn(40, 4)
    # by default: compiled when every check passes, else eager with the reason (never a frozen value)
    result = pyrovae.fit(_Pair(**options), x, epochs=1, batch_size=20, device="cpu", progress=False)
    assert math.isfinite(result.final["train_loss"])
    if reason is None:
        assert result.eager_reason is None
    else:
        assert re.search(reason, result.eager_reason), result.eager_reason
    pyro.clear_param_store()  # the pair registers fixed names ("enc", "dec"): a new instance needs a fresh store
    if reason is None:
        result = pyrovae.fit(_Pair(**options), x, epochs=1, batch_size=20, device="cpu", progress=False, jit=True)
        assert result.eager_reason is None and math.isfinite(result.final["train_loss"])
    else:
        with pytest.raises(ValueError, match=f"Cannot compile the training step: .*{reason}"):
            pyrovae.fit(_Pair(**options), x, epochs=1, batch_size=20, device="cpu", progress=False, jit=True)


def test_a_compiled_user_pair_trains_like_its_eager_step():
    """Same seed, same data: the default (compiled) fit of a user's class ends where jit=False ends."""
    x = torch.randn(60, 4)
    finals = {}
    for jit in (None, False):
        pyro.clear_param_store()
        pyrovae.seed(0)
        pair = _Pair()
        result = pyrovae.fit(pair, x, epochs=3, batch_size=20, device="cpu", progress=False, jit=jit, seed=0)
        finals[jit] = (result.final["train_loss"], torch.cat([p.detach().flatten() for p in pair.parameters()]))
    assert finals[None][0] == pytest.approx(finals[False][0], rel=1e-4)  # float32 reordering, as in _check
    torch.testing.assert_close(finals[None][1], finals[False][1], rtol=1e-4, atol=1e-5)


def test_plain_function_pairs_run_eagerly_with_a_reason():
    x = torch.randn(40, 4)

    def model(x):
        w = pyro.param("w", torch.zeros(4))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(w, 1.0).to_event(1), obs=x)

    def guide(x):
        pass

    result = pyrovae.fit((model, guide), x, epochs=1, batch_size=20, device="cpu", progress=False)
    assert "torch.nn.Module" in result.eager_reason
    with pytest.raises(ValueError, match="jit=True needs"):
        pyrovae.fit((model, guide), x, epochs=1, device="cpu", progress=False, jit=True)


def test_jit_argument_is_validated():
    vae = small_model("vae", "real_flat")
    with pytest.raises(ValueError, match="Expected jit to be None, True or False"):
        pyrovae.fit(vae, make_data("real_flat", 8), epochs=1, device="cpu", progress=False, jit="yes")


def test_tensor_kl_weight_equals_the_float_weight_including_zero():
    """kl_scale with a 0-dim tensor scales (and masks at 0) exactly as the float path does."""
    pyro.set_rng_seed(0)
    vae = small_model("vae", "real_flat")
    x = make_data("real_flat", 8)
    for weight in (0.0, 0.3, 1.0, 4.0):
        traces = []
        for w in (weight, torch.tensor(weight)):
            torch.manual_seed(1)
            guide_trace = poutine.trace(vae.guide).get_trace(x, kl_weight=w)
            model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x, kl_weight=w)
            traces.append(float((model_trace.log_prob_sum() - guide_trace.log_prob_sum()).detach()))
        assert traces[1] == pytest.approx(traces[0], rel=1e-6, abs=1e-6)
    with pytest.raises(ValueError, match="0-dim tensor"):
        with pyrovae.handlers.kl_scale(torch.ones(2)):
            pass


def test_objectives_that_override_loss_and_grads_keep_their_step():
    """A subclass that clips or logs in loss_and_grads must not be replaced by a recorded surrogate."""
    from pyrovae.objectives import RenyiBound

    class Logged(RenyiBound):
        calls = 0

        def loss_and_grads(self, model, guide, *args, **kwargs):
            Logged.calls += 1
            return super().loss_and_grads(model, guide, *args, **kwargs)

    assert loss_and_surrogate_of(Logged(3, alpha=0.0)) is None
    assert loss_and_surrogate_of(RenyiBound(3, alpha=0.0)) is not None
    pyro.set_rng_seed(0)
    vae = small_model("vae", "real_flat")
    result = pyrovae.fit(vae, make_data("real_flat", 32), objective=Logged(3, alpha=0.0), epochs=1,
                         batch_size=16, device="cpu", progress=False)
    assert Logged.calls == 2 and "Logged has no loss_and_surrogate" in result.eager_reason


def test_mean_field_loss_and_surrogate_are_tensors_when_eager():
    pyro.set_rng_seed(0)
    vae = small_model("vae", "real_flat")
    loss, surrogate = loss_and_surrogate_of(make_objective("meanfield"))(vae.model, vae.guide, make_data("real_flat", 8))
    assert torch.is_tensor(loss) and not loss.requires_grad and surrogate.requires_grad
    assert float(loss) == pytest.approx(float(surrogate.detach()))


def test_keyword_tensors_and_ever_changing_integers_run_eagerly_with_a_reason():
    pyro.set_rng_seed(0)
    vae = small_model("vae", "real_flat")
    x = make_data("real_flat", 16)

    def model(x, labels=None, step=0):
        return vae.model(x)

    def guide(x, labels=None, step=0):
        return vae.guide(x)

    with pyro.validation_enabled(False):
        compiled = Compiled(make_objective("elbo"), vae)
        compiled.loss_and_grads(model, guide, x, labels=torch.zeros(16, dtype=torch.long))
        assert "'labels' is a tensor of shape (16,)" in compiled.eager_reason
        compiled = Compiled(make_objective("elbo"), vae)
        for step in range(12):
            compiled.loss_and_grads(model, guide, x, step=step)
        assert len(compiled._graphs) == 8 and "changes from step to step" in compiled.eager_reason


def test_importance_objectives_accept_a_data_plate_without_a_size():
    """pyro.plate("data", dim=-1) records size -1: the batch comes from the sites, as before compiling existed."""
    def model(x, sized=True):
        with pyro.plate("data", x.shape[0] if sized else None, dim=-1):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0]), 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x, sized=True):
        loc = pyro.param("loc", torch.zeros(x.shape[0]))
        with pyro.plate("data", x.shape[0] if sized else None, dim=-1):
            pyro.sample("z", dist.Normal(loc, 1.0))

    x = torch.randn(6)
    losses = []
    for sized in (True, False):
        torch.manual_seed(3)
        losses.append(make_objective("iwae", num_particles=4).loss(model, guide, x, sized=sized))
    assert losses[1] == pytest.approx(losses[0]) and math.isfinite(losses[0])
