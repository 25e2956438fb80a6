"""mssl: self-supervised pre-training of 3D medical image encoders (S²DC, GVSL) and its downstream proof."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mssl")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+local"

__all__ = ["__version__"]
