"""Data sets (in-memory, normalized) and the per-class real-image pool.

Importing this package registers every built-in loader in ``DATASETS``.
"""

from . import digits, imagefolder, mnist5k, torchvision_sets  # noqa: F401  (imported for their registrations)
from ._registry import DATASETS, Dataset, load_dataset
from .pool import RealPool

__all__ = ["DATASETS", "Dataset", "RealPool", "load_dataset"]
