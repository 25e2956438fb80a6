"""Our L_p2s weighting (detached softmax over the matched tokens) against the official one (softmax over all
tokens, gradients through the weights), at the default S²DC geometry: 12×12×3 tokens of a 384×384×96 field.

Measures, over random teacher warps of the default ranges: the share of matched tokens; the total weight the
official positive term puts on matched tokens (ours: always 1); both loss values; and how far the student
gradients of the two variants point apart, and how much of that comes from the gradient through the
official weights (the official formula with detached weights as a third variant). Embeddings: the teacher tokens are random unit vectors and each
matched student token is its teacher token plus noise (a partly trained student); unmatched students are random.
Results go to benchmarks/results/p2s_weighting.md.

    python benchmarks/p2s_weighting.py [--warps 100] [--noise 0.5 2 8 1e6]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from torch.nn import functional as F

from mssl.config import S2DCConfig
from mssl.losses.s2dc import PROBABILITY_EPS, STD_EPS, _masked_mean, p2s_loss
from mssl.views.correspondence import UNMATCHED, correspondence_matrix, token_correspondence
from mssl.views.similarity_warp import random_similarity

RESULTS = Path(__file__).resolve().parent / "results" / "p2s_weighting.md"
FIELD, STRIDE, DIM = (384, 384, 96), 32, 512


def official_p2s(cosine: torch.Tensor, correspondence: torch.Tensor, detach: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """reference/s2dc.md §3: softmax weights over *all* tokens, not detached → (loss, matched weight mass)."""
    similarity = ((1 + cosine) / 2).clamp(PROBABILITY_EPS, 1 - PROBABILITY_EPS)
    scores = similarity.detach() if detach else similarity

    def peak_z(dim: int) -> torch.Tensor:
        return (scores.amax(dim) - scores.mean(dim)) / (scores.std(dim) + STD_EPS)

    row_weights, col_weights = peak_z(2).softmax(-1), peak_z(1).softmax(-1)
    nll = -similarity.log() * correspondence
    positive = 0.5 * ((nll * col_weights.unsqueeze(1)).sum((1, 2)) + (nll * row_weights.unsqueeze(2)).sum((1, 2)))
    negative = _masked_mean(-torch.log1p(-similarity), 1 - correspondence)
    matched_mass = 0.5 * ((row_weights * (correspondence.sum(2) > 0)).sum(1) + (col_weights * (correspondence.sum(1) > 0)).sum(1))
    return (positive + negative).mean(), matched_mass


def _students(teacher: torch.Tensor, match: torch.Tensor, noise: float) -> torch.Tensor:
    """Matched student = its teacher token + noise of norm ≈ ``noise``; unmatched students random; unit vectors."""
    partner = torch.gather(teacher, 1, match.clamp(min=0)[..., None].expand(-1, -1, teacher.shape[2]))
    noisy = F.normalize(partner + noise * torch.randn_like(partner) / teacher.shape[2] ** 0.5, dim=-1)
    return torch.where((match != UNMATCHED)[..., None], noisy, F.normalize(torch.randn_like(partner), dim=-1))


def _compare(student: torch.Tensor, teacher: torch.Tensor, correspondence: torch.Tensor) -> dict[str, float]:
    results = {}
    for variant in ("ours", "official", "official_detached"):
        tokens = student.clone().requires_grad_()
        cosine = tokens @ teacher.transpose(1, 2)
        if variant == "ours":
            loss, mass = p2s_loss(cosine, correspondence), torch.ones(cosine.shape[0])
        else:
            loss, mass = official_p2s(cosine, correspondence, detach=variant == "official_detached")
        loss.backward()
        results[variant] = (loss.item(), mass.detach(), tokens.grad.flatten(1))
    (ours_loss, _, ours_grad), (official_loss, official_mass, official_grad) = results["ours"], results["official"]
    detached_grad = results["official_detached"][2]
    return {
        "detach_cosine": F.cosine_similarity(detached_grad, official_grad, dim=1).median().item(),
        "ours": ours_loss,
        "official": official_loss,
        "mass": official_mass.median().item(),
        "cosine": F.cosine_similarity(ours_grad, official_grad, dim=1).median().item(),
        "norm_ratio": statistics.median((official_grad.norm(dim=1) / ours_grad.norm(dim=1)).tolist()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warps", type=int, default=100)
    parser.add_argument("--noise", type=float, nargs="+", default=[0.5, 2.0, 8.0, 1e6],
                        help="norms of the noise added to matched student tokens (1e6: students unrelated, as at init)")
    args = parser.parse_args()
    torch.manual_seed(0)
    config = S2DCConfig()
    warps = random_similarity(args.warps, FIELD, config.rotation_deg, config.scale_range, config.shift_fraction, torch.device("cpu"))
    match = token_correspondence(warps, FIELD, STRIDE)  # (W, N)
    n = match.shape[1]
    teacher = F.normalize(torch.randn(args.warps, n, DIM), dim=-1)
    correspondence = correspondence_matrix(match, n)
    matched = (match != UNMATCHED).sum(1).float()
    lines = [
        "# L_p2s weighting: ours vs official",
        "",
        f"`python benchmarks/p2s_weighting.py --warps {args.warps}`: {args.warps} teacher warps of the default ranges on a "
        f"{FIELD[0]}×{FIELD[1]}×{FIELD[2]} field, {n} tokens of stride {STRIDE} ({DIM}-d, unit norm); matched tokens per warp "
        f"min / median / max {int(matched.min())} / {int(matched.median())} / {int(matched.max())}. Each matched student token "
        "is its teacher token plus noise of the given norm; unmatched students are random. Ours: softmax weights over the "
        "matched tokens only, detached. Official: softmax over all tokens, gradients through the weights. Medians over warps.",
        "",
        "| noise norm | mean cos(student, its teacher) | L_p2s ours | L_p2s official | official weight mass on matched tokens | cos(grad ours, grad official) | ‖grad official‖ / ‖grad ours‖ | cos(grad official detached, grad official) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for noise in args.noise:
        student = _students(teacher, match, noise)
        agreement = (student * torch.gather(teacher, 1, match.clamp(min=0)[..., None].expand(-1, -1, DIM))).sum(-1)
        agreement = agreement[match != UNMATCHED].mean().item()
        row = _compare(student, teacher, correspondence)
        lines.append(
            f"| {noise:g} | {agreement:.3f} | {row['ours']:.4f} | {row['official']:.4f} | {row['mass']:.3f} | "
            f"{row['cosine']:.3f} | {row['norm_ratio']:.3f} | {row['detach_cosine']:.3f} |"
        )
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
