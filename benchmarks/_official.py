"""One training step of the official S²DC or GVSL code, built from a user's checkout (never vendored here).

The measuring worker puts the checkout on sys.path and imports its modules. The official code targets CUDA,
so `run_on_cpu` neutralises its device moves at run time; every such change is named in the returned
`patches` so the report can say what was altered.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import types
from collections.abc import Callable
from pathlib import Path

REPOSITORIES = {"s2dc": "github.com/Ashespt/S2DC", "gvsl": "github.com/YutingHe-list/GVSL"}
# the source folder of each checkout and the files the adapters import from it
SOURCES = {
    "s2dc": ("Pretrain", ("models/s2dc_head.py", "losses/loss.py", "losses/optimal_transport.py")),
    "gvsl": ("PyTorch", ("models/gvsl.py", "utils/STN.py", "utils/Transform_self.py", "utils/losses.py")),
}
# files the adapters import that a checkout may lack: then a stand-in written from the specification is used
STAND_INS = {"s2dc": ("losses/utils.py",)}
MATCH_LOSS_STAND_IN = (
    "losses/utils.py absent from the available copy; MatchLoss replaced by a stand-in from the specification "
    "(cost: a few element-wise ops on the token plan)"
)
# S²DC modules that s2dc_head.py imports but the training step never uses: the first two were never committed
# upstream; the last two pull in optional visualisation packages. Replaced by stubs only when they fail to import.
S2DC_UNUSED_IMPORTS = ("utils.superglue", "losses.coderating", "models.modules", "utils.visualization")
S2DC_HEAD_HIDDEN, S2DC_HEAD_OUT = 2048, 512  # the projection heads' widths in s2dc_head.py
# The official code lays crops out on a square n × n in-plane grid (its data loader builds roi_large × roi_large × roi
# fields; s2dc_head.py derives the grid side from roi_large alone). For a rectangular grid (e.g. 2 × 1 crops of 96³)
# the worker reads s2dc_head.py from the checkout and runs it with these substitutions, which give the y side its own
# roi_large_y and otherwise leave every operation as it is: (old, new, times it must occur in the file).
S2DC_RECTANGULAR_GRID = (
    ("self.num_crops_side = args.roi_large//args.roi_z", "self.num_crops_side = (args.roi_large//args.roi_z, args.roi_large_y//args.roi_z)", 1),
    ("self.num_crops = int((self.args.roi_large//self.args.roi_x)**2)",
     "self.num_crops = int((self.args.roi_large//self.args.roi_x)*(self.args.roi_large_y//self.args.roi_y))", 1),
    ("n_c_s*n_t_s,n_c_s*n_t_s", "n_c_s[0]*n_t_s,n_c_s[1]*n_t_s", 2),
    ("for i in range(n_c_s):", "for i in range(n_c_s[0]):", 2),
    ("for j in range(n_c_s):", "for j in range(n_c_s[1]):", 2),
    ("i*n_c_s+j", "i*n_c_s[1]+j", 2),
)


def checkout_problem(method: str, directory: Path) -> str | None:
    """Why `directory` cannot serve as the official checkout of `method`, or None when it can."""
    source, files = SOURCES[method]
    if not directory.is_dir():
        return f"{directory}: no such directory (expected a git checkout of {REPOSITORIES[method]})"
    for name in files:
        if not (directory / source / name).is_file():
            return f"{directory}: not a checkout of {REPOSITORIES[method]} (missing {source}/{name})"
    return None  # a file of STAND_INS may be missing: the adapter then uses its stand-in


def match_loss_terms(plan, labels):
    """The official `losses.utils.MatchLoss` (absent from the stored copy of the repository) as its specification
    states it (shared/reference/s2dc.md §2), written from the formula, not from its code.

    With the plan P clamped to [1e-6, 1 − 1e-6] and the labels Y: loss = mean over Y = 1 of −log P + mean over
    Y = 0 of −log(1 − P). Returns (loss, positive term, negative term), as GeometricLoss unpacks them. A term with
    no entry is 0 (the specification's weight-0 dummy entry).
    """
    import torch

    plan = plan.clamp(1e-6, 1 - 1e-6)
    positive, negative = (labels == 1).to(plan.dtype), (labels == 0).to(plan.dtype)
    pos_loss = (-torch.log(plan) * positive).sum() / positive.sum().clamp(min=1)
    neg_loss = (-torch.log(1 - plan) * negative).sum() / negative.sum().clamp(min=1)
    return pos_loss + neg_loss, pos_loss, neg_loss


def match_loss_module() -> types.ModuleType:
    """A module standing in for the official `losses.utils`: its `MatchLoss` is a torch Module (GeometricLoss calls
    `.cuda()` on it) computing `match_loss_terms`."""
    import torch

    class MatchLoss(torch.nn.Module):
        def forward(self, plan, labels):
            return match_loss_terms(plan, labels)

    module = types.ModuleType("losses.utils", "Stand-in written from the specification, not the official file (benchmarks/_official.py)")
    module.MatchLoss = MatchLoss
    return module


def _stand_in_match_loss(checkout: Path) -> list[str]:
    """Install the MatchLoss stand-in as `losses.utils` when the checkout lacks that file; returns what was stood in."""
    source, _ = SOURCES["s2dc"]
    if all((checkout / source / name).is_file() for name in STAND_INS["s2dc"]):
        return []
    import losses  # the checkout's package (its folder is on sys.path)

    module = match_loss_module()
    sys.modules["losses.utils"] = module
    losses.utils = module
    return [MATCH_LOSS_STAND_IN]


def run_on_cpu() -> list[str]:
    """Make the official code's unconditional CUDA moves no-ops; returns what was patched."""
    import torch

    to = torch.Tensor.to

    def to_without_cuda(self, *args, **kwargs):
        device = kwargs.get("device", args[0] if args else None)
        if isinstance(device, (str, torch.device)) and torch.device(device).type == "cuda":
            return self
        return to(self, *args, **kwargs)

    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.nn.Module.cuda = lambda self, *args, **kwargs: self
    torch.Tensor.to = to_without_cuda
    return ["torch.Tensor.cuda and torch.nn.Module.cuda return their object unchanged", 'tensor.to("cuda") returns the tensor']


def _import_checkout(method: str, checkout: Path) -> None:
    source, _ = SOURCES[method]
    sys.path.insert(0, str(checkout / source))


def _stub(module: str) -> types.ModuleType:
    """A module whose every public name is a function that fails when called."""

    def attribute(name: str) -> Callable:
        if name.startswith("__"):  # keep introspection (inspect, torch._dynamo) working
            raise AttributeError(name)

        def fail(*args, **kwargs):
            raise RuntimeError(f"{module}.{name} is a stub: the benchmark does not expect the training step to use it")

        return fail

    stub = types.ModuleType(module)
    stub.__getattr__ = attribute
    return stub


def _stub_unused_imports() -> list[str]:
    stubbed = []
    for module in S2DC_UNUSED_IMPORTS:
        try:
            importlib.import_module(module)
        except ImportError as error:
            sys.modules[module] = _stub(module)
            stubbed.append(f"{module} (unused import; {error})")
    return stubbed


def substituted_source(source: str, substitutions: tuple[tuple[str, str, int], ...], name: str) -> str:
    """`source` with each (old, new, times) substitution applied; a file where `old` does not occur exactly `times`
    times is not the revision the substitutions were written for, and stops the worker."""
    for old, new, times in substitutions:
        found = source.count(old)
        if found != times:
            raise RuntimeError(f"{name}: expected {times} occurrence(s) of {old!r}, found {found} (not the revision this adapter patches)")
        source = source.replace(old, new)
    return source


def _import_with_rectangular_grid(checkout: Path) -> str:
    """Import the checkout's models.s2dc_head with S2DC_RECTANGULAR_GRID applied to its source; returns the patch note."""
    import models  # the checkout's package (its folder is on sys.path)

    source, _ = SOURCES["s2dc"]
    path = checkout / source / "models" / "s2dc_head.py"
    code = substituted_source(path.read_text(encoding="utf-8"), S2DC_RECTANGULAR_GRID, "models/s2dc_head.py")
    module = types.ModuleType("models.s2dc_head")
    module.__file__ = str(path)
    sys.modules["models.s2dc_head"] = module
    models.s2dc_head = module
    exec(compile(code, str(path), "exec"), module.__dict__)
    return (
        "models/s2dc_head.py run with its square crop grid (side roi_large // roi) generalised to a rectangular one "
        f"(roi_large_y for the y side; {sum(times for *_, times in S2DC_RECTANGULAR_GRID)} substitutions, same operations), "
        "as the field is not square"
    )


def s2dc_step(checkout: Path, field_size: tuple[int, int, int], roi: int, feature_size: int, anomaly: bool) -> tuple[Callable, dict]:
    """Official S²DC step as in Pretrain/main.py with the train.sh flags: the student/teacher model and GeCoLoss
    on one field's grid crops (MetaTensors, as its MONAI loader yields), backward, AdamW step.

    The field is one crop deep and tiled by nx × ny crops in-plane (nx = field x / roi, ny = field y / roi); the
    official code handles nx = ny as shipped, and nx ≠ ny with S2DC_RECTANGULAR_GRID (named in the patches).
    The view generation of its data loader is not part of the step. Returns (step, facts).
    """
    import torch
    from monai.data import MetaTensor

    side_x, side_y, depth = field_size
    if depth != roi or side_x % roi or side_y % roi:
        raise ValueError(f"official S²DC needs a field one crop deep and tiled in-plane by crops of {roi}, got {field_size}")
    nx, ny = side_x // roi, side_y // roi
    patches = run_on_cpu()
    _import_checkout("s2dc", checkout)
    stubbed = _stand_in_match_loss(checkout) + _stub_unused_imports()
    if nx != ny:
        patches.append(_import_with_rectangular_grid(checkout))
    from models.s2dc_head import S2DCTokenHead, projection_head

    args = argparse.Namespace(  # train.sh flags and main.py defaults, at this configuration's sizes
        spatial_dims=3, in_channels=1, feature_size=feature_size, dropout_path_rate=0.0, use_checkpoint=False,
        use_last_layer=True, use_geo=True, use_cl=True, sinkhorn=True, num_geo_layer=-1, batch_size=1,
        roi_large=side_x, roi_large_y=side_y, roi_x=roi, roi_y=roi, roi_z=roi, weight_p2p=0.5, weight_p2s=0.5, weight_global=0.5,
    )
    torch.manual_seed(0)
    model = S2DCTokenHead(args, exp=90, num_patch_side=nx)
    bottleneck = 16 * feature_size
    if bottleneck != 768:  # its heads are hard-wired to the bottleneck width of feature size 48
        for network in (model.student, model.teacher):
            network.proj_head_geo = projection_head(bottleneck, S2DC_HEAD_HIDDEN, S2DC_HEAD_OUT)
            network.proj_head_cl = projection_head(bottleneck, S2DC_HEAD_HIDDEN, S2DC_HEAD_OUT)
        model.teacher.load_state_dict(model.student.state_dict())
        model.teacher.requires_grad_(False)
        patches.append(f"projection heads rebuilt with its own projection_head for input width {bottleneck} (hard-wired 768)")
    torch.autograd.set_detect_anomaly(anomaly)  # main.py turns it on for the whole run
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    crops = nx * ny
    views = {key: MetaTensor(torch.rand(crops, 1, roi, roi, roi)) for key in ("src", "aug_full", "aug_crop")}
    tokens = crops * 3 * 3  # 3 × 3 bottleneck tokens per crop in-plane (hard-wired in s2dc_head.py)
    views["gt"] = torch.eye(tokens)[None]  # correspondence labels: their values do not change the cost

    def step() -> None:
        loss = model(views)[0]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return step, {"patches": patches, "stubbed": stubbed, "trainable_parameters": trainable}


def gvsl_step(checkout: Path, size: int) -> tuple[Callable, dict]:
    """Official GVSL step as in Train_GVSL.py (batch of 1 pair): appearance damage of image 1 (numpy), one shared
    spatial augmentation of the clean, damaged and second image, GVSL forward, NCC + MSE + smoothness, backward,
    Adam step. Returns (step, facts)."""
    import numpy as np
    import torch

    patches = run_on_cpu()
    _import_checkout("gvsl", checkout)
    from models.gvsl import GVSL
    from utils.losses import MSE, gradient_loss, ncc_loss
    from utils.Transform_self import AppearanceTransform, SpatialTransform

    np.random.seed(0)
    torch.manual_seed(0)
    rotation = (-np.pi / 9, np.pi / 9)  # Train_GVSL.py's two departures from SpatialTransform's defaults
    spatial = SpatialTransform(angle_x=rotation, angle_y=rotation, angle_z=rotation, sigma=(10.0, 13.0))
    appearance = AppearanceTransform(local_rate=0.8, nonlinear_rate=0.9, paint_rate=0.9, inpaint_rate=0.2)
    model = GVSL()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    first, second = torch.rand(1, 1, size, size, size), torch.rand(1, 1, size, size, size)

    def step() -> None:
        damaged = torch.from_numpy(appearance.rand_aug(first.numpy()[0].copy())[np.newaxis])
        matrix, field = spatial.rand_coords(first.shape[2:])
        damaged, clean, moving = (spatial.augment_spatial(image, matrix, field) for image in (damaged, first, second))
        restored, warped, _, flow = model(damaged, moving)
        loss = ncc_loss(warped, clean) + MSE(restored, clean) + gradient_loss(flow)
        loss.backward()
        optimizer.step()
        model.zero_grad()
        optimizer.zero_grad()

    return step, {"patches": patches, "stubbed": [], "trainable_parameters": sum(p.numel() for p in model.parameters())}
