"""``mssl demo``: prepare → pre-train (S²DC, GVSL) → export → probe → figures → report, on embedded real CTs."""

from __future__ import annotations

from pathlib import Path

import typer

from mssl.commands import fail


def command(
    out: Path = typer.Option(Path("demo_run"), "--out", "-o", help="Folder for the cache, runs, exports, probes, figures and report.md."),
    fast: bool = typer.Option(False, "--fast", help="Toy sizes (a few training steps on three cases): checks the installation in about a minute."),
    data_only: bool = typer.Option(False, "--data-only", help="Only copy the twelve CTs into OUT as an MSD folder (dataset.json, imagesTr, labelsTr: 7 train, 5 test, 7 organs) to try every command on."),
) -> None:
    """Run the whole pipeline offline on twelve real head-and-neck CTs shipped with mssl (OpenKBP, MIT).

    Prepares the sample, pre-trains a Swin-UNETR with S²DC and a U-Net with GVSL for a few minutes each at
    CPU sizes, exports both encoders, probes their frozen features against randomly initialised encoders
    on held-out cases, draws feature maps, registration overlays and loss curves, and writes OUT/report.md.
    About 10 minutes on a 2-core CPU.

    Example: mssl demo --out demo_run
    """
    from mssl.pipelines.demo import run_demo

    try:
        run_demo(out, fast=fast, data_only=data_only)
    except FileExistsError as error:  # --data-only never overwrites
        fail(error)
