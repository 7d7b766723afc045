"""VQ-VAE: the quantiser's exact behaviour, the ELBO of the one-point guide, and the learned code prior."""

from __future__ import annotations

import math

import pytest
import torch

import pyrovae
from pyrovae.models.vq_vae import VQVAE
from pyrovae.quantize import CodebookCategorical, CodePrior, VectorQuantizer


def _quantizer(**options) -> VectorQuantizer:
    torch.manual_seed(0)
    return VectorQuantizer(8, 3, kmeans_init=False, **options)


# ---------------------------------------------------------------- the quantiser
def test_quantisation_returns_the_nearest_code_bit_for_bit():
    vq = _quantizer()
    z_e = torch.randn(4, 3, 2, 5)
    z_q = vq(z_e)
    codebook = vq.codebook.detach()
    for b in range(4):
        for i in range(2):
            for j in range(5):
                distances = [float(((z_e[b, :, i, j] - e) ** 2).sum()) for e in codebook]  # brute force
                k = min(range(8), key=distances.__getitem__)
                assert torch.equal(z_q[b, :, i, j], codebook[k])  # exact: the value is the code itself


def test_straight_through_gradient_reaches_the_encoder_unchanged():
    vq = _quantizer()
    z_e = torch.randn(4, 3, 2, 5, requires_grad=True)
    upstream = torch.randn(4, 3, 2, 5)
    (upstream * vq(z_e)).sum().backward()
    assert torch.equal(z_e.grad, upstream)  # d loss / d z_e = d loss / d z_q, exactly
    assert vq.codebook.grad is None  # the codebook moves only in update()


def test_ema_moves_a_code_to_the_mean_of_its_assigned_vectors():
    vq = _quantizer(decay=0.0, restart_dead=False)
    z_e = torch.randn(16, 3, 1, 4)
    vectors = z_e.movedim(1, -1).reshape(-1, 3)
    codes = vq.nearest(z_e).reshape(-1)
    before = vq.codebook.detach().clone()
    vq.update(z_e)
    for k in range(8):
        assigned = vectors[codes == k]
        expected = assigned.mean(0) if len(assigned) else before[k]  # an unused code stays (decay 0)
        torch.testing.assert_close(vq.codebook[k].detach(), expected, rtol=1e-6, atol=1e-6)


def test_ema_with_decay_is_the_count_weighted_average_of_old_and_new():
    vq = _quantizer(decay=0.9, restart_dead=False)
    z_e = torch.randn(16, 3, 1, 4)
    vectors = z_e.movedim(1, -1).reshape(-1, 3)
    codes = vq.nearest(z_e).reshape(-1)
    before, count = vq.codebook.detach().clone(), vq.count.clone()
    assert torch.equal(count, torch.full((8,), 2.0))  # twice the dead threshold, as after a restart
    vq.update(z_e)
    for k in range(8):  # the running sum is N_k e_k: (0.9 N_k e_k + 0.1 sum) / (0.9 N_k + 0.1 n)
        n = int((codes == k).sum())
        expected = (0.9 * count[k] * before[k] + 0.1 * vectors[codes == k].sum(0)) / (0.9 * count[k] + 0.1 * n)
        torch.testing.assert_close(vq.codebook[k].detach(), expected, rtol=1e-6, atol=1e-6)


def test_a_dead_code_is_restarted_onto_an_encoder_output():
    vq = _quantizer(decay=0.5, dead_threshold=0.5)
    with torch.no_grad():
        vq.codebook[3] = 1e3  # far from every vector: never assigned
    z_e = torch.randn(16, 3, 1, 4)
    vectors = z_e.movedim(1, -1).reshape(-1, 3)
    stats = [vq.update(z_e) for _ in range(2)]  # count of code 3: 1 -> 0.5 -> 0.25 < 0.5: dead at step 2
    assert float(stats[0]["dead_share"]) < float(stats[1]["dead_share"])
    assert ((vectors - vq.codebook[3].detach()).abs().sum(-1) == 0).any()  # now one of the batch's vectors
    assert float(vq.count[3]) >= 0.5  # with a count that is not dead at once


def test_without_restarts_a_dead_code_stays_and_is_counted():
    vq = _quantizer(decay=0.5, dead_threshold=0.5, restart_dead=False)
    with torch.no_grad():
        vq.codebook[3] = 1e3
    z_e = torch.randn(16, 3, 1, 4)
    for _ in range(3):
        stats = vq.update(z_e)
    assert float(vq.codebook[3, 0].detach()) == 1e3
    assert float(stats["dead_share"]) >= 1 / 8


