"""Sylvester normalizing flows (van den Berg, Hasenclever, Tomczak & Welling 2018), amortized per image.

A diagonal Gaussian base pushed through K steps

    z' = z + Q R1 tanh(R2 Q^T z + b),

Q a d x M matrix with orthonormal columns, R1 and R2 upper-triangular M x M, b in R^M, all per image from one
linear head on the encoder features. Sylvester's determinant identity turns the d x d Jacobian determinant into an
M x M one, det(I_M + diag(h') R2 Q^T Q R1) = prod_m (1 + h'_m R1_mm R2_mm) with h' = 1 - tanh^2 of the
pre-activation: O(M) per sample. The diagonals are tanh of head outputs, so R1_mm R2_mm lies in (-1, 1) and, with
0 < h' <= 1, every step is invertible. R1 and R2 share one M x M head, R1 taking its strictly upper part and R2 the
strictly upper part of its transpose, as in the paper's code (riannevdberg/sylvester-flows).

``variant`` chooses Q, with the paper's defaults:

* ``orthogonal``: Q the polar factor A (A^T A)^(-1/2) of a d x M head output A, the limit of the paper's iterative
  orthogonalization Q <- Q (I + (I - Q^T Q) / 2), computed in closed form (``orthonormal_columns``). M =
  ``ortho_vectors`` (8), at most d: R^d holds no more than d orthonormal vectors, so a larger value means M = d.
* ``householder``: Q (d x d, M = d) the product of ``reflections`` (8) Householder reflections I - 2 v v^T / |v|^2,
  each v per image from the head.
* ``triangular``: Q the identity on even steps and the reversal permutation on odd ones (M = d, no Q head).

The named settings ``sylvester_householder`` and ``sylvester_triangular`` fix the variant; ``sylvester`` is the
orthogonal one. The KL is the flows' Monte Carlo estimate (``FlowPosterior``).
"""

from __future__ import annotations

import torch
from torch import nn

from .ar1_normal import log1m_tanh_sq
from .base import POSTERIORS, check_option
from .flows import FlowPosterior, Step

VARIANTS = ("orthogonal", "householder", "triangular")


