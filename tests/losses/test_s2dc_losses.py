import math
import statistics

import pytest
import torch
from torch.nn import functional as F

from mssl.losses.s2dc import global_info_nce, neighbourhood_weights, p2p_loss, p2s_loss
from mssl.losses.sinkhorn import log_sinkhorn
from mssl.views.correspondence import UNMATCHED, correspondence_matrix


def _tokens(b=2, n=20, d=16):
    return F.normalize(torch.randn(b, n, d), dim=-1)


def _match(b=2, n=20, unmatched=5):
    match = torch.stack([torch.randperm(n) for _ in range(b)])
    match[:, :unmatched] = UNMATCHED
    return match


def test_p2p_prefers_plans_that_follow_the_correspondences():
    match = _match()
    correspondence = correspondence_matrix(match, 20)
    teacher = _tokens()
    matched = torch.gather(teacher, 1, match.clamp(min=0)[..., None].expand(-1, -1, 16))
    student = torch.where((match != UNMATCHED)[..., None], matched, _tokens())  # student n = teacher f(n)
    good = p2p_loss(log_sinkhorn(student @ teacher.transpose(1, 2) / 0.1, torch.tensor(1.0), 50), correspondence)
    bad = p2p_loss(log_sinkhorn(student @ _tokens().transpose(1, 2) / 0.1, torch.tensor(1.0), 50), correspondence)
    assert good < bad


def _log_plan(real_block: list[list[float]]) -> torch.Tensor:
    """(1, M + 1, N + 1) log plan whose real block is ``real_block``; the dustbins take the rest of each row/column."""
    block = torch.tensor(real_block)
    plan = torch.zeros(1, block.shape[0] + 1, block.shape[1] + 1)
    plan[0, :-1, :-1] = block
    plan[0, :-1, -1] = 1 - block.sum(1)
    plan[0, -1, :-1] = 1 - block.sum(0)
    return plan.clamp_min(1e-12).log()


def test_p2p_is_the_mean_positive_plus_the_mean_negative_log_loss_by_hand():
    correspondence = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])  # token 0 ↔ 0; student token 1 unmatched
    loss = p2p_loss(_log_plan([[0.8, 0.1], [0.2, 0.5]]), correspondence)
    # positive: −log 0.8; negatives: mean of −log(1 − P) over the three zero entries 0.1, 0.2, 0.5
    expected = -math.log(0.8) + (-math.log(0.9) - math.log(0.8) - math.log(0.5)) / 3
    assert expected == pytest.approx(0.5636940, abs=1e-7)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_p2p_penalises_mass_on_wrong_pairs_even_when_the_positives_are_equal():
    correspondence = torch.eye(2)[None]
    to_dustbin = p2p_loss(_log_plan([[0.5, 0.0], [0.0, 0.5]]), correspondence)
    to_wrong_pairs = p2p_loss(_log_plan([[0.5, 0.4], [0.4, 0.5]]), correspondence)
    assert to_wrong_pairs - to_dustbin == pytest.approx(-math.log(0.6), rel=1e-5)


def test_p2s_weights_sum_to_one_per_view_over_matched_tokens():
    match = _match()
    correspondence = correspondence_matrix(match, 20)
    similarity = (1 + _tokens() @ _tokens().transpose(1, 2)) / 2
    row_weights, col_weights = neighbourhood_weights(similarity, correspondence)
    assert torch.allclose(row_weights.sum(1), torch.ones(2)) and torch.allclose(col_weights.sum(1), torch.ones(2))
    assert (row_weights[match == UNMATCHED] == 0).all()
    assert (col_weights[correspondence.sum(1) == 0] == 0).all()


def test_p2s_weights_favour_tokens_with_a_distinct_peak():
    similarity = torch.full((1, 3, 3), 0.5)
    similarity[0, 0, 0] = 0.9  # token 0 has one standout partner; the others are flat
    row_weights, _ = neighbourhood_weights(similarity, torch.eye(3)[None])
    assert row_weights[0, 0] > row_weights[0, 1]


def test_losses_are_finite_without_matches_and_for_constant_embeddings():
    no_match = torch.zeros(1, 4, 4)
    constant = torch.zeros(1, 4, 4)
    assert math.isfinite(p2s_loss(constant, no_match).item())
    assert math.isfinite(p2p_loss(log_sinkhorn(constant, torch.tensor(1.0), 10), no_match).item())
    assert math.isfinite(p2s_loss(constant, torch.eye(4)[None]).item())


