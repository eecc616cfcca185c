"""Shared building blocks of defenses that score or flag training samples.

Everything here runs through the engine (:func:`bench.engine.map_batches`), in eval mode and
without augmentation, and returns CPU tensors aligned with the split (one row per sample):

* :func:`per_sample_loss`: cross-entropy with the given labels (ABL's isolation score);
* :func:`extract_features`: penultimate features ``model.features(x)`` (SCAn, DBR's FCT);
* :func:`top_k_mask` / :func:`bottom_k_mask`: the k highest / lowest scores as a boolean mask
  (stable: ties go to the lower index, so a run is a pure function of its seed);
* :func:`random_rotate_translate`: batched rotation + integer translation with nearest sampling
  and zero fill (torchvision ``RandomRotation`` then ``RandomAffine(translate=...)``), for
  consistency scores such as DBR's FCT;
* SCAn's class-wise statistics (Tang et al., USENIX Security 2021): :func:`scan_global_model`
  (EM of the two-covariance model on clean features), :func:`two_means` (2-means in the F metric),
  :func:`scan_class_statistic` (the untangling statistic J_k) and :func:`mad_anomaly_index`.
  They work in float64 on any (N, D) feature matrix; a detection-only SCAn or another defense can
  reuse them.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench import engine
from bench.engine import eval_mode
from bench.data import Split


# -- scoring passes -------------------------------------------------------------------------------
def per_sample_loss(model: nn.Module, data: Split, indices: torch.Tensor | None = None,
                    batch_size: int | None = None) -> torch.Tensor:
    """Cross-entropy of every sample with its given label (eval mode, no augmentation)."""
    if data.y is None:
        raise ValueError("per_sample_loss needs labels")
    with eval_mode(model):
        return engine.map_batches(
            lambda x, y, i: F.cross_entropy(model(x).float(), y, reduction="none"),
            data, batch_size=batch_size, indices=indices)


def extract_features(model: nn.Module, data: Split, indices: torch.Tensor | None = None,
                     batch_size: int | None = None, transform=None) -> torch.Tensor:
    """Penultimate features ``model.features(x)`` of every sample (eval mode, float32, CPU).

    ``transform(x, idx)`` (optional) changes the float batch first (e.g. a random rotation)."""
    def fn(x, y, idx):
        if transform is not None:
            x = transform(x, idx)
        return model.features(x).float()

    with eval_mode(model):
        return engine.map_batches(fn, data, batch_size=batch_size, indices=indices)


def top_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the ``k`` highest scores (ties: lower index first)."""
    mask = torch.zeros(len(scores), dtype=torch.bool)
    if k > 0:
        order = torch.sort(scores.double(), descending=True, stable=True).indices
        mask[order[:k]] = True
    return mask


def bottom_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the ``k`` lowest scores (ties: lower index first)."""
    return top_k_mask(-scores.double(), k)


# -- transforms -----------------------------------------------------------------------------------
def random_rotate_translate(x: torch.Tensor, angles_deg: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Rotate each image of ``x`` (B, C, H, W) by ``angles_deg[b]`` about its centre, then shift it
    by ``shifts[b] = (dx, dy)`` whole pixels; nearest sampling, zero fill (torchvision's
    ``RandomRotation`` followed by ``RandomAffine(degrees=0, translate=...)``)."""
    b, _, h, w = x.shape
    a = torch.deg2rad(angles_deg.to(x.device, torch.float32))
    cos, sin = torch.cos(a), torch.sin(a)
    t = shifts.to(x.device, torch.float32)
    # output pixel q -> input pixel p = R^-1 (q - c - t) + c, written in normalised coordinates
    # (x_n = 2 x / W - 1 with align_corners=False) so non-square images rotate correctly too.
    sx, sy = w / 2.0, h / 2.0
    theta = torch.zeros(b, 2, 3, device=x.device)
    theta[:, 0, 0] = cos
    theta[:, 0, 1] = sin * sy / sx
    theta[:, 1, 0] = -sin * sx / sy
    theta[:, 1, 1] = cos
    tnx, tny = t[:, 0] / sx, t[:, 1] / sy
    theta[:, 0, 2] = -(theta[:, 0, 0] * tnx + theta[:, 0, 1] * tny)
    theta[:, 1, 2] = -(theta[:, 1, 0] * tnx + theta[:, 1, 1] * tny)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False).to(x.dtype)


