"""Weights out of a run and into any network: safetensors export with a provenance sidecar, safe
reading, key alignment, stem adaptation and load reports.

``mssl.export(run, ...)`` is the Python twin of ``mssl export``; since this package is also called
``export``, the package itself is callable and forwards to :func:`mssl.export.exporter.export`.
"""

import sys
import types

from mssl.export.load_report import LoadReport
from mssl.export.loading import load_pretrained
from mssl.export.safe_io import UnsafeWeightsError, read_weights


class _CallablePackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from mssl.export.exporter import export

        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage

__all__ = ["LoadReport", "UnsafeWeightsError", "load_pretrained", "read_weights"]
