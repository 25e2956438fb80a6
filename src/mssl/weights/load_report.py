"""What happened when weights were loaded into a network, per top-level module.

``loaded`` target keys received a tensor, ``adapted`` ones received a stem kernel converted to the
network's input channels, ``missing`` target keys kept their own initialisation, ``unexpected``
source keys had no home, ``mismatched`` pairs had the same name but incompatible shapes (skipped).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from io import StringIO

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

Shape = tuple[int, ...]
COLUMNS = ("loaded", "adapted", "missing", "unexpected", "mismatched")


def module_of(key: str, depth: int = 1) -> str:
    """The module a parameter belongs to, ``depth`` dotted levels deep (``swinViT.layers1.0.x`` → ``swinViT``)."""
    return ".".join(key.split(".")[:depth])


@dataclass
class LoadReport:
    """Outcome of :func:`mssl.weights.loading.load_pretrained`; prints as a Rich table."""

    source: str
    target: str = ""  # the network the weights went into
    loaded: list[str] = field(default_factory=list)
    adapted: dict[str, tuple[Shape, Shape]] = field(default_factory=dict)  # target key -> (source, target) shape
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)  # source key names
    mismatched: dict[str, tuple[Shape, Shape]] = field(default_factory=dict)  # target key -> (source, target) shape
    renamed: dict[str, str] = field(default_factory=dict)  # source key -> target key, where they differ
    network_keys: list[str] = field(default_factory=list)  # the network's keys in registration order
    hints: list[str] = field(default_factory=list)  # one line each: what to change when the pattern is known

    @property
    def ok(self) -> bool:
        """Every source tensor found a home of the right shape (missing target keys are allowed)."""
        return not self.unexpected and not self.mismatched

    def by_module(self, depth: int = 1) -> dict[str, dict[str, list[str]]]:
        """Keys of each kind grouped by module (target names; unexpected ones by their source name)."""
        groups: dict[str, dict[str, list[str]]] = defaultdict(lambda: {c: [] for c in COLUMNS})
        for column in ("loaded", "adapted", "missing", "mismatched"):
            for key in getattr(self, column):
                groups[module_of(key, depth)][column].append(key)
        for key in self.unexpected:
            groups[module_of(key, depth)]["unexpected"].append(key)
        rank: dict[str, int] = {}
        for key in self.network_keys:
            rank.setdefault(module_of(key, depth), len(rank))
        return dict(sorted(groups.items(), key=lambda item: (rank.get(item[0], len(rank)), item[0])))

    def table(self, depth: int = 1) -> Table:
        table = Table()
        table.add_column("module")
        for column in COLUMNS:
            table.add_column(column, justify="right")
        totals = dict.fromkeys(COLUMNS, 0)
        for module, keys in self.by_module(depth).items():
            counts = {c: len(keys[c]) for c in COLUMNS}
            for c in COLUMNS:
                totals[c] += counts[c]
            style = "red" if counts["mismatched"] or counts["unexpected"] else ("yellow" if counts["missing"] else None)
            table.add_row(module, *(str(counts[c]) if counts[c] else "·" for c in COLUMNS), style=style)
        table.add_section()
        table.add_row("total", *(str(totals[c]) for c in COLUMNS), style="bold")
        return table

    def details(self) -> list[str]:
        """One line per shape problem and stem adaptation, for the reader who needs the exact keys."""
        lines = [f"adapted    {k}: {tuple(s)} -> {tuple(t)}" for k, (s, t) in self.adapted.items()]
        lines += [f"mismatched {k}: weights {tuple(s)} vs network {tuple(t)}" for k, (s, t) in self.mismatched.items()]
        return lines

    def __rich__(self) -> Group:
        header = [Text(f"weights: {self.source}")] + ([Text(f"into:    {self.target}")] if self.target else [])
        return Group(*header, self.table(), *(Text(f"hint: {hint}", style="yellow") for hint in self.hints))

    def __str__(self) -> str:
        buffer = StringIO()
        console = Console(file=buffer, width=100, force_terminal=False, color_system=None)
        console.print(self)
        for line in self.details():
            console.print(line, markup=False, highlight=False, soft_wrap=True)
        return buffer.getvalue()
