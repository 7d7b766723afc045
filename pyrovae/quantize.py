r"""Vector quantisation for VQ-VAEs: the codebook, its updates, and the code-grid networks.

Torch (and Pyro distributions) only.  The pieces:

* :class:`VectorQuantizer` -- a codebook of ``num_codes`` vectors; nearest-code
  assignment, the straight-through value, and the codebook's state updates
  outside the ELBO's gradient step: exponential moving averages (EMA) of the
  assigned vectors (van den Oord et al. 2017, appendix A.1) or a gradient step on
  the codebook loss :math:`\lVert \mathrm{sg}[z_e] - e\rVert^2`, k-means
  initialisation on the first batch, and restarts of dead codes (codes whose
  moving-average use fell below a threshold are moved onto random encoder
  outputs; Dhariwal et al. 2020, Jukebox, appendix).
* :class:`CodebookCategorical` -- a categorical choice of one codebook vector
  per grid position: the VQ-VAE's prior (uniform) as a Pyro distribution whose
  values are the vectors themselves.
* :class:`GridEncoder`, :class:`GridDecoder` -- networks between data and a grid
  of code vectors (stride-2 convolutions for images, an MLP for vectors).
* :class:`CodePrior` -- an autoregressive prior over a grid of codes
  (a :class:`~pyrovae.pixelcnn.PixelCNN` over one-hot codes, optionally
  conditioned on a coarser grid), written as a Pyro program trainable by ``fit``.

Why not ``vector-quantize-pytorch``: its ``VectorQuantize`` updates the EMA
statistics and restarts codes inside ``forward`` whenever the module is in
training mode, and returns its own losses.  Under Pyro the guide runs more than
once per step (particles, the trainer's structure traces, evaluation), so those
state updates would happen a number of times that depends on the objective;
here the update is one explicit call, made once per step by ``fit``'s
auxiliary hook, and the commitment term is a ``pyro.factor``.  The quantiser
is also about a page of code, against a dependency tree (einops, einx).

References:
  1. A. van den Oord, O. Vinyals, K. Kavukcuoglu. Neural Discrete Representation
     Learning. arXiv:1711.00937.
  2. P. Dhariwal, H. Jun, C. Payne, J. W. Kim, A. Radford, I. Sutskever.
     Jukebox: A Generative Model for Music. arXiv:2005.00341.
  3. A. Razavi, A. van den Oord, O. Vinyals. Generating Diverse High-Fidelity
     Images with VQ-VAE-2. arXiv:1906.00446.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any, ClassVar

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import Tensor, nn
from torch.nn.functional import one_hot

from pyrovae.nets import check_widths
from pyrovae.pixelcnn import PixelCNN

__all__ = [
    "CodePrior",
    "CodebookCategorical",
    "GridDecoder",
    "GridEncoder",
    "VectorQuantizer",
    "check_num_positions",
    "codebook_config",
    "grid_options",
    "grid_shape",
]


def _check_int(value: object, name: str, minimum: int = 1) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"Expected {name} to be an int >= {minimum}, got {value!r}")
    return int(value)


def _synchronised() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() \
        and torch.distributed.get_world_size() > 1


def _all_reduce(t: Tensor) -> Tensor:
    """The sum of ``t`` over the ranks under torchrun (in place), else ``t``."""
    if _synchronised():
        torch.distributed.all_reduce(t)
    return t


def _broadcast(t: Tensor) -> None:
    if _synchronised():
        torch.distributed.broadcast(t, src=0)


def _vectors_last(z: Tensor) -> Tensor:
    """(B, D, *grid) -> (B, *grid, D)."""
    return z.movedim(1, -1)


def _vectors_first(z: Tensor) -> Tensor:
    """(B, *grid, D) -> (B, D, *grid)."""
    return z.movedim(-1, 1)


class VectorQuantizer(nn.Module):
    r"""A codebook :math:`e_1, \dots, e_K \in \mathbb R^D` with nearest-code assignment.

    :meth:`forward` maps encoder outputs :math:`z_e` of shape ``(B, D, *grid)`` to
    the straight-through value :math:`e_{k} + (z_e - \mathrm{sg}[z_e])`, whose
    value is exactly the nearest code :math:`e_k`,
    :math:`k = \arg\min_j \lVert z_e - e_j\rVert`, and whose gradient reaches
    :math:`z_e` unchanged.  The codebook never gets gradient there: it moves only
    in :meth:`update`, once per training step:

    * ``ema=True``: :math:`N_k \leftarrow \gamma N_k + (1-\gamma) n_k`,
      :math:`m_k \leftarrow \gamma m_k + (1-\gamma) \sum_{i: k_i = k} z_{e,i}`,
      :math:`e_k = m_k / N_k` (so :math:`m_k = N_k e_k`; :math:`N_k` starts at twice ``dead_threshold``);
    * ``ema=False``: the codebook loss
      :math:`\sum_i \lVert \mathrm{sg}[z_{e,i}] - e_{k_i}\rVert^2`, returned for
      an optimiser to minimise (``fit``'s auxiliary Adam).

    Both keep :math:`N_k` (the moving-average count of vectors assigned per
    step); a code with :math:`N_k` below ``dead_threshold`` is dead and, if
    ``restart_dead``, is moved onto a random vector of the batch.  The first
    :meth:`update` initialises the codebook by k-means on that batch when
    ``kmeans_init``.

    Under ``torchrun`` (an initialised process group) the counts and sums of
    every step are summed over the ranks before the EMA, so all ranks keep one
    codebook (the counts, and ``dead_threshold``, are then per global batch);
    k-means and restarts are rank 0's, broadcast.

    :param num_codes: K.
    :param code_dim: D.
    :param ema: EMA codebook updates (True) or the codebook loss (False).
    :param decay: γ, the moving averages' decay, in [0, 1).
    :param dead_threshold: a code is dead when its moving-average count per step is below this (>= 0).
    :param restart_dead: move dead codes onto random encoder outputs.
    :param kmeans_init: initialise the codebook by k-means on the first batch.
    :param kmeans_iters: Lloyd iterations of that k-means.

    Example::

        vq = VectorQuantizer(512, 64)
        z_q = vq(z_e)                 # (B, 64, 7, 7), straight-through
        stats = vq.update(z_e)        # once per training step
    """

    def __init__(self, num_codes: int, code_dim: int, *, ema: bool = True, decay: float = 0.99,
                 dead_threshold: float = 1.0, restart_dead: bool = True, kmeans_init: bool = True,
                 kmeans_iters: int = 10) -> None:
        super().__init__()
        self.num_codes = _check_int(num_codes, "num_codes")
        self.code_dim = _check_int(code_dim, "code_dim")
        if not isinstance(decay, numbers.Real) or isinstance(decay, bool) or not 0 <= decay < 1:
            raise ValueError(f"Expected decay in [0, 1), got {decay!r}")
        if (not isinstance(dead_threshold, numbers.Real) or isinstance(dead_threshold, bool)
                or not math.isfinite(dead_threshold) or dead_threshold < 0):
            raise ValueError(f"Expected dead_threshold to be a finite number >= 0, got {dead_threshold!r}")
        self.ema, self.decay = bool(ema), float(decay)
        self.dead_threshold, self.restart_dead = float(dead_threshold), bool(restart_dead)
        self.kmeans_init, self.kmeans_iters = bool(kmeans_init), _check_int(kmeans_iters, "kmeans_iters", 0)
        # a Parameter in both modes: the auxiliary optimiser owns it (with EMA its gradient is zero)
        self.codebook = nn.Parameter(torch.randn(num_codes, code_dim))
        # N_k starts where a restarted code starts (see _restart).  The running sum m_k = N_k e_k
        # is not stored: a codebook set by hand (or loaded) is then never stale
        self.register_buffer("count", torch.full((num_codes,), 2 * self.dead_threshold))
        self.register_buffer("initialized", torch.tensor(not kmeans_init))

    # ------------------------------------------------------------ assignment
    def nearest(self, z_e: Tensor) -> Tensor:
        """Index of the nearest code of each vector; ``z_e`` (B, D, *grid) -> (B, *grid) long."""
        flat = _vectors_last(z_e).reshape(-1, self.code_dim)
        return torch.cdist(flat, self.codebook.detach()).argmin(-1).reshape(z_e.shape[:1] + z_e.shape[2:])

    def embed(self, codes: Tensor) -> Tensor:
        """Code vectors of an index grid: (B, *grid) long -> (B, D, *grid), no gradient into the codebook."""
        return _vectors_first(self.codebook.detach()[codes])

    def forward(self, z_e: Tensor) -> Tensor:
        """The straight-through quantisation of ``z_e`` (B, D, *grid): the nearest codes' value, z_e's gradient."""
        e = self.embed(self.nearest(z_e))
        return e + (z_e - z_e.detach())  # adds exactly zero: the value is e bit for bit

    # ------------------------------------------------------------ state updates
    @torch.no_grad()
    def initialize(self, vectors: Tensor) -> None:
        """k-means (Lloyd) on ``vectors`` (M, D); the codebook starts at the centroids."""
        g = torch.randint(len(vectors), (self.num_codes,), device=vectors.device)
        centroids = vectors[g].clone()
        for _ in range(self.kmeans_iters):
            assign = torch.cdist(vectors, centroids).argmin(-1)
            counts = torch.bincount(assign, minlength=self.num_codes).to(vectors.dtype)
            sums = torch.zeros_like(centroids).index_add_(0, assign, vectors)
            used = counts > 0
            centroids[used] = sums[used] / counts[used, None]  # an empty cluster keeps its seed
        self.codebook.copy_(centroids)
        # new codes, as after a restart: a code the (still random) encoder soon leaves is dead
        # after about log(2) / (1 - decay) steps, not after the decay of a large first count
        self.count.fill_(2 * self.dead_threshold)
        self.initialized.fill_(True)
        _broadcast(self.codebook.data)  # under torchrun every rank starts from rank 0's k-means

    def update(self, z_e: Tensor) -> dict[str, Tensor]:
        """One step of the codebook's own update on a batch of encoder outputs ``z_e`` (B, D, *grid).

        Returns ``{"loss", "perplexity", "dead_share"}``: the codebook loss to
        minimise (zero, with a zero gradient, under EMA), the perplexity
        :math:`\\exp H(n / \\sum n)` of this batch's code use, and the share of
        codes that were dead at this step (before any restart).
        """
        vectors = _vectors_last(z_e.detach()).reshape(-1, self.code_dim)
        if not bool(self.initialized):
            self.initialize(vectors)
        with torch.no_grad():
            codes = torch.cdist(vectors, self.codebook).argmin(-1)
            n = _all_reduce(torch.bincount(codes, minlength=self.num_codes).to(vectors.dtype))
            p = n / n.sum()
            perplexity = torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())
            old_sum = self.count[:, None] * self.codebook  # m_k = N_k e_k
            self.count.mul_(self.decay).add_(n, alpha=1 - self.decay)
            if self.ema:
                sums = _all_reduce(torch.zeros_like(old_sum).index_add_(0, codes, vectors))
                new_sum = self.decay * old_sum + (1 - self.decay) * sums
                # a code whose count reached exactly zero (decay 0) keeps its place
                mean = new_sum / self.count.clamp_min(1e-12)[:, None]
                self.codebook.copy_(torch.where(self.count[:, None] > 0, mean, self.codebook))
            dead = self.count < self.dead_threshold
            dead_share = dead.to(vectors.dtype).mean()
            if self.restart_dead and bool(dead.any()):  # the same codes on every rank (synchronised counts)
                self._restart(dead, vectors)
                _broadcast(self.codebook.data)  # rank 0's new places
        if self.ema:
            loss = 0.0 * self.codebook.sum()  # the EMA moved it; the optimiser's step is a no-op
        else:
            loss = ((vectors[:, None, :] - self.codebook[None]) ** 2).sum(-1).gather(1, codes[:, None]).mean()
        return {"loss": loss, "perplexity": perplexity, "dead_share": dead_share}

    def _restart(self, dead: Tensor, vectors: Tensor) -> None:
        # each dead code moves onto a random vector of the batch with twice the threshold's count:
        # unless it wins vectors it is dead again after log(2) / (1 - decay) steps (69 at decay 0.99)
        index = torch.randint(len(vectors), (int(dead.sum()),), device=vectors.device)
        self.codebook[dead] = vectors[index]
        self.count[dead] = 2 * self.dead_threshold


class CodebookCategorical(dist.TorchDistribution):
    r"""One codebook vector per grid position, chosen by a categorical: the VQ-VAE prior.

    Values have shape ``(D, *grid)`` (event shape): at each position the vector
    :math:`e_k` with probability :math:`\mathrm{softmax}(\text{logits})_k`.
    ``log_prob`` reads the index of the nearest code of each position, so it
    is exact on values made of code vectors (the only values in the support).

    :param codebook: (K, D) code vectors.
    :param logits: (K,) unnormalised log-probabilities, the same at every position.
    :param grid: the grid's shape, e.g. ``(7, 7)``.
    """

    arg_constraints: ClassVar[dict[str, constraints.Constraint]] = {"logits": constraints.real_vector}
    has_rsample = False

    def __init__(self, codebook: Tensor, logits: Tensor, grid: Sequence[int]) -> None:
        self.codebook, self.logits, self.grid = codebook, logits, tuple(grid)
        super().__init__(torch.Size(), torch.Size((codebook.shape[1], *self.grid)), validate_args=False)

    @property
    def support(self) -> constraints.Constraint:
        return constraints.independent(constraints.real, len(self.event_shape))

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        shape = torch.Size(sample_shape) + self.grid
        codes = dist.Categorical(logits=self.logits).sample(shape)
        return self.codebook[codes].movedim(-1, len(sample_shape))

    def log_prob(self, value: Tensor) -> Tensor:
        d = len(self.grid) + 1
        vectors = value.movedim(-d, -1)
        codes = torch.cdist(vectors.reshape(-1, vectors.shape[-1]), self.codebook).argmin(-1)
        logp = torch.log_softmax(self.logits, -1)[codes].reshape(vectors.shape[:-1])
        return logp.sum(tuple(range(-len(self.grid), 0)))


def grid_shape(x_shape: Sequence[int], num_layers: int, num_positions: int) -> tuple[int, int]:
    """The code grid of a :class:`GridEncoder`: ``num_layers`` halvings of an image, or ``(1, num_positions)``."""
    if len(x_shape) == 3 and num_layers > 0:
        h, w = x_shape[1:]
        for _ in range(num_layers):
            h, w = (h + 1) // 2, (w + 1) // 2
        return (h, w)
    return (1, num_positions)


def check_num_positions(num_positions: object) -> int:
    """``num_positions`` (the code grid's size for vector data), or a one-line ``ValueError``."""
    if not isinstance(num_positions, int) or isinstance(num_positions, bool) or num_positions < 1:
        raise ValueError(f"Expected num_positions to be an int >= 1, got {num_positions!r}")
    return num_positions


def grid_options(arch: str, x_shape: Sequence[int], *, hidden: Sequence[int], channels: Sequence[int],
                 num_positions: int) -> dict[str, Any]:
    """The keyword arguments of :class:`GridEncoder` and :class:`GridDecoder` but the activation, checked.

    ``conv`` comes from ``arch`` (``"mlp"``, ``"conv"``, or ``"auto"``: conv for
    images of side >= 16) and ``x_shape``; ``hidden`` and ``channels`` become tuples.
    """
    hidden = check_widths(hidden, "hidden", example="(400,)")
    channels = check_widths(channels, "channels", example="(32, 64)", allow_empty=False)
    if arch not in ("auto", "mlp", "conv"):
        raise ValueError(f"Expected arch in ('auto', 'mlp', 'conv'), got {arch!r}")
    if arch == "conv" and len(x_shape) != 3:
        raise ValueError(f"arch='conv' needs images of shape (C, H, W), got x_shape={x_shape}")
    conv = arch == "conv" or (arch == "auto" and len(x_shape) == 3 and min(x_shape[1:]) >= 16)
    return {"conv": conv, "channels": channels, "hidden": hidden, "num_positions": num_positions}


def codebook_config(num_codes: int, commitment_weight: float, codebook: dict[str, Any], codebook_lr: float,
                    nets: dict[str, Any]) -> dict[str, Any]:
    """A VQ model's own entries of ``config`` (beside the base VAE's), from :class:`VectorQuantizer`'s
    keyword arguments ``codebook`` and :func:`grid_options`' ``nets``."""
    return {"num_codes": num_codes, "commitment_weight": commitment_weight, "ema": bool(codebook["ema"]),
            "decay": codebook["decay"], "dead_threshold": codebook["dead_threshold"],
            "restart_dead": bool(codebook["restart_dead"]), "kmeans_init": bool(codebook["kmeans_init"]),
            "codebook_lr": codebook_lr, "num_positions": nets["num_positions"], "channels": list(nets["channels"])}


class GridEncoder(nn.Module):
    """Data -> a grid of vectors ``(B, code_dim, *grid)``.

    Images (``conv=True``): a stride-2 3x3 convolution per entry of
    ``channels`` (each halves the sides, rounding up), a 3x3 convolution and a
    1x1 convolution to ``code_dim``.  Vectors: an MLP to ``code_dim x num_positions``.
    """

    def __init__(self, x_shape: Sequence[int], code_dim: int, *, conv: bool, channels: Sequence[int],
                 hidden: Sequence[int], num_positions: int, activation: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.x_shape, self.code_dim, self.conv = tuple(x_shape), code_dim, conv
        self.grid = grid_shape(x_shape, len(channels) if conv else 0, num_positions)
        layers: list[nn.Module] = []
        if conv:
            c = x_shape[0]
            for out_c in channels:
                layers += [nn.Conv2d(c, out_c, 3, stride=2, padding=1), activation()]
                c = out_c
            layers += [nn.Conv2d(c, c, 3, padding=1), activation(), nn.Conv2d(c, code_dim, 1)]
        else:
            width = math.prod(x_shape)
            layers.append(nn.Flatten())
            for h in hidden:
                layers += [nn.Linear(width, h), activation()]
                width = h
            layers += [nn.Linear(width, code_dim * math.prod(self.grid)), nn.Unflatten(1, (code_dim, *self.grid))]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class GridDecoder(nn.Module):
    """A grid of vectors ``(B, in_channels, *grid)`` -> named heads of shape ``x_shape`` (mirror of :class:`GridEncoder`)."""

    def __init__(self, in_channels: int, x_shape: Sequence[int], heads: Sequence[str], *, conv: bool,
                 channels: Sequence[int], hidden: Sequence[int], num_positions: int,
                 activation: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.x_shape, self.heads = tuple(x_shape), tuple(heads)
        grid = grid_shape(x_shape, len(channels) if conv else 0, num_positions)
        layers: list[nn.Module] = []
        if conv:
            c, h, w = x_shape
            hs, ws = [h], [w]
            for _ in channels:
                hs.append((hs[-1] + 1) // 2)
                ws.append((ws[-1] + 1) // 2)
            rev = list(channels)[::-1]
            layers += [nn.Conv2d(in_channels, rev[0], 3, padding=1), activation()]
            outs = rev[1:] + [c * len(self.heads)]
            for i, (in_c, out_c) in enumerate(zip(rev, outs)):
                level = len(channels) - 1 - i
                pad = (hs[level] - 2 * hs[level + 1] + 1, ws[level] - 2 * ws[level + 1] + 1)
                layers.append(nn.ConvTranspose2d(in_c, out_c, 3, stride=2, padding=1, output_padding=pad))
                if i < len(rev) - 1:
                    layers.append(activation())
        else:
            width = in_channels * math.prod(grid)
            layers.append(nn.Flatten())
            for h in list(hidden)[::-1]:
                layers += [nn.Linear(width, h), activation()]
                width = h
            layers.append(nn.Linear(width, len(self.heads) * math.prod(x_shape)))
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> dict[str, Tensor]:
        batch_shape = z.shape[:-3]  # data points, and particles where an objective vectorizes them
        out = self.net(z.reshape(-1, *z.shape[-3:]))
        out = out.reshape(-1, len(self.heads) * self.x_shape[0], *self.x_shape[1:])
        chunks = out.chunk(len(self.heads), dim=1)
        return {name: t.reshape(*batch_shape, *self.x_shape) for name, t in zip(self.heads, chunks)}


class CodePrior(nn.Module):
    r"""An autoregressive prior over a grid of codes, :math:`p(k) = \prod_{i} p(k_i \mid k_{<i}, c)`.

    A :class:`~pyrovae.pixelcnn.PixelCNN` reads the one-hot codes (K channels)
    and gives K logits per position, causal in raster order; ``cond_codes > 0``
    conditions every position on a coarser code grid :math:`c` (VQ-VAE-2's top
    level), one-hot and resized to this grid by nearest-neighbour upsampling.

    As a Pyro program, for each grid :math:`k_n` in the ``"data"`` plate:
    ``pyro.sample("codes", Categorical(logits).to_event(2), obs=k_n)``; there is
    no latent, the guide is empty, and ``fit(prior, codes)`` maximises
    :math:`\sum_n \log p(k_n \mid c_n)`.

    :param num_codes: K of the modelled grid.
    :param grid: the grid's ``(H, W)``.
    :param cond_codes: K of the conditioning grid (0: unconditional).
    :param hidden_channels: the PixelCNN's width.
    :param num_layers: the PixelCNN's gated layers.
    :param kernel_size: the PixelCNN's (odd) kernel size.

    Example::

        prior = CodePrior(512, (7, 7))
        pyrovae.fit(prior, codes.float(), epochs=20)   # codes: (N, 7, 7) indices
        new_codes = prior.sample(16)
    """

    def __init__(self, num_codes: int, grid: Sequence[int], *, cond_codes: int = 0, hidden_channels: int = 64,
                 num_layers: int = 5, kernel_size: int = 5) -> None:
        super().__init__()
        self.num_codes, self.grid = _check_int(num_codes, "num_codes"), tuple(int(g) for g in grid)
        self.cond_codes = _check_int(cond_codes, "cond_codes", 0)
        self.net = PixelCNN(num_codes, num_codes, hidden_channels=hidden_channels, num_layers=num_layers,
                            kernel_size=kernel_size, cond_channels=self.cond_codes)
        self._pyro_name = f"code_prior{id(self)}"

    def _index(self, codes: Tensor, name: str, num_codes: int, grid: tuple[int, ...]) -> Tensor:
        """``codes`` as long indices, or a ValueError naming ``name`` and the expected form."""
        if not isinstance(codes, Tensor) or codes.dim() != 3 or (grid and tuple(codes.shape[1:]) != grid):
            shape = tuple(codes.shape) if isinstance(codes, Tensor) else type(codes).__name__
            raise ValueError(f"Expected {name} of shape (B, {', '.join(map(str, grid or ('H', 'W')))}), got {shape}")
        # fit hands data over as floats: the indices travel as whole numbers
        if codes.is_floating_point():
            if not bool((codes == codes.round()).all()):
                raise ValueError(f"Expected {name} to hold whole numbers (code indices)")
            codes = codes.long()
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= num_codes):
            raise ValueError(f"Expected {name} in [0, {num_codes}), got values in [{int(codes.min())}, {int(codes.max())}]")
        return codes

    def logits(self, codes: Tensor, cond: Tensor | None = None) -> Tensor:
        """(B, H, W, K) logits of every position given the codes before it (teacher forcing)."""
        codes = self._index(codes, "codes", self.num_codes, self.grid)
        x = one_hot(codes, self.num_codes).movedim(-1, 1).float()
        cond_map = None
        if self.cond_codes:
            if cond is None:
                raise ValueError("Expected cond (the coarser code grid) for a conditional CodePrior, got None")
            c = one_hot(self._index(cond, "cond", self.cond_codes, ()), self.cond_codes).movedim(-1, 1).float()
            cond_map = nn.functional.interpolate(c, size=self.grid, mode="nearest")
        return self.net(x, cond_map=cond_map).movedim(1, -1)

    def model(self, codes: Tensor, cond: Tensor | None = None) -> None:
        """p(codes | cond) as a Pyro program: one observed categorical grid per data point."""
        pyro.module(self._pyro_name, self)
        with pyro.plate("data", codes.shape[0]):
            pyro.sample("codes", dist.Categorical(logits=self.logits(codes, cond)).to_event(2),
                        obs=self._index(codes, "codes", self.num_codes, self.grid))

    def guide(self, codes: Tensor, cond: Tensor | None = None) -> None:
        """No latent variables: the codes are observed."""

    def log_prob(self, codes: Tensor, cond: Tensor | None = None) -> Tensor:
        """log p(codes | cond) per grid, (B,)."""
        logits = self.logits(codes, cond)
        return dist.Categorical(logits=logits).log_prob(self._index(codes, "codes", self.num_codes, self.grid)).sum((-2, -1))

    @torch.no_grad()
    def sample(self, num_samples: int, cond: Tensor | None = None) -> Tensor:
        """``num_samples`` grids (num_samples, H, W) drawn position by position in raster order."""
        device = next(self.parameters()).device
        codes = torch.zeros((num_samples, *self.grid), dtype=torch.long, device=device)
        for i in range(self.grid[0]):
            for j in range(self.grid[1]):
                logits = self.logits(codes, cond)[:, i, j]
                codes[:, i, j] = dist.Categorical(logits=logits).sample()
        return codes
