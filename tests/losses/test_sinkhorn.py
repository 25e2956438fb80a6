import math

import ot
import pytest
import torch
from torch.nn import functional as F

from mssl.losses.sinkhorn import augment_with_dustbin, dustbin_log_marginals, log_sinkhorn


def _scores(b, m, n, tau=0.1, dim=16):
    source = F.normalize(torch.randn(b, m, dim), dim=-1)
    target = F.normalize(torch.randn(b, n, dim), dim=-1)
    return source @ target.transpose(1, 2) / tau


@pytest.mark.parametrize("m, n", [(12, 12), (9, 14)])
def test_marginals_are_met_including_dustbins(m, n):
    plan = log_sinkhorn(_scores(2, m, n), torch.tensor(1.0), iterations=50).exp()
    rows, cols = plan.sum(2), plan.sum(1)
    assert torch.allclose(rows[:, :m], torch.ones(2, m), atol=1e-4)
    assert torch.allclose(cols[:, :n], torch.ones(2, n), atol=1e-4)
    assert torch.allclose(rows[:, m], torch.full((2,), float(n)), atol=1e-4 * n)
    assert torch.allclose(cols[:, n], torch.full((2,), float(m)), atol=1e-4 * m)


def test_equals_a_dense_reference_solution():
    m, n = 7, 10
    scores = _scores(1, m, n, tau=0.5)
    dustbin = torch.tensor(0.3)
    ours = log_sinkhorn(scores, dustbin, iterations=500).exp()[0].double()
    log_rows, log_cols = dustbin_log_marginals(m, n, torch.device("cpu"), torch.float64)
    couplings = augment_with_dustbin(scores.double(), dustbin.double())[0]
    reference = ot.sinkhorn(log_rows.exp(), log_cols.exp(), -couplings, reg=1.0, numItermax=10_000, stopThr=1e-12)
    assert torch.allclose(ours, torch.as_tensor(reference) * (m + n), atol=1e-5)


def test_identical_embeddings_put_most_mass_on_the_diagonal():
    embeddings = F.normalize(torch.randn(1, 64, 32), dim=-1)
    scores = embeddings @ embeddings.transpose(1, 2) / 0.1
    plan = log_sinkhorn(scores, torch.tensor(1.0), iterations=50).exp()
    assert plan[0, :64, :64].diagonal().mean() > 0.8


def test_gradients_flow_through_the_iterations_into_scores_and_dustbin():
    scores = _scores(1, 5, 6).requires_grad_()
    dustbin = torch.tensor(1.0, requires_grad=True)
    log_sinkhorn(scores, dustbin, iterations=20)[0, :5, :6].diagonal().sum().backward()
    assert scores.grad.abs().sum() > 0 and dustbin.grad.abs() > 0


def test_runs_in_fp32_under_bf16_autocast():
    scores = _scores(1, 8, 8).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        log_plan = log_sinkhorn(scores, torch.tensor(1.0), iterations=50)
    assert log_plan.dtype == torch.float32
    assert torch.allclose(log_plan.exp().sum(2)[0, :8], torch.ones(8), atol=1e-4)
    assert math.isfinite(log_plan.sum().item())
