"""The boot: ``activate()`` and what it tells the caller, for one process using the cache."""

from .activation import Activation
from .claims import BUILD, DOWNLOAD, HIT, PRIVATE, LayerUse
from .failopen import activate

__all__ = ["BUILD", "DOWNLOAD", "HIT", "PRIVATE", "Activation", "LayerUse", "activate"]
