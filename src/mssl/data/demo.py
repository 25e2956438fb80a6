"""The embedded sample: twelve real head-and-neck CTs from OpenKBP with organ labels (see demo/NOTICE.md).

Shipped inside the package (≈3.8 MB) so that ``mssl demo`` runs offline. ``dataset.json`` is an MSD
datalist with a ``split`` (train / test) and the OpenKBP ``present_labels`` per case.
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

DEMO_FOLDER = "demo"
DATALIST = "dataset.json"
NOTICE = "NOTICE.md"


def demo_dataset() -> Path:
    """The packaged demo folder (holding dataset.json, imagesTr/, labelsTr/, NOTICE.md)."""
    folder = Path(str(files("mssl.data") / DEMO_FOLDER))
    if not (folder / DATALIST).is_file():
        raise FileNotFoundError(f"{folder / DATALIST}: the demo data is missing from this installation; reinstall mssl")
    return folder


def demo_datalist(out: Path, per_split: dict[str, int] | None = None) -> Path:
    """A datalist at ``out`` with absolute paths to the packaged cases, optionally the first n of each split.

    ``per_split={"train": 2, "test": 2}`` keeps a small subset (fast checks); None keeps every case.
    """
    source = demo_dataset()
    datalist = json.loads((source / DATALIST).read_text(encoding="utf-8"))
    kept = []
    for entry in datalist["training"]:
        split = entry["split"]
        if per_split is not None and sum(e["split"] == split for e in kept) >= per_split.get(split, 0):
            continue
        kept.append({**entry, "image": str(source / entry["image"]), "label": str(source / entry["label"])})
    datalist = {**datalist, "training": kept, "numTraining": len(kept)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(datalist, indent=2) + "\n", encoding="utf-8")
    return out


def notice() -> str:
    """Attribution and licence text of the demo volumes."""
    return (demo_dataset() / NOTICE).read_text(encoding="utf-8")
