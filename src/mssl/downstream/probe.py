"""``mssl.probe``: frozen-feature probes that say in minutes on a CPU whether an encoder learned anything.

Two probes on frozen features, for the pre-trained and a randomly initialised encoder of the same
architecture. ``features="encoder"`` reads the encoder's pyramid (decoder skipped); ``"decoder"`` reads
the full network's last decoder map, one full-resolution level, so the voxel probe is the 1×1×1
convolution of GVSL's linear protocol (only where pre-training trained the decoder):

- per-voxel linear segmentation: every pyramid map, upsampled to full resolution (trilinear), feeds
  one linear classifier. Training samples voxels per class (features read with ``grid_sample`` at the
  exact points trilinear upsampling would produce); prediction applies the classifier per level at
  low resolution and upsamples the logits, which is the same linear map without ever building the
  full-resolution feature stack. Class-balanced sampling is undone by logit adjustment (the log of
  the true over the sampled class frequency), and partial labels use the marginal loss.
- patch classification: cubes of ``patch`` voxels labelled by their dominant contoured organ (cubes
  without enough foreground are left out), pooled pyramid features → kNN (cosine) and logistic
  regression; accuracy and balanced accuracy on the test cases' cubes.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import torch
from monai import transforms as mt
from rich.console import Console
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, balanced_accuracy_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch.nn import functional as F

from mssl.config import FeatureSource, backbone_stride, build_config
from mssl.data.preprocess import PresetConfig
from mssl.downstream.config import ProbeConfig
from mssl.downstream.datasets import Dataset, case_dict, data_channels, labelled_subset, preprocessing
from mssl.downstream.metrics import segmentation_metrics
from mssl.downstream.partial_labels import marginal_log_probs
from mssl.downstream.pretrained import PretrainedInfo, load_encoder
from mssl.downstream.run_files import write_json
from mssl.downstream.setup import resolve_setup
from mssl.methods import trains_decoder
from mssl.models.backbones import build_backbone
from mssl.models.features import Backbone
from mssl.runs import ProbeFolder
from mssl.weights.load_report import LoadReport, module_of

PATCH_FOREGROUND_FRACTION = 0.05  # a cube is labelled when its dominant organ fills at least this share
LINEAR_PROBE_LR = 0.05
FEATURE_NAMES = {"encoder": "encoder pyramid", "decoder": "last decoder map (1×1×1 linear)"}


@dataclass
class EncoderProbe:
    """Scores of one encoder: per-class test Dice of the voxel probe and patch-classification accuracies."""

    encoder: str
    dice: dict[str, float]
    mean_dice: float
    knn_accuracy: float
    knn_balanced_accuracy: float
    linear_accuracy: float
    linear_balanced_accuracy: float
    seconds: float
    patch_note: str = ""  # why the patch scores are NaN, when they are


@dataclass
class ProbeResult:
    """Probe scores of the pre-trained encoder (None without weights) and of the random baseline."""

    pretrained: EncoderProbe | None
    random: EncoderProbe | None
    train_cases: list[str]
    test_cases: list[str]
    features: FeatureSource = "encoder"

    def markdown(self) -> str:
        rows = [p for p in (self.pretrained, self.random) if p is not None]
        classes = list(rows[0].dice) if rows else []
        lines = [
            f"Frozen-feature probes on the {FEATURE_NAMES[self.features]} · {len(self.train_cases)} training cases, {len(self.test_cases)} test cases",
            "",
            "| encoder | voxel probe mean Dice | " + " | ".join(classes) + " | patch kNN acc (bal.) | patch linear acc (bal.) |",
            "|---|---|" + "---|" * len(classes) + "---|---|",
        ]
        for p in rows:
            lines.append(
                f"| {p.encoder} | {p.mean_dice:.3f} | "
                + " | ".join(f"{p.dice[c]:.3f}" for c in classes)
                + f" | {p.knn_accuracy:.3f} ({p.knn_balanced_accuracy:.3f}) | {p.linear_accuracy:.3f} ({p.linear_balanced_accuracy:.3f}) |"
            )
        notes = sorted({f"{p.encoder}: {p.patch_note}" for p in rows if p.patch_note})
        return "\n".join(lines + ([""] + notes if notes else [])) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def pyramid_features(encoder: Backbone, image: torch.Tensor, features: FeatureSource = "encoder") -> list[torch.Tensor]:
    """The probed maps, each (C_l, *S_l), for one image (1, *S): the encoder's (finest → coarsest) or the
    last decoder map alone."""
    encoder.eval()
    batch = image.unsqueeze(0).to(next(encoder.parameters()).device)  # a training backbone may sit on a GPU
    if features == "decoder":
        return [encoder(batch).local[0].float().cpu()]
    return [level[0].float().cpu() for level in encoder(batch, decode=False).pyramid]


def sample_points(pyramid: Sequence[torch.Tensor], points: torch.Tensor, full_size: Sequence[int]) -> torch.Tensor:
    """Features (N, ΣC_l) at integer voxel ``points`` (N, 3) of the full grid, as trilinear upsampling
    (``align_corners=False``, clamped borders) of every level would give them."""
    size = torch.tensor(full_size, dtype=torch.float32)
    normalised = (2 * (points.float() + 0.5) / size - 1).flip(-1)  # grid_sample wants (z, y, x) → (x, y, z) order
    grid = normalised.view(1, -1, 1, 1, 3)
    sampled = [
        F.grid_sample(level.unsqueeze(0), grid, mode="bilinear", padding_mode="border", align_corners=False)[0, :, :, 0, 0].T
        for level in pyramid
    ]
    return torch.cat(sampled, dim=1)


def balanced_voxels(label: torch.Tensor, present: torch.Tensor, per_class: int, generator: torch.Generator) -> torch.Tensor:
    """Up to ``per_class`` random voxel indices (N, 3) of every contoured class (background included)."""
    chosen = []
    for c in torch.nonzero(present).flatten().tolist():
        where = torch.nonzero(label == c)
        if len(where):
            chosen.append(where[torch.randperm(len(where), generator=generator)[:per_class]])
    return torch.cat(chosen)


class VoxelProbe:
    """Linear per-voxel classifier on standardised pyramid features, fitted with the marginal loss."""

    def __init__(self, channels: Sequence[int], num_classes: int) -> None:
        self.channels = list(channels)
        self.linear = torch.nn.Linear(sum(channels), num_classes)

    def fit(self, features: torch.Tensor, labels: torch.Tensor, present: torch.Tensor, log_prior_ratio: torch.Tensor, steps: int) -> None:
        """features (N, C), labels (N,), present (N, K) bool; the ratio corrects class-balanced sampling."""
        self.mean = features.mean(0)
        self.std = features.std(0).clamp_min(1e-6)
        standardised = (features - self.mean) / self.std
        optimizer = torch.optim.Adam(self.linear.parameters(), lr=LINEAR_PROBE_LR)
        for _ in range(steps):
            log_probs = marginal_log_probs(self.linear(standardised), present)
            loss = F.nll_loss(log_probs.clamp_min(torch.finfo(log_probs.dtype).min), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            self.linear.bias += log_prior_ratio

    @torch.no_grad()
    def predict(self, pyramid: Sequence[torch.Tensor], full_size: Sequence[int]) -> torch.Tensor:
        """Label map (*S): the standardisation folded into the weights, applied per level, logits upsampled."""
        weight = self.linear.weight / self.std  # (K, C)
        bias = self.linear.bias - weight @ self.mean
        logits = bias.view(-1, 1, 1, 1).expand(-1, *full_size).clone()
        for level, w in zip(pyramid, torch.split(weight, self.channels, dim=1)):
            low = torch.einsum("kc,cxyz->kxyz", w, level)
            logits += F.interpolate(low.unsqueeze(0), size=tuple(full_size), mode="trilinear", align_corners=False)[0]
        return logits.argmax(0)


def patch_samples(pyramid: Sequence[torch.Tensor], label: torch.Tensor, present: torch.Tensor, patch: int) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features (P, ΣC) and dominant-organ labels (P,) of the cubes with enough contoured foreground."""
    grid = [s // patch for s in label.shape]
    if min(grid) < 1:
        return np.zeros((0, sum(p.shape[0] for p in pyramid)), np.float32), np.zeros(0, np.int64)
    cropped = label[: grid[0] * patch, : grid[1] * patch, : grid[2] * patch].long()
    counts = F.one_hot(cropped, len(present)).permute(3, 0, 1, 2).float()  # (K, X, Y, Z)
    counts = F.avg_pool3d(counts.unsqueeze(0), patch)[0] * patch**3  # (K, gx, gy, gz) voxels per class and cube
    counts[0] = 0
    counts[~present] = 0
    dominant_count, dominant = counts.max(0)
    keep = dominant_count >= PATCH_FOREGROUND_FRACTION * patch**3
    pooled = torch.cat([F.adaptive_avg_pool3d(level.unsqueeze(0), grid)[0] for level in pyramid])  # (ΣC, gx, gy, gz)
    return pooled[:, keep].T.numpy(), dominant[keep].numpy()


def _patch_scores(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], k: int, seed: int, patch: int) -> dict[str, Any]:
    (x_train, y_train), (x_test, y_test) = train, test
    if len(np.unique(y_train)) < 2 or not len(y_test):
        note = (
            f"no patch scores: cubes of {patch} voxels with at least {PATCH_FOREGROUND_FRACTION:.0%} of one organ: "
            f"{len(y_train)} in the training cases ({len(np.unique(y_train))} organs; 2 needed), {len(y_test)} in the test cases "
            f"(need ≥ 1); organs are small at this spacing, try a smaller patch (e.g. {max(4, patch // 2)})"
        )
        return {**dict.fromkeys(("knn_accuracy", "knn_balanced_accuracy", "linear_accuracy", "linear_balanced_accuracy"), float("nan")), "patch_note": note}
    knn = make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=min(k, len(y_train)), metric="cosine")).fit(x_train, y_train)
    linear = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1, random_state=seed)).fit(x_train, y_train)
    knn_pred, linear_pred = knn.predict(x_test), linear.predict(x_test)
    return {
        "knn_accuracy": float(accuracy_score(y_test, knn_pred)),
        "knn_balanced_accuracy": float(balanced_accuracy_score(y_test, knn_pred)),
        "linear_accuracy": float(accuracy_score(y_test, linear_pred)),
        "linear_balanced_accuracy": float(balanced_accuracy_score(y_test, linear_pred)),
    }


