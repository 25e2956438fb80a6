"""Pre-training methods and the registry that builds one from a run config."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from mssl.data.crops import CropRequest
from mssl.methods.base import MethodOutput, PretrainMethod
from mssl.models.backbones import build_backbone
from mssl.models.features import Backbone

if TYPE_CHECKING:
    from mssl.config import PretrainConfig

MethodFactory = Callable[[Backbone, "PretrainConfig"], PretrainMethod]


def _s2dc(backbone: Backbone, config: PretrainConfig) -> PretrainMethod:
    from mssl.methods.s2dc import S2DCMethod

    return S2DCMethod(backbone, config.s2dc)


def _gvsl(backbone: Backbone, config: PretrainConfig) -> PretrainMethod:
    from mssl.methods.gvsl import GVSLMethod

    return GVSLMethod(backbone, config.gvsl)


# method name -> factory(shared backbone, run config); "both" combines every objective of the config
METHODS: dict[str, MethodFactory] = {"s2dc": _s2dc, "gvsl": _gvsl}
# objectives that read the backbone's decoder (GVSL's full-resolution map f^l); S²DC uses encoder maps only
DECODING_OBJECTIVES = frozenset({"gvsl"})


def trains_decoder(method: str) -> bool:
    """Whether pre-training with ``method`` (a name of ``METHODS`` or ``both``) trains the backbone's decoder."""
    objectives = METHODS if method == "both" else (method,)
    return any(name in DECODING_OBJECTIVES for name in objectives)


def build_method(config: PretrainConfig) -> PretrainMethod:
    """The method a run config names, on a freshly built backbone."""
    from mssl.methods.combined import CombinedMethod

    backbone = build_backbone(config.backbone)
    if not DECODING_OBJECTIVES.intersection(config.objectives):
        backbone.drop_decoder()  # no idle parameters: plain DDP needs no unused-parameter search, exports add the decoder back
    objectives = {name: METHODS[name](backbone, config) for name in config.objectives}
    if len(objectives) == 1:
        return next(iter(objectives.values()))
    return CombinedMethod(objectives)


__all__ = ["DECODING_OBJECTIVES", "METHODS", "CropRequest", "MethodOutput", "PretrainMethod", "build_method", "trains_decoder"]