def _p2s_reference(cosine: list[list[float]], pairs: dict[int, int]) -> float:
    """L_p2s by the formula of reference/s2dc.md §3, written out with plain loops (weights renormalised over
    matched tokens): ½ Σ_pos (ω^row_l + ω^col_s)(−log A_ls) + mean_neg −log(1 − A_ls), A = (1 + cos) / 2."""
    rows, cols = len(cosine), len(cosine[0])
    a = [[(1 + c) / 2 for c in row] for row in cosine]

    def peak_z(values: list[float]) -> float:
        return (max(values) - statistics.fmean(values)) / (statistics.stdev(values) + 1e-6)

    row_z = {l: peak_z(a[l]) for l in pairs}
    col_z = {s: peak_z([a[l][s] for l in range(rows)]) for s in pairs.values()}
    row_w = {l: math.exp(z) / sum(math.exp(v) for v in row_z.values()) for l, z in row_z.items()}
    col_w = {s: math.exp(z) / sum(math.exp(v) for v in col_z.values()) for s, z in col_z.items()}
    positive = 0.5 * sum((row_w[l] + col_w[s]) * -math.log(a[l][s]) for l, s in pairs.items())
    negatives = [-math.log(1 - a[l][s]) for l in range(rows) for s in range(cols) if pairs.get(l) != s]
    return positive + sum(negatives) / len(negatives)


def test_p2s_of_a_single_match_by_hand():
    cosine = torch.tensor([[[0.6, -0.2], [0.0, 0.2]]])  # similarities (1 + cos) / 2 = [[0.8, 0.4], [0.5, 0.6]]
    correspondence = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    # one match: both weights are 1, so the positive is ½ (−log 0.8 − log 0.8); negatives 0.4, 0.5, 0.6
    expected = -math.log(0.8) + (-math.log(0.6) - math.log(0.5) - math.log(0.4)) / 3
    assert expected == pytest.approx(0.9298981, abs=1e-7)
    assert p2s_loss(cosine, correspondence).item() == pytest.approx(expected, rel=1e-6)


def test_p2s_equals_the_written_out_formula_with_distinct_row_and_column_weights():
    torch.manual_seed(3)
    cosine = _tokens(1, 5, 4)[0] @ _tokens(1, 6, 4)[0].T  # (5, 6)
    pairs = {0: 2, 1: 0, 3: 5, 4: 1}
    correspondence = torch.zeros(1, 5, 6)
    for l, s in pairs.items():
        correspondence[0, l, s] = 1.0
    row_weights, col_weights = neighbourhood_weights((1 + cosine[None]) / 2, correspondence)
    matched_cols = torch.tensor(list(pairs.values()))
    assert not torch.allclose(row_weights[0, list(pairs)], col_weights[0, matched_cols], atol=1e-2)
    expected = _p2s_reference(cosine.tolist(), pairs)
    assert p2s_loss(cosine[None], correspondence).item() == pytest.approx(expected, rel=1e-5)


def test_p2s_weights_are_constants_for_the_gradient():
    cosine = (_tokens(1, 6, 4) @ _tokens(1, 6, 4).transpose(1, 2)).requires_grad_()
    correspondence = torch.eye(6)[None]
    p2s_loss(cosine, correspondence).backward()
    similarity = (1 + cosine.detach()) / 2
    row_weights, col_weights = neighbourhood_weights(similarity, correspondence)
    # d/dcos of ½ (ω^row_l + ω^col_l)(−log A_ll) with A = (1 + cos) / 2 and constant ω: −½ (ω^row + ω^col) / (2 A)
    expected = -0.5 * (row_weights + col_weights)[0] / (2 * similarity[0].diagonal())
    assert torch.allclose(cosine.grad[0].diagonal(), expected, rtol=1e-5)


def test_info_nce_by_hand():
    query = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    queue = torch.tensor([[0.0, 1.0]])
    # τ = 0.5. Query 0: logits (2, 0, 0) → −log(e² / (e² + 2)); query 1: logits (0, 2, 2) → −log(e² / (1 + 2e²))
    expected = (math.log(1 + 2 * math.exp(-2)) + math.log(2 + math.exp(-2))) / 2
    assert expected == pytest.approx(0.4990842, abs=1e-7)
    assert global_info_nce(query, keys, queue, temperature=0.5).item() == pytest.approx(expected, rel=1e-6)


def test_info_nce_is_log_of_candidates_when_nothing_is_distinguishable():
    same = F.normalize(torch.ones(3, 8), dim=-1)
    loss = global_info_nce(same, same, same[:2], temperature=0.2)
    assert torch.isclose(loss, torch.tensor(math.log(5.0)))


def test_info_nce_rewards_the_matching_key_and_uses_the_queue():
    query = F.normalize(torch.randn(4, 8), dim=-1)
    loss = global_info_nce(query, query, torch.empty(0, 8), temperature=0.2)
    shuffled = global_info_nce(query, query.roll(1, 0), torch.empty(0, 8), temperature=0.2)
    assert loss < shuffled
    assert global_info_nce(query, query, query.flip(0), temperature=0.2) > loss  # queue adds hard negatives


def test_info_nce_logits_stay_fp32_under_bf16_autocast():
    torch.manual_seed(4)
    query, keys, queue = (F.normalize(torch.randn(n, 32), dim=-1) for n in (6, 6, 10))
    reference = global_info_nce(query, keys, queue, temperature=0.05)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = global_info_nce(query, keys, queue, temperature=0.05)
    assert under_autocast.dtype == torch.float32
    assert under_autocast.item() == pytest.approx(reference.item(), abs=1e-5)  # bf16 logits are off by ~1e-2