@dataclass
class ProbeData:
    """The preprocessed cases the probes fit on and score on, loaded once per probe run (or training run)."""

    class_names: list[str]
    reported: list[int]  # class indices whose Dice is reported
    train_cases: list[str]
    test_cases: list[str]
    train_items: list[dict[str, Any]]
    test_items: list[dict[str, Any]]


def load_probe_data(config: ProbeConfig, dataset: Dataset, preset: PresetConfig, stride: int) -> ProbeData:
    """The seeded ``train_cases`` of the train split and the first ``test_cases`` of the test split,
    preprocessed with ``preset`` and padded/cropped to ``config.size`` (default: the next multiple of ``stride``)."""
    class_names = dataset.class_names
    reported = list(range(1, len(class_names))) if config.classes is None else [class_names.index(c) for c in config.classes if c in class_names]
    if config.classes is not None and len(reported) != len(config.classes):
        raise ValueError(f"classes {config.classes} are not all in the dataset's labels {class_names[1:]}")
    train_cases = labelled_subset(dataset.splits["train"], config.train_cases, config.seed)
    test_cases = sorted(dataset.splits["test"], key=lambda c: c.case_id)[: config.test_cases]
    shape = mt.ResizeWithPadOrCropd(["image", "label"], spatial_size=config.size) if config.size else mt.DivisiblePadd(["image", "label"], k=stride)
    # Plain tensors from here on: MetaTensor bookkeeping dominated the probe's fit and feature sampling.
    plain = mt.EnsureTyped(["image", "label"], track_meta=False)
    transform = mt.Compose([preprocessing(preset, with_label=True), shape, plain])
    return ProbeData(
        class_names=class_names,
        reported=reported,
        train_cases=[c.case_id for c in train_cases],
        test_cases=[c.case_id for c in test_cases],
        train_items=[transform(case_dict(c, class_names, with_label=True)) for c in train_cases],
        test_items=[transform(case_dict(c, class_names, with_label=True)) for c in test_cases],
    )


