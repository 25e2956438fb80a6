"""The three S²DC loss terms: patch-to-patch (L_p2p), patch-to-structure (L_p2s) and global (L_g).

Token tensors are (B, N, D) L2-normalised embeddings; ``correspondence`` is the (B, N_s, N_t) binary
matrix of positive student–teacher token pairs (at most one 1 per row and per column). All terms are
computed in fp32, also under autocast, and averaged over the batch; a sample without positives contributes no positive term.

Deviation in L_p2s (official: softmax weights over all tokens, with gradients through them): our weights
are detached and renormalised over the matched tokens, so the positive term is a weighted mean of the
positive log-losses whatever share of tokens stays in view. Measured at the default 12×12×3 token grid
(benchmarks/results/p2s_weighting.md): with unrelated student and teacher tokens, as at init, the
official loss is 1.202 against our 1.388 (its weights put only 0.72 of their mass on matched tokens), its
student gradient is 4.3× ours and nearly orthogonal to it (cosine 0.17), all of the difference coming from
the gradient through the weights; once matched tokens agree (cosine 0.89) both give the same gradient
(cosine 0.999).
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

PROBABILITY_EPS = 1e-6
STD_EPS = 1e-6


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sample mean of (B, M, N) ``values`` over ``mask`` (0 when the mask is empty) → (B,)."""
    return (values * mask).sum((1, 2)) / mask.sum((1, 2)).clamp(min=1)


def p2p_loss(log_plan: torch.Tensor, correspondence: torch.Tensor) -> torch.Tensor:
    """BCE of the transport plan's real block against the correspondences.

    log_plan: (B, M + 1, N + 1) from ``log_sinkhorn`` (rows of the real block sum to ≤ 1).
    """
    m, n = correspondence.shape[1:]
    log_p = log_plan[:, :m, :n].float().clamp(math.log(PROBABILITY_EPS), math.log1p(-PROBABILITY_EPS))
    positive = _masked_mean(-log_p, correspondence)
    negative = _masked_mean(-torch.log1p(-log_p.exp()), 1 - correspondence)
    return (positive + negative).mean()


def _peak_z_score(similarity: torch.Tensor, dim: int) -> torch.Tensor:
    """How far each token's best similarity stands out of its neighbourhood distribution along ``dim``."""
    peak = similarity.amax(dim)
    return (peak - similarity.mean(dim)) / (similarity.std(dim) + STD_EPS)


def _masked_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=-1)
    return torch.nan_to_num(weights * mask, nan=0.0)  # a view without matches gets all-zero weights


def neighbourhood_weights(similarity: torch.Tensor, correspondence: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax of the peak z-scores over the matched tokens of each view: (B, M) student, (B, N) teacher.

    Each student token's neighbourhood is its similarities to all teacher tokens and vice versa; a
    sharp peak (a distinctive token) gets more weight than a flat profile (inside a large structure).
    Detached: the weights rank tokens, they are not something for the student to optimise.
    """
    similarity = similarity.detach()
    row_weights = _masked_softmax(_peak_z_score(similarity, 2), correspondence.sum(2) > 0)
    col_weights = _masked_softmax(_peak_z_score(similarity, 1), correspondence.sum(1) > 0)
    return row_weights, col_weights


def p2s_loss(cosine: torch.Tensor, correspondence: torch.Tensor) -> torch.Tensor:
    """Neighbourhood-weighted BCE on (1 + cos)/2 similarities; negatives averaged uniformly.

    cosine: (B, M, N) student × teacher token cosine similarities.
    """
    similarity = ((1 + cosine.float()) / 2).clamp(PROBABILITY_EPS, 1 - PROBABILITY_EPS)
    row_weights, col_weights = neighbourhood_weights(similarity, correspondence)
    positive_nll = -similarity.log() * correspondence  # (B, M, N), non-zero on positives only
    by_student = (positive_nll * row_weights.unsqueeze(2)).sum((1, 2))
    by_teacher = (positive_nll * col_weights.unsqueeze(1)).sum((1, 2))
    positive = 0.5 * (by_student + by_teacher)
    negative = _masked_mean(-torch.log1p(-similarity), 1 - correspondence)
    return (positive + negative).mean()


def global_info_nce(query: torch.Tensor, keys: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE: query i's positive is key i; the other keys and the queue are negatives.

    query, keys: (Q, D) L2-normalised student / teacher crop embeddings; queue: (K, D) past teacher keys.
    """
    with torch.autocast(query.device.type, enabled=False):  # .float() alone would leave the matmul in bf16
        candidates = torch.cat([keys.float(), queue.float()])  # (Q + K, D)
        logits = query.float() @ candidates.T / temperature  # (Q, Q + K)
        return F.cross_entropy(logits, torch.arange(query.shape[0], device=query.device))