# -- SCAn statistics (float64) --------------------------------------------------------------------
def _cov(z: torch.Tensor) -> torch.Tensor:
    """Row covariance with divisor n - 1 (numpy/Matlab ``cov``)."""
    z = z - z.mean(0, keepdim=True)
    return z.T @ z / max(1, z.shape[0] - 1)


def psd_pinv(m: torch.Tensor, rtol: float = 1e-10) -> torch.Tensor:
    """Pseudo-inverse of a symmetric positive semi-definite matrix (eigenvalues below
    ``rtol * max`` count as zero), as Matlab's ``pinv`` does for such matrices."""
    s, q = torch.linalg.eigh((m + m.T) / 2)
    keep = s > rtol * s.abs().max().clamp_min(1e-300)
    inv = torch.where(keep, 1.0 / torch.where(keep, s, torch.ones_like(s)), torch.zeros_like(s))
    return (q * inv) @ q.T


def psd_sqrt(m: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a positive semi-definite matrix (negative eigenvalues -> 0)."""
    s, q = torch.linalg.eigh((m + m.T) / 2)
    return (q * s.clamp_min(0).sqrt()) @ q.T


class _SolveFamily:
    """``(n Su + Se)^+`` for many n from one eigendecomposition (the spec's cost note):
    with ``Se_r = Se + eps I`` (a tiny ridge, only so that Se_r^-1/2 exists when features have
    dead dimensions), ``Se_r^-1/2 Su Se_r^-1/2 = V diag(d) V^T`` gives
    ``(n Su + Se_r)^-1 = Se_r^-1/2 V diag(1 / (n d + 1)) V^T Se_r^-1/2``."""

    def __init__(self, su: torch.Tensor, se: torch.Tensor, ridge: float = 1e-9):
        dim = se.shape[0]
        eps = ridge * max(float(torch.diagonal(se).mean()), 1e-300)
        s, q = torch.linalg.eigh((se + se.T) / 2 + eps * torch.eye(dim, dtype=se.dtype))
        s = s.clamp_min(eps)
        self.w = (q * s.rsqrt()) @ q.T                      # Se_r^-1/2 (symmetric)
        d, v = torch.linalg.eigh(self.w @ ((su + su.T) / 2) @ self.w)
        self.d = d.clamp_min(0)
        self.wv = self.w @ v

    def solve(self, n: float, b: torch.Tensor) -> torch.Tensor:
        """``(n Su + Se_r)^-1 b`` without forming the matrix (O(D^2) per vector)."""
        return self.wv @ ((self.wv.T @ b) / (n * self.d + 1))


def scan_global_model(x: torch.Tensor, y: torch.Tensor, max_iter: int = 100, tol: float = 1e-5):
    """SCAn's global model fitted on clean features ``x`` (N, D) with labels ``y``.

    Starts from class means (u_i) and residuals (e_i), Su = cov(u), Se = cov(e); then EM:
    ``mu_k = Su (n_k Su + Se)^-1 sum_{i in k} x_i``, u_i = mu_{y_i}, e_i = x_i - u_i, refit Su and
    Se, until ``||dSu||_F + ||dSe||_F < tol`` or ``max_iter`` rounds. ``x`` must be centred by the
    caller. Returns ``(Su, Se, F = pinv(Se), rounds)``."""
    x = x.double()
    classes, inverse, counts = torch.unique(y, return_inverse=True, return_counts=True)
    k = len(classes)
    sums = torch.zeros(k, x.shape[1], dtype=x.dtype).index_add_(0, inverse, x)
    means = sums / counts[:, None].double()
    u = means[inverse]
    su, se = _cov(u), _cov(x - u)
    rounds = 0
    for rounds in range(1, max_iter + 1):
        fam = _SolveFamily(su, se)
        mu = torch.stack([su @ fam.solve(float(n), s) for n, s in zip(counts.tolist(), sums)])
        u = mu[inverse]
        su_new, se_new = _cov(u), _cov(x - u)
        delta = float(torch.linalg.norm(su_new - su) + torch.linalg.norm(se_new - se))
        su, se = su_new, se_new
        if delta < tol:
            break
    return su, se, psd_pinv(se), rounds


def two_means(x: torch.Tensor, f: torch.Tensor, generator: torch.Generator,
              max_iter: int = 100, *, f_sqrt: torch.Tensor | None = None) -> torch.Tensor:
    """2-means of the rows of ``x`` in the metric ``(a - b)^T F (a - b)``, from a seeded random
    start (each row in group 1 with probability 1/2, both groups non-empty). Returns a boolean
    mask of group 1; stops when no row moves (or after ``max_iter`` rounds). ``f_sqrt``:
    :func:`psd_sqrt` of ``F``, when the caller clusters several sets in the same metric (one
    eigendecomposition of F instead of one per set: on near-singular features, as a barely trained
    ResNet-18 gives, each took seconds)."""
    n = x.shape[0]
    if n < 2:
        return torch.zeros(n, dtype=torch.bool)
    g1 = torch.rand(n, generator=generator) < 0.5
    if g1.all() or not g1.any():  # both groups non-empty: move one random row over
        i = int(torch.randint(n, (1,), generator=generator))
        g1[i] = ~g1[i]
    root = psd_sqrt(f.double()) if f_sqrt is None else f_sqrt.double()
    w = x.double() @ root  # F-distances become Euclidean: one product per call
    for _ in range(max_iter):
        if g1.all() or not g1.any():
            break
        d1 = (w - w[g1].mean(0)).pow(2).sum(1)
        d2 = (w - w[~g1].mean(0)).pow(2).sum(1)
        new = d1 < d2
        if torch.equal(new, g1):
            break
        g1 = new
    return g1


def mahalanobis_sq(x: torch.Tensor, centre: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """``(x_i - c)^T F (x_i - c)`` for every row of ``x``."""
    z = x - centre
    return ((z @ f) * z).sum(1)


def scan_class_statistic(x: torch.Tensor, group1: torch.Tensor, su: torch.Tensor, se: torch.Tensor,
                         f: torch.Tensor, mu_form: str = "code") -> float:
    """SCAn's untangling statistic of one class: ``J = (1/N) sum_g n_g (u_g - m)^T F (u_g - m)``
    over the two subgroups (means u_g, sizes n_g) against the one-group mean m:
    ``"code"``: ``m = Se pinv(N Su + Se) sum x`` (every public implementation);
    ``"posterior"``: ``m = Su (N Su + Se)^-1 sum x`` (the model's posterior mean)."""
    n = x.shape[0]
    if n == 0:
        return 0.0
    total = x.sum(0)
    inv = psd_pinv(n * su + se)
    if mu_form == "code":
        m = se @ (inv @ total)
    elif mu_form == "posterior":
        m = su @ (inv @ total)
    else:
        raise ValueError(f"mu_form must be 'code' or 'posterior', got '{mu_form}'")
    j = 0.0
    for g in (group1, ~group1):
        if g.any():
            j += int(g.sum()) * float(mahalanobis_sq(x[g].mean(0, keepdim=True), m, f)[0])
    return j / n


def mad_anomaly_index(values: torch.Tensor) -> torch.Tensor:
    """Two-sided robust z-score ``|v - med| / (1.4826 MAD)`` (0 where the MAD is 0 and the
    value equals the median; +inf where only the MAD is 0)."""
    v = values.double()
    med = v.quantile(0.5)  # numpy's median (the mean of the middle two for even counts)
    dev = (v - med).abs()
    mad = 1.4826 * dev.quantile(0.5)
    if float(mad) == 0.0:
        return torch.where(dev > 0, torch.full_like(v, math.inf), torch.zeros_like(v))
    return dev / mad
