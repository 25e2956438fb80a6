"""The one error type of the data layer: a bad input, named by its path."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """A bad data input; the message is always ``"<path>: <problem>"`` on one line.

    ``path`` and ``problem`` are kept separately so a report can list them in columns.
    """

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = " ".join(str(problem).split())  # one line, whatever the cause printed
        super().__init__(f"{self.path}: {self.problem}")

    def __reduce__(self):  # picklable across process-pool workers
        return (type(self), (self.path, self.problem))
