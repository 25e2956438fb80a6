import torch

from mssl.models.heads import ProjectionHead


def _head() -> ProjectionHead:
    torch.manual_seed(0)
    return ProjectionHead(in_features=6, hidden_features=32, out_features=8)


def test_embeddings_are_l2_normalised():
    out = _head()(5 * torch.randn(2, 10, 6))
    assert out.shape == (2, 10, 8)
    assert torch.allclose(out.norm(dim=-1), torch.ones(2, 10), atol=1e-5)


def test_batchnorm_standardises_each_feature_over_all_tokens_of_all_samples():
    head = _head()
    hidden = []
    for index in (1, 4):  # the two BatchNorm layers
        head.mlp[index].register_forward_hook(lambda _m, _i, out: hidden.append(out.detach().clone()))  # before the in-place ReLU
    tokens = torch.randn(3, 12, 6) * torch.tensor([1.0, 5.0, 0.1, 2.0, 3.0, 1.0]) + 4.0  # (B, N, D), uneven features
    head(tokens)
    for out in hidden:  # (B·N, hidden): zero mean, unit variance per feature over the 36 tokens
        assert out.shape == (36, 32)
        assert out.mean(0).abs().max() < 1e-4
        assert (out.var(0, unbiased=False) - 1).abs().max() < 1e-3


def test_leading_axes_only_batch_the_tokens():
    head = _head()
    tokens = torch.randn(3, 12, 6)
    assert torch.allclose(head(tokens), head(tokens.reshape(36, 6)).reshape(3, 12, 8), atol=1e-6)


def test_embeddings_are_float32_unit_vectors_under_bf16_autocast():
    head, tokens = _head(), torch.randn(2, 10, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(tokens)
    assert out.dtype == torch.float32  # the cosine / InfoNCE logits start from fp32 unit vectors
    assert torch.allclose(out.norm(dim=-1), torch.ones(2, 10), atol=1e-6)  # bf16 normalisation is off by ~4e-3
