"""cmidd: dataset distillation with a class-aware CMI regularizer.

``import cmidd`` is light: no torch-heavy work, no ray / mlflow / optuna. Import the modules you need::

    from cmidd.config import load_job
    from cmidd.app import execute      # a job with its loop (plain or Ray Train), tracked or not
    ds = cmidd.load_set("sets/digits-ipc10")  # a distilled set as a torch Dataset, checksums verified
"""

from __future__ import annotations

__version__ = "0.1.0"


def load_set(name_or_path, version: int | None = None, alias: str | None = None, uri: str | None = None):
    """A distilled set as a verified ``torch.utils.data.Dataset`` (``cmidd.app.load_set``): a folder, or a
    registered ``DATASET/IPC`` (the champion unless ``version`` or ``alias``).

    Example:
        >>> ds = cmidd.load_set("sets/digits-ipc10")
        >>> image, label = ds[0]; ds.mean, ds.std, ds.classes
    """
    from .app import load_set as _load

    return _load(name_or_path, version, alias, uri)
