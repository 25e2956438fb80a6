import math

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
