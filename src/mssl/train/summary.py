"""RUN/summary.json and the one-screen summary printed when a run ends."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from mssl.runs import PretrainRun
from mssl.train.cost import format_duration


@dataclass
class RunSummary:
    """What a finished run reports. ``final_losses``/``final_metrics``: the last finite step as rank 0
    saw it; ``weights``: the full training checkpoint, relative to the run folder."""

    method: str
    backbone: str
    steps: int
    max_steps: int
    skipped_steps: int
    wall_time_s: float
    final_losses: dict[str, float]
    final_metrics: dict[str, float]
    data_index_hash: str | None
    weights: str
    resumed_from_step: int | None = None
    compile_s: float | None = None  # torch.compile's estimated cost (--compile only)
    cpu_time_s: float | None = None  # process CPU time of the training loop, all threads (DataLoader workers not included)

    def write(self, run_dir: Path) -> Path:
        path = PretrainRun(run_dir).summary
        path.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        return path

    def render(self, run_dir: Path, console: Console | None = None) -> None:
        """A panel: time, steps, final losses, where the weights are, what to do next."""
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column(overflow="fold")  # paths are shown whole, wrapped, never cut
        table.add_row("method", f"{self.method} on {self.backbone}")
        skipped = f" ({self.skipped_steps} skipped: non-finite loss)" if self.skipped_steps else ""
        table.add_row("steps", f"{self.steps} / {self.max_steps}{skipped}" + (f" (resumed at step {self.resumed_from_step})" if self.resumed_from_step is not None else ""))
        table.add_row("wall time", format_duration(self.wall_time_s))
        if self.compile_s is not None:
            table.add_row("compiling", f"≈ {self.compile_s:.1f} s of it")
        for name, value in {**self.final_losses, **self.final_metrics}.items():
            table.add_row(name, f"{value:.4g}")
        table.add_row("weights", str(run_dir / self.weights))
        table.add_row("next", f"mssl export {run_dir}")
        (console or Console()).print(Panel(table, title=f"pre-training finished: {run_dir}", expand=False))