def test_codebook_loss_mode_gives_the_codebook_its_gradient():
    vq = _quantizer(ema=False, restart_dead=False)
    z_e = torch.randn(16, 3, 1, 4)
    loss = vq.update(z_e)["loss"]
    loss.backward()
    codes = vq.nearest(z_e).reshape(-1)
    vectors = z_e.movedim(1, -1).reshape(-1, 3)
    # d/de_k of mean_i ||v_i - e_{k_i}||^2 = 2 (n_k e_k - sum_{k_i = k} v_i) / M
    expected = torch.stack([2 * ((codes == k).sum() * vq.codebook[k] - vectors[codes == k].sum(0)) / len(vectors)
                            for k in range(8)]).detach()
    torch.testing.assert_close(vq.codebook.grad, expected, rtol=1e-5, atol=1e-6)


def test_kmeans_initialisation_puts_codes_on_cluster_centres():
    torch.manual_seed(0)
    centres = torch.tensor([[10.0, 0, 0], [0, 10.0, 0], [0, 0, 10.0]])
    z_e = (centres.repeat(20, 1) + 0.01 * torch.randn(60, 3)).T.reshape(1, 3, 1, 60)
    vq = VectorQuantizer(3, 3, kmeans_init=True, restart_dead=False)
    vq.initialize(z_e.movedim(1, -1).reshape(-1, 3))
    # every centre has a code within 0.05 (noise 0.01 per coordinate, 20 points each), unless the
    # random seeds put two codes on one cluster; seed 0 does not
    nearest = torch.cdist(centres, vq.codebook.detach()).min(-1).values
    assert (nearest < 0.05).all(), nearest


def test_quantizer_rejects_bad_arguments():
    with pytest.raises(ValueError, match="decay"):
        VectorQuantizer(8, 3, decay=1.0)
    with pytest.raises(ValueError, match="num_codes"):
        VectorQuantizer(0, 3)
    with pytest.raises(ValueError, match="dead_threshold"):
        VectorQuantizer(8, 3, dead_threshold=-1)
    with pytest.raises(ValueError, match="commitment_weight"):
        VQVAE(x_shape=(16,), commitment_weight=-0.25)


# ---------------------------------------------------------------- the Pyro program
def test_uniform_codebook_prior_has_log_k_per_position():
    codebook = torch.randn(6, 2)
    prior = CodebookCategorical(codebook, torch.zeros(6), (3, 4))
    z = prior.sample((5,))
    assert z.shape == (5, 2, 3, 4)
    torch.testing.assert_close(prior.log_prob(z), torch.full((5,), -12 * math.log(6)))


def small_vq(**options) -> VQVAE:
    torch.manual_seed(0)
    return VQVAE(x_shape=(1, 8, 8), z_dim=4, num_codes=16, arch="conv", channels=(8, 8), **options)


def test_elbo_log_likelihood_and_bits_per_dim_agree_with_kl_log_k_per_position():
    vq = small_vq()
    x = torch.bernoulli(torch.full((10, 1, 8, 8), 0.3), generator=torch.Generator().manual_seed(0))
    codes = vq.codes(x)
    with torch.no_grad():
        log_px = vq.likelihood(vq.quantizer.embed(codes)).log_prob(x)
    expected = log_px - 4 * math.log(16)  # 2x2 grid, KL = log K per position
    # the guide is one point: every objective's estimate is this number, with no Monte Carlo error
    assert pyrovae.evaluate_elbo(vq, x) == pytest.approx(float(expected.mean()), rel=1e-5)
    result = pyrovae.log_likelihood(vq, x, num_samples=4)
    torch.testing.assert_close(result.log_px.float(), expected, rtol=1e-5, atol=1e-4)
    assert vq.bits_per_dim(x) == pytest.approx(-float(expected.mean()) / (64 * math.log(2)), rel=1e-5)


def test_fit_logs_codebook_perplexity_and_dead_share_and_moves_the_codebook():
    vq = small_vq()
    x = torch.bernoulli(torch.full((64, 1, 8, 8), 0.3), generator=torch.Generator().manual_seed(0))
    before = vq.quantizer.codebook.detach().clone()
    result = pyrovae.fit(vq, x, epochs=2, batch_size=32, device="cpu", progress=False)
    for row in result.history:
        assert 1.0 <= row["aux_perplexity"] <= 16.0
        assert 0.0 <= row["aux_dead_share"] <= 1.0
    assert not torch.equal(before, vq.quantizer.codebook.detach())
    assert bool(vq.quantizer.initialized)  # k-means on the first batch