def probe_encoder(name: str, encoder: Backbone, data: ProbeData, config: ProbeConfig) -> EncoderProbe:
    """Fit both probes on ``data.train_items`` and score them on ``data.test_items``."""
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(config.seed)
    num_classes = len(data.class_names)
    features, labels, presents, patches_x, patches_y = [], [], [], [], []
    voxel_counts, sampled_counts = torch.zeros(num_classes), torch.zeros(num_classes)
    channels: list[int] = []
    for item in data.train_items:
        image, label, present = item["image"], item["label"][0].long(), item["present"]
        pyramid = pyramid_features(encoder, image, config.features)
        channels = [level.shape[0] for level in pyramid]
        points = balanced_voxels(label, present, config.voxels_per_class, generator)
        point_labels = label[points[:, 0], points[:, 1], points[:, 2]]
        features.append(sample_points(pyramid, points, label.shape))
        labels.append(point_labels)
        presents.append(present.expand(len(points), -1))
        voxel_counts += torch.bincount(label.flatten(), minlength=num_classes).float()
        sampled_counts += torch.bincount(point_labels, minlength=num_classes).float()
        x, y = patch_samples(pyramid, label, present, config.patch)
        patches_x.append(x)
        patches_y.append(y)
    seen = sampled_counts > 0
    # classes no training case contours are never predicted (-inf), as in fine-tuning
    log_prior_ratio = torch.full((num_classes,), float("-inf"))
    log_prior_ratio[seen] = (voxel_counts[seen] / voxel_counts.sum()).log() - (sampled_counts[seen] / sampled_counts.sum()).log()
    torch.manual_seed(config.seed)  # before the classifier's initialisation: its scores must not depend on what ran before
    voxel_probe = VoxelProbe(channels, num_classes)
    voxel_probe.fit(torch.cat(features), torch.cat(labels), torch.cat(presents), log_prior_ratio, config.fit_steps)

    dice_by_class: dict[int, list[float]] = {c: [] for c in data.reported}
    test_x, test_y = [], []
    for item in data.test_items:
        label, present = item["label"][0].long(), item["present"]
        pyramid = pyramid_features(encoder, item["image"], config.features)
        prediction = voxel_probe.predict(pyramid, label.shape)
        dice = segmentation_metrics(prediction, label, num_classes, (1.0, 1.0, 1.0), present, with_hd95=False).dice
        for c in data.reported:
            dice_by_class[c].append(float(dice[c - 1]))
        x, y = patch_samples(pyramid, label, present, config.patch)
        test_x.append(x)
        test_y.append(y)
    per_class = {data.class_names[c]: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for c, v in dice_by_class.items()}
    measured = [v for v in per_class.values() if math.isfinite(v)]
    patch = _patch_scores(
        (np.concatenate(patches_x), np.concatenate(patches_y)), (np.concatenate(test_x), np.concatenate(test_y)), config.knn_k, config.seed, config.patch
    )
    return EncoderProbe(
        encoder=name,
        dice=per_class,
        mean_dice=float(np.mean(measured)) if measured else float("nan"),
        seconds=time.perf_counter() - start,
        **patch,
    )


