"""Mutation check: undo each S²DC / GVSL fix (issue 15) in a scratch copy of src/ and see whether a test notices.

Each mutant is one text substitution in one source file (the text must occur exactly as often as stated,
so a stale mutant fails loudly instead of silently testing nothing). The scratch copy is put first on
PYTHONPATH and only the tests relevant to the mutant run, in one process with one thread. A mutant is
*killed* when those tests fail, *survived* when they pass. The unmutated copy runs first: its tests must pass.
Results go to benchmarks/results/mutation_check.md; the exit code is 1 if any mutant survived.

    python benchmarks/mutation_check.py [--only NAME ...]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "mutation_check.md"
ENV = {"OMP_NUM_THREADS": "1", "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000", "OMP_WAIT_POLICY": "PASSIVE"}
FAST_GVSL_METHOD = "tests/methods/test_gvsl_method.py", "-k", "not bf16 and not swin"  # those two alone take > 1 min


@dataclass(frozen=True)
class Mutant:
    name: str
    what: str  # the official behaviour (or regression) the mutant brings back
    path: str  # under src/mssl
    old: str
    new: str
    tests: tuple[str, ...]  # pytest arguments
    count: int = 1  # occurrences of ``old`` that are replaced


MUTANTS = [
    # ---- S²DC ----
    Mutant("s2dc_no_tau_division", "Sinkhorn on raw cosine (official near-uniform plan)", "methods/s2dc.py",
           "log_sinkhorn(cosine / config.tau_ot,", "log_sinkhorn(cosine,", ("tests/methods/test_s2dc_method.py",)),
    Mutant("s2dc_tau_default_1", "tau_ot default 1.0", "config.py",
           "tau_ot: float = Field(0.1, gt=0)", "tau_ot: float = Field(1.0, gt=0)", ("tests/methods/test_s2dc_method.py",)),
    Mutant("head_no_l2_norm", "projection head without L2 normalisation", "models/heads.py",
           "return F.normalize(projected.float(), dim=-1).reshape(", "return projected.float().reshape(", ("tests/models/test_heads.py",)),
    Mutant("head_norm_wrong_axis", "head normalises each token over its features, not each feature over tokens",
           "models/heads.py", "nn.BatchNorm1d(hidden_features, track_running_stats=False)",
           "nn.LayerNorm(hidden_features)", ("tests/models/test_heads.py",), count=2),
    Mutant("p2p_no_negative", "L_p2p without its negative term", "losses/s2dc.py",
           "negative = _masked_mean(-torch.log1p(-log_p.exp()), 1 - correspondence)\n    return (positive + negative).mean()",
           "negative = _masked_mean(-torch.log1p(-log_p.exp()), 1 - correspondence)\n    return positive.mean()",
           ("tests/losses/test_s2dc_losses.py",)),
    Mutant("p2s_no_negative", "L_p2s without its negative term", "losses/s2dc.py",
           "negative = _masked_mean(-torch.log1p(-similarity), 1 - correspondence)\n    return (positive + negative).mean()",
           "negative = _masked_mean(-torch.log1p(-similarity), 1 - correspondence)\n    return positive.mean()",
           ("tests/losses/test_s2dc_losses.py",)),
    Mutant("p2s_no_half", "L_p2s positive term without its ½", "losses/s2dc.py",
           "positive = 0.5 * (by_student + by_teacher)", "positive = (by_student + by_teacher)", ("tests/losses/test_s2dc_losses.py",)),
    Mutant("p2s_column_weights_twice", "L_p2s uses the column weights for both terms", "losses/s2dc.py",
           "by_student = (positive_nll * row_weights.unsqueeze(2))", "by_student = (positive_nll * col_weights.unsqueeze(1))",
           ("tests/losses/test_s2dc_losses.py",)),
    Mutant("p2s_weights_not_detached", "L_p2s weights receive gradients (official)", "losses/s2dc.py",
           "similarity = similarity.detach()", "similarity = similarity", ("tests/losses/test_s2dc_losses.py",)),
    Mutant("queue_student_key", "the student key is enqueued instead of the teacher key", "methods/s2dc.py",
           "self.queue.enqueue(teacher_global[pick])", "self.queue.enqueue(student_global[pick])", ("tests/methods/test_s2dc_method.py",)),
    Mutant("s2dc_cosine_bf16", "token cosine computed under autocast (bf16)", "methods/s2dc.py",
           "with torch.autocast(field.device.type, enabled=False):  # .float() alone",
           "with torch.autocast(field.device.type, enabled=torch.is_autocast_enabled(field.device.type)):  # .float() alone",
           ("tests/methods/test_s2dc_method.py",)),
    Mutant("info_nce_bf16", "InfoNCE logits computed under autocast (bf16)", "losses/s2dc.py",
           "with torch.autocast(query.device.type, enabled=False):",
           "with torch.autocast(query.device.type, enabled=torch.is_autocast_enabled(query.device.type)):",
           ("tests/losses/test_s2dc_losses.py",)),
    # ---- GVSL ----
    Mutant("shuffle_one_permutation", "one pixel-shuffle permutation shared by all blocks (official)", "views/appearance.py",
           "permutation = _rand(tuple(index.shape), images, generator).argsort(dim=-1)",
           "permutation = _rand(tuple(index.shape[-1:]), images, generator).argsort(dim=-1).expand_as(index)",
           ("tests/views/test_gvsl_views.py",)),
    Mutant("affine_rotation_of_sample_0", "affine_matrix uses sample 0's rotation for the whole batch", "models/warp.py",
           "cos, sin = rotation.cos(), rotation.sin()",
           "cos, sin = rotation[:1].cos().expand_as(rotation), rotation[:1].sin().expand_as(rotation)",
           ("tests/models/test_gvsl_warp.py",)),
    Mutant("augmentation_rotation_x5", "augmentation rotation range ×5", "views/spatial_aug.py",
           "rotation, shear = math.radians(self.rotation_deg), math.radians(self.shear_deg)",
           "rotation, shear = math.radians(5 * self.rotation_deg), math.radians(self.shear_deg)",
           ("tests/views/test_gvsl_views.py",)),
    Mutant("augmentation_shift_half", "the method hands the augmentation half the configured shift", "methods/gvsl.py",
           "shift_fraction=config.aug_shift_fraction,", "shift_fraction=config.aug_shift_fraction / 2,", ("tests/views/test_gvsl_views.py",)),
    Mutant("inpaint_boxes_x2", "in-painting boxes twice as large", "views/appearance.py",
           "low, high = max(1, n // 10), max(2, n // 5)", "low, high = max(1, n // 5), max(2, 2 * n // 5)",
           ("tests/views/test_gvsl_views.py",)),
    Mutant("affine_then_flow", "affine and flow composed in the swapped order, T(p) + u(p)", "models/warp.py",
           "    if flow is not None:\n        points = points + flow.float()\n    if affine is not None:\n"
           "        affine = affine.float()\n"
           "        points = torch.einsum(\"bij,bj...->bi...\", affine[:, :, :3], points) + affine[:, :, 3, None, None, None]\n",
           "    if affine is not None:\n        affine = affine.float()\n"
           "        points = torch.einsum(\"bij,bj...->bi...\", affine[:, :, :3], points) + affine[:, :, 3, None, None, None]\n"
           "    if flow is not None:\n        points = points + flow.float()\n",
           ("tests/models/test_gvsl_warp.py",)),
    Mutant("restoration_from_b", "restoration head reads B's local features", "methods/gvsl.py",
           "restored = self.restoration(fixed_local)", "restored = self.restoration(moving_local)", FAST_GVSL_METHOD),
    Mutant("ncc_against_damaged_a", "NCC against the damaged A instead of the clean A", "methods/gvsl.py",
           "local_ncc_loss(warped, fixed, config.ncc_window", "local_ncc_loss(warped, damaged, config.ncc_window",
           FAST_GVSL_METHOD),
    Mutant("b_outside_augmentation", "B left out of the shared spatial augmentation", "methods/gvsl.py",
           "fixed, damaged, moving = self.spatial_augmentation(fixed, damaged, moving)",
           "fixed, damaged = self.spatial_augmentation(fixed, damaged)", FAST_GVSL_METHOD),
    Mutant("deformable_on_unwarped_b", "deformable branch fed B's unwarped local features", "models/zmatch.py",
           "flow = self.deformable(warp(moving_local, affine), fixed_local)", "flow = self.deformable(moving_local, fixed_local)",
           FAST_GVSL_METHOD),
    Mutant("smoothness_term_zero", "smoothness term set to zero", "methods/gvsl.py",
           "\"smooth\": smoothness_loss(flow),", "\"smooth\": 0 * smoothness_loss(flow),", FAST_GVSL_METHOD),
    Mutant("smoothness_weight_dropped", "smoothness left out of the total loss", "methods/gvsl.py",
           " + config.w_smooth * terms[\"smooth\"]", "", FAST_GVSL_METHOD),
    Mutant("smoothness_formula_zero", "smoothness loss returns zero", "losses/gvsl.py",
           "return sum(d.square().mean() for d in diffs) / 3", "return 0 * sum(d.square().mean() for d in diffs)",
           ("tests/losses/test_gvsl_losses.py",)),
    Mutant("ncc_counts_padding", "NCC box statistics count the zero padding as data (official)", "losses/gvsl.py",
           "n = _window_counts(tuple(x.shape[2:]), window, x.device)", "n = float(window**3)", ("tests/losses/test_gvsl_losses.py",)),
    Mutant("gvsl_pairs_anywhere", "A and B cropped at independent random positions (official: unregistrable pairs)", "config.py",
           'pair_sampling: Literal["corresponding", "independent"] = Field(\n        "corresponding",',
           'pair_sampling: Literal["corresponding", "independent"] = Field(\n        "independent",', FAST_GVSL_METHOD),
    Mutant("pairs_ignore_relative_position", "the crop cache ignores the shared relative position of a pair", "data/cache.py",
           "if request.corresponding:  # one relative position", "if False:  # one relative position",
           ("tests/data/test_data_cache.py",)),
    # ---- distributed training ----
    Mutant("s2dc_student_keeps_decoder", "S²DC's student keeps SwinUNETR's unused decoder (DDP must search for unused parameters)",
           "methods/__init__.py", "        backbone.drop_decoder()", "        pass", ("tests/train/test_pretrain_distributed.py",)),
    Mutant("batchnorm_not_synchronised", "projection-head BatchNorm keeps per-rank statistics on several GPUs", "train/pretrain.py",
           "return gpus and has_batchnorm and _several_processes(trainer)", "return False",
           ("tests/train/test_pretrain_distributed.py",)),
]


def _run_tests(scratch_src: Path, tests: tuple[str, ...]) -> tuple[bool, str, float]:
    """Run pytest on ``tests`` with ``scratch_src`` first on the path → (passed, last output line, seconds)."""
    env = {**os.environ, **ENV, "PYTHONPATH": str(scratch_src)}
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:xdist", "-p", "no:cacheprovider", *tests]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    failed = [line.split(" - ")[0] for line in lines if line.startswith("FAILED ")]
    summary = failed[0].removeprefix("FAILED ") if failed else (lines[-1] if lines else done.stderr.strip()[-200:])
    return done.returncode == 0, summary, time.perf_counter() - start


def _scratch_copy(workdir: Path) -> Path:
    target = workdir / "src"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(ROOT / "src", target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return target


def _apply(scratch_src: Path, mutant: Mutant) -> None:
    path = scratch_src / "mssl" / mutant.path
    text = path.read_text()
    found = text.count(mutant.old)
    if found != mutant.count:
        raise SystemExit(f"mutant {mutant.name}: {mutant.path} holds the text {found} times, expected {mutant.count}")
    path.write_text(text.replace(mutant.old, mutant.new))


def _check_scratch_is_imported(scratch_src: Path) -> None:
    env = {**os.environ, **ENV, "PYTHONPATH": str(scratch_src)}
    where = subprocess.run([sys.executable, "-c", "import mssl; print(mssl.__file__)"], env=env, capture_output=True, text=True)
    if not where.stdout.strip().startswith(str(scratch_src)):
        raise SystemExit(f"the scratch copy is not what Python imports (got {where.stdout.strip() or where.stderr.strip()})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="run only these mutants (by name)")
    args = parser.parse_args()
    mutants = [m for m in MUTANTS if not args.only or m.name in args.only]
    rows = []
    with tempfile.TemporaryDirectory(prefix="mssl-mutants-") as tmp:
        workdir = Path(tmp)
        scratch = _scratch_copy(workdir)
        _check_scratch_is_imported(scratch)
        for tests in sorted({m.tests for m in mutants}):
            passed, summary, _ = _run_tests(scratch, tests)
            if not passed:
                raise SystemExit(f"unmutated tests fail ({' '.join(tests)}): {summary}")
        for mutant in mutants:
            scratch = _scratch_copy(workdir)
            _apply(scratch, mutant)
            passed, summary, seconds = _run_tests(scratch, mutant.tests)
            verdict = "survived" if passed else "killed"
            rows.append((mutant, verdict, summary, seconds))
            print(f"{verdict:8s} {mutant.name:32s} {seconds:5.1f}s  {summary}", flush=True)
    _write(rows)
    if any(verdict == "survived" for _, verdict, _, _ in rows):
        sys.exit(1)


def _write(rows: list[tuple[Mutant, str, str, float]]) -> None:
    killed = sum(verdict == "killed" for _, verdict, _, _ in rows)
    lines = [
        "# Mutation check (issue 15)",
        "",
        f"`python benchmarks/mutation_check.py` on {platform.node()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
        f"**{killed} / {len(rows)} mutants killed**. Each mutant undoes one fix (or brings back one official "
        "behaviour) in a scratch copy of `src/`; only the listed tests run (one process, one thread, `-x`). "
        "The unmutated copy passes the same tests first.",
        "",
        "| mutant | what it brings back | file | tests | result | first failing test | s |",
        "|---|---|---|---|---|---|---|",
    ]
    for mutant, verdict, summary, seconds in rows:
        tests = " ".join(mutant.tests).replace("|", "\\|")
        lines.append(
            f"| `{mutant.name}` | {mutant.what} | `{mutant.path}` | `{tests}` | **{verdict}** | `{summary}` | {seconds:.0f} |"
        )
    RESULTS.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