@pytest.mark.parametrize("objective", ["rws", "dreg", "iwae"])
def test_the_commitment_term_is_trained_by_the_elbo_only_and_refused_elsewhere_naming_the_site(objective):
    # the commitment loss is a guide pyro.factor, no density: RWS's wake-phi step would read it as log q
    # and *raise* it (its encoder gradient was the ELBO's reversed), DReG dropped part of its gradient
    vq = small_vq()
    x = torch.bernoulli(torch.full((32, 1, 8, 8), 0.3), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"site 'commitment' as a density"):
        pyrovae.fit(vq, x, objective=objective, epochs=1, batch_size=16, device="cpu", progress=False)
    result = pyrovae.fit(vq, x, objective="meanfield", epochs=1, batch_size=16, device="cpu", progress=False)
    assert math.isfinite(result.final["train_loss"])


# ---------------------------------------------------------------- the learned prior
def diagonal_codes(num: int, seed: int) -> torch.Tensor:
    """Grids k_ij = (i + j + offset) mod 8, offset uniform: 3 bits per grid, 3/16 bits per position."""
    offset = torch.randint(8, (num, 1, 1), generator=torch.Generator().manual_seed(seed))
    i, j = torch.arange(4)[:, None], torch.arange(4)[None, :]
    return (i + j + offset) % 8


def test_learned_prior_beats_the_uniform_prior_on_held_out_codes():
    torch.manual_seed(0)
    prior = CodePrior(8, (4, 4), hidden_channels=16, num_layers=2, kernel_size=3)
    train, held_out = diagonal_codes(512, 0), diagonal_codes(256, 1)
    pyrovae.fit(prior, train.float(), epochs=15, batch_size=64, lr=1e-2, device="cpu", progress=False)
    bits = -float(prior.log_prob(held_out).mean().detach()) / (16 * math.log(2))
    # uniform: exactly 3 bits per position; the best possible is 3/16.  A held-out mean over 256 grids
    # whose per-grid values are bounded by the model's worst case; 1.5 bits is a gap of many standard errors
    assert bits < 1.5, bits
    samples = prior.sample(4)
    assert samples.shape == (4, 4, 4) and samples.min() >= 0 and samples.max() < 8


def test_conditional_prior_uses_the_coarser_grid():
    torch.manual_seed(0)
    prior = CodePrior(4, (4, 4), cond_codes=4, hidden_channels=16, num_layers=2, kernel_size=3)
    top = torch.randint(4, (64, 2, 2))
    bottom = top.repeat_interleave(2, 1).repeat_interleave(2, 2)  # bottom = the upsampled top: 0 bits given it
    pyrovae.fit(prior, (bottom.float(), top.float()), epochs=20, batch_size=32, lr=1e-2, device="cpu",
                progress=False)
    bits = -float(prior.log_prob(bottom, top).mean().detach()) / (16 * math.log(2))
    assert bits < 1.0, bits  # uniform: 2 bits per position, the best: 0
    with pytest.raises(ValueError, match="cond"):
        prior.log_prob(bottom)


# ---------------------------------------------------------------- VQ-VAE-2
def small_vq2(**options):
    from pyrovae.models.vq_vae2 import VQVAE2

    torch.manual_seed(0)
    return VQVAE2(x_shape=(1, 8, 8), z_dim=4, num_codes=16, arch="conv", channels=(8, 8), **options)


def test_vq_vae2_elbo_pays_log_k_at_every_position_of_both_grids():
    vq = small_vq2()
    assert vq.grid_bottom == (2, 2) and vq.grid_top == (1, 1)
    x = torch.bernoulli(torch.full((10, 1, 8, 8), 0.3), generator=torch.Generator().manual_seed(0))
    top, bottom = vq.codes(x)
    with torch.no_grad():
        log_px = vq.likelihood(vq.quantizer_top.embed(top), vq.quantizer_bottom.embed(bottom)).log_prob(x)
    expected = log_px - (1 + 4) * math.log(16)
    assert pyrovae.evaluate_elbo(vq, x) == pytest.approx(float(expected.mean()), rel=1e-5)
    assert vq.bits_per_dim(x) == pytest.approx(-float(expected.mean()) / (64 * math.log(2)), rel=1e-5)
    torch.testing.assert_close(vq.reconstruct(x), vq.decode(top, bottom))


