"""diffkit: image diffusion models for learning, teaching and research."""

from diffkit.errors import DiffkitError

__version__ = "0.1.0"
__all__ = ["DiffkitError", "__version__"]
