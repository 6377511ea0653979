"""Images: libraries (ordered lists of files with labels), decoding, receptive-field patches."""

from .decoding import load_rgb
from .library import ImageLibrary

__all__ = ["ImageLibrary", "load_rgb"]