def check_decoder_trained(encoder: Backbone, pretrained: PretrainedInfo, report: LoadReport) -> None:
    """``features="decoder"`` probes a decoder only where pre-training trained one and the weights hold it."""
    if pretrained.method is not None and not trains_decoder(pretrained.method):
        raise ValueError(
            f"{pretrained.path}: features 'decoder' needs a trained decoder, but {pretrained.method} pre-training trains only "
            f"the encoder (its decoder stays at initialisation); probe with features 'encoder'"
        )
    untrained = sorted({module_of(key) for key in report.missing if module_of(key) in encoder.decoder_names})
    if untrained:
        raise ValueError(f"{pretrained.path}: features 'decoder' needs decoder weights, but the file has none for {', '.join(untrained)}; probe with features 'encoder'")


def probe(config: ProbeConfig | None = None, console: Console | None = None, **overrides: Any) -> ProbeResult:
    """Probe the pre-trained encoder behind ``weights`` against a random one of the same architecture.

    ``mssl.probe(weights="runs/s2dc", data="dataset.json")`` ≡ ``mssl probe --weights runs/s2dc --data dataset.json``.
    """
    config = build_config(ProbeConfig, config, **overrides)
    console = console or Console()
    setup = resolve_setup(config, config.weights, config.backbone)
    data = load_probe_data(config, setup.dataset, setup.preset, backbone_stride(setup.backbone))
    setup.match_channels(data_channels(data.train_items + data.test_items, setup.dataset.path))
    console.print(
        f"[bold]probe[/] {setup.backbone.name} {FEATURE_NAMES[config.features]} · {len(data.train_items)} train / "
        f"{len(data.test_items)} test cases · preset {setup.preset.name}"
    )

    results: dict[str, EncoderProbe] = {}
    if config.weights is not None:
        encoder = build_backbone(setup.backbone)
        report = load_encoder(encoder, config.weights, console)
        if config.features == "decoder" and setup.pretrained is not None:
            check_decoder_trained(encoder, setup.pretrained, report)
        results["pretrained"] = probe_encoder("pretrained", encoder, data, config)
        console.print(f"pretrained: mean Dice {results['pretrained'].mean_dice:.3f} ({results['pretrained'].seconds:.0f} s)")
    if config.random_baseline or config.weights is None:
        torch.manual_seed(config.seed)
        random_encoder = build_backbone(setup.backbone)
        results["random"] = probe_encoder("random", random_encoder, data, config)
        console.print(f"random: mean Dice {results['random'].mean_dice:.3f} ({results['random'].seconds:.0f} s)")
    result = ProbeResult(
        pretrained=results.get("pretrained"),
        random=results.get("random"),
        train_cases=data.train_cases,
        test_cases=data.test_cases,
        features=config.features,
    )
    console.print(result.markdown())
    if config.out is not None:
        files = ProbeFolder(config.out)
        write_json(files.result, {**result.to_dict(), "config": config.model_dump(mode="json")})
        files.report.write_text(result.markdown(), encoding="utf-8")
    return result
