"""Weights out of a run and into any network: safetensors export with a provenance sidecar, safe
reading, key alignment, stem adaptation and load reports (``mssl export`` and ``mssl inspect``).
"""

from mssl.weights.load_report import LoadReport
from mssl.weights.loading import load_pretrained
from mssl.weights.safe_io import UnsafeWeightsError, read_weights

__all__ = ["LoadReport", "UnsafeWeightsError", "load_pretrained", "read_weights"]