def sylvester_step(z: torch.Tensor, q: torch.Tensor, r1: torch.Tensor, r2: torch.Tensor, b: torch.Tensor,
                   diag1: torch.Tensor, diag2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """z' = z + Q R1 tanh(R2 Q^T z + b) and log|det dz'/dz|, broadcasting z ``[..., B, d]`` against the per-image
    Q ``[B, d, M]``, R1 and R2 ``[B, M, M]``, b ``[B, M]``; ``diag1`` and ``diag2`` ``[B, M]`` are the raw head outputs
    whose tanh are the diagonals of R1 and R2.

    Each factor of the determinant, 1 + h' tanh(a) tanh(c), is computed as the sum of non-negative terms
    tanh^2(pre) + h' (1 + tanh(a) tanh(c)) with 1 + tanh(a) tanh(c) = cosh(a + c) / (cosh a cosh c), whose log is
    (log1m_tanh_sq(a) + log1m_tanh_sq(c) - log1m_tanh_sq(a + c)) / 2 (log(1 - tanh^2) = -2 log cosh), so saturated
    diagonals of opposite sign (tanh(a) tanh(c) = -1 in floating point) cannot cancel it to 0.
    """
    # Samples of one image share its matrices: with the image first, each image's S samples go through one
    # S x d by d x M product instead of S vector-matrix products (the NLL draws S = K per image).
    samples = z.movedim(-2, 0).reshape(z.shape[-2], -1, z.shape[-1])  # [B, S, d]
    pre = samples @ (q @ r2.mT) + b.unsqueeze(-2)  # (R2 Q^T z + b)^T = z^T (Q R2^T) + b^T: [B, S, M]
    act = torch.tanh(pre)
    out = samples + act @ (q @ r1).mT  # z^T + act^T (Q R1)^T
    out, pre, act = (t.reshape(t.shape[0], *z.shape[:-2], t.shape[-1]).movedim(0, -2) for t in (out, pre, act))
    one_plus_r1r2 = (0.5 * (log1m_tanh_sq(diag1) + log1m_tanh_sq(diag2) - log1m_tanh_sq(diag1 + diag2))).exp()
    det = act * act + log1m_tanh_sq(pre).exp() * one_plus_r1r2
    return out, det.log().sum(-1)


class InverseSquareRoot(torch.autograd.Function):
    """G^(-1/2) of symmetric positive-definite matrices G ``[..., M, M]`` from the eigendecomposition G = V diag(l) V^T.

    The backward is the Daleckii-Krein formula, V (F o (V^T dS V)) V^T, whose F_ij is the divided difference of
    l^(-1/2), -1 / (s_i s_j (s_i + s_j)) with s = sqrt(l): finite where eigenvalues coincide, where differentiating
    through ``torch.linalg.eigh`` divides by their difference (a G near a multiple of I is common: Q's columns are
    then already near orthogonal and of equal length)."""

    @staticmethod
    def forward(ctx, g: torch.Tensor) -> torch.Tensor:
        eigenvalues, v = torch.linalg.eigh(g)
        s = eigenvalues.sqrt()
        ctx.save_for_backward(v, s)
        return (v / s.unsqueeze(-2)) @ v.mT

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        v, s = ctx.saved_tensors
        si, sj = s.unsqueeze(-1), s.unsqueeze(-2)
        return v @ ((v.mT @ grad @ v) * (-1.0 / (si * sj * (si + sj)))) @ v.mT


def orthonormal_columns(a: torch.Tensor) -> torch.Tensor:
    """Q ``[..., d, M]`` with orthonormal columns from ``a`` of that shape (M <= d, full column rank): its polar factor
    Q = A (A^T A)^(-1/2), the orthonormal matrix nearest to A (U V^T of the SVD A = U S V^T). The paper's iterative
    orthogonalization, Q <- Q (I + (I - Q^T Q) / 2) from A / |A|_F (Bjorck's), converges to this same matrix; the
    closed form costs one M x M eigendecomposition per image instead of 8 to 20 differentiated iterations, has no
    data-dependent loop (one compiled graph) and depends on nothing but its own image. (A^T A)^(-1/2) is computed in
    float64, the Gram matrix A^T A included: formed in float32 it loses its smallest eigenvalue to rounding once A's
    condition number passes about 10^4, and its inverse square root is then NaN (40% of 4 x 4 matrices of condition
    3 x 10^4; a tiny sylvester run diverged so on an AMD EPYC). Q's columns are orthonormal to about the condition
    number times float32's precision (2 x 10^-3 at 3 x 10^4)."""
    a64 = a.double()
    return a @ InverseSquareRoot.apply(a64.mT @ a64).to(a.dtype)


def householder_product(v: torch.Tensor) -> torch.Tensor:
    """Q = H_K ... H_1 ``[..., d, d]`` for reflection vectors ``v`` ``[..., K, d]``, H_k = I - 2 v_k v_k^T / |v_k|^2,
    built by applying the reflections to the identity one after another (O(K d^2), no d x d reflection formed)."""
    v = v / torch.linalg.vector_norm(v, dim=-1, keepdim=True)
    d = v.shape[-1]
    q = torch.eye(d, dtype=v.dtype, device=v.device).expand(*v.shape[:-2], d, d)
    for k in range(v.shape[-2]):
        vk = v[..., k, :].unsqueeze(-1)  # [..., d, 1]
        q = q - 2.0 * vk @ (vk.transpose(-1, -2) @ q)
    return q


@POSTERIORS.register("sylvester")
class SylvesterPosterior(FlowPosterior):
    """Diagonal Gaussian base + ``flow_length`` Sylvester steps with per-image Q, R1, R2 and b from one linear head."""

    def __init__(self, in_features: int, latent_dim: int, variant: str = "orthogonal", flow_length: int = 4,
                 ortho_vectors: int = 8, reflections: int = 8, min_std: float = 1e-4, kl_samples: int = 1,
                 step_gradient: float = 1.0):
        super().__init__(in_features, latent_dim, min_std, kl_samples, step_gradient)
        check_option(variant in VARIANTS, "variant", variant, ", ".join(VARIANTS))
        check_option(flow_length >= 0, "flow_length", flow_length, "an integer >= 0")
        check_option(ortho_vectors >= 1, "ortho_vectors", ortho_vectors, "an integer >= 1")
        check_option(reflections >= 1, "reflections", reflections, "an integer >= 1")
        self.variant, self.flow_length, self.reflections = variant, flow_length, reflections
        self.width = min(ortho_vectors, latent_dim) if variant == "orthogonal" else latent_dim  # M
        self.q_size = {"orthogonal": latent_dim * self.width, "householder": reflections * latent_dim,
                       "triangular": 0}[variant]
        m = self.width
        # per step: the shared M x M matrix of R1 and R2, the raw diagonals of R1 and of R2, b, and Q's head output
        self.sizes = [m * m, m, m, m, self.q_size]
        self.step_params = nn.Linear(in_features, flow_length * sum(self.sizes))
        reverse = torch.eye(latent_dim).flip(-1)
        self.register_buffer("permutations", torch.stack([torch.eye(latent_dim), reverse]), persistent=False)

    @property
    def step_head(self) -> nn.Linear:
        """Every step's (shared R matrix, R1 and R2 diagonals, b, Q's parameters): ``[B, K P]``."""
        return self.step_params

    def steps_from(self, params: torch.Tensor) -> list[Step]:
        m = self.width
        upper = torch.ones(m, m, dtype=torch.bool, device=params.device).triu(1)
        pieces = params.unflatten(-1, (self.flow_length, sum(self.sizes))).split(self.sizes, dim=-1)
        qs = self.q_matrices(pieces[-1])  # every step's Q in one batched computation
        steps = []
        for k, (full, diag1, diag2, b) in enumerate(zip(*(piece.unbind(-2) for piece in pieces[:-1]))):
            full = full.unflatten(-1, (m, m))
            r1 = torch.where(upper, full, 0.0) + torch.diag_embed(torch.tanh(diag1))
            r2 = torch.where(upper, full.transpose(-1, -2), 0.0) + torch.diag_embed(torch.tanh(diag2))
            q = qs[..., k, :, :]
            steps.append(lambda z, q=q, r1=r1, r2=r2, b=b, d1=diag1, d2=diag2: sylvester_step(z, q, r1, r2, b, d1, d2))
        return steps

    def q_matrices(self, raw: torch.Tensor) -> torch.Tensor:
        """Q of every step from the steps' slices of the head output ``[B, K, q_size]``: ``[B, K, d, M]`` (``[K, d, d]``
        for the triangular variant, the same for every image: the identity and the reversal, alternating)."""
        if self.variant == "orthogonal":
            return orthonormal_columns(raw.unflatten(-1, (self.latent_dim, self.width)))
        if self.variant == "householder":
            return householder_product(raw.unflatten(-1, (self.reflections, self.latent_dim)))
        return self.permutations[torch.arange(self.flow_length) % 2].to(raw.dtype)


POSTERIORS.add_setting("sylvester_householder", "sylvester", variant="householder")
POSTERIORS.add_setting("sylvester_triangular", "sylvester", variant="triangular")
