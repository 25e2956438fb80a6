"""What a method asks the data for: random crops of the cached volumes.

It lives with the data (the cache cuts the crops) so that ``data/`` never imports the methods that
ask for them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CropRequest:
    """``volumes`` random crops of ``size`` voxels per sample, each from a different volume.

    ``corresponding``: the crops of a sample sit at the same relative position of their volumes (cached
    volumes are cropped to the body, so roughly the same anatomy), each then moved independently by up to
    ``jitter`` voxels per axis; otherwise every crop is at its own random position.
    """

    size: tuple[int, int, int]
    volumes: int = 1
    corresponding: bool = False
    jitter: int = 0