def test_vq_vae2_bottom_codes_are_conditioned_on_the_top_codes():
    vq = small_vq2()
    x = torch.bernoulli(torch.full((6, 1, 8, 8), 0.3), generator=torch.Generator().manual_seed(0))
    h, z_e_top = vq.encoder(x)
    top = vq.quantizer_top.nearest(z_e_top)
    z_e_bottom = vq.encoder.bottom_input(h, vq.quantizer_top.embed(top))
    other = vq.encoder.bottom_input(h, vq.quantizer_top.embed((top + 1) % 16))
    assert not torch.allclose(z_e_bottom, other)  # another top code, another bottom input
    # and the straight-through gradient of the bottom level reaches the top encoder
    z_q_bottom = vq._encode(x)[3]
    z_q_bottom.sum().backward()
    assert vq.encoder.top[0].weight.grad.abs().sum() > 0


def test_vq_vae2_fit_logs_both_levels_and_samples_top_then_bottom():
    vq = small_vq2()
    x = torch.bernoulli(torch.full((64, 1, 8, 8), 0.3), generator=torch.Generator().manual_seed(0))
    result = pyrovae.fit(vq, x, epochs=1, batch_size=32, device="cpu", progress=False)
    for key in ("aux_perplexity_top", "aux_perplexity_bottom", "aux_dead_share_top", "aux_dead_share_bottom"):
        assert math.isfinite(result.final[key]), key
    top_prior, bottom_prior = vq.prior_programs(hidden_channels=8, num_layers=2, kernel_size=3)
    top, bottom = vq.codes(x)
    pyrovae.fit(top_prior, top.float(), epochs=1, batch_size=32, device="cpu", progress=False)
    pyrovae.fit(bottom_prior, (bottom.float(), top.float()), epochs=1, batch_size=32, device="cpu", progress=False)
    images = vq.sample(5, (top_prior, bottom_prior))
    assert images.shape == (5, 1, 8, 8) and images.min() >= 0 and images.max() <= 1
    # the learned priors' bound: the uniform one minus the priors' gain in nats, exactly
    with torch.no_grad():
        gain = (top_prior.log_prob(top) + bottom_prior.log_prob(bottom, top) + 5 * math.log(16)).mean()
    expected = vq.bits_per_dim(x) - float(gain) / (64 * math.log(2))
    assert vq.bits_per_dim(x, (top_prior, bottom_prior)) == pytest.approx(expected, rel=1e-5)


def test_code_prior_rejects_codes_of_the_wrong_form():
    prior = CodePrior(8, (4, 4), hidden_channels=8, num_layers=1, kernel_size=3)
    with pytest.raises(ValueError, match=r"codes of shape \(B, 4, 4\)"):
        prior.log_prob(torch.zeros(2, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"codes in \[0, 8\)"):
        prior.log_prob(torch.full((2, 4, 4), 8))
    with pytest.raises(ValueError, match="whole numbers"):
        prior.log_prob(torch.full((2, 4, 4), 0.5))


RANK_SCRIPT = """
import os, sys, torch
torch.distributed.init_process_group("gloo")
from pyrovae.quantize import VectorQuantizer
rank = torch.distributed.get_rank()
torch.manual_seed(0)
vq = VectorQuantizer(8, 3, kmeans_init=False, restart_dead=False, decay=0.9)
z_e = torch.load(sys.argv[1])[rank::2]  # each rank its shard of the batch
vq.update(z_e)
torch.save(vq.codebook.detach(), sys.argv[2].format(rank=rank))
torch.distributed.destroy_process_group()
"""


@pytest.mark.slow
def test_ema_under_torchrun_keeps_one_codebook_equal_to_the_whole_batchs(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    torch.manual_seed(1)
    z_e = torch.randn(16, 3, 1, 4)
    torch.save(z_e, tmp_path / "z.pt")
    (tmp_path / "rank.py").write_text(RANK_SCRIPT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, str(tmp_path / "rank.py"), str(tmp_path / "z.pt"),
                               str(tmp_path / "codebook{rank}.pt")],
                              env={**os.environ, "RANK": str(r), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                                   "MASTER_PORT": str(port), "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"})
             for r in range(2)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    torch.manual_seed(0)
    whole = VectorQuantizer(8, 3, kmeans_init=False, restart_dead=False, decay=0.9)
    whole.update(z_e)
    for r in range(2):
        torch.testing.assert_close(torch.load(tmp_path / f"codebook{r}.pt"), whole.codebook.detach())
