"""cmidd: dataset distillation with a class-aware CMI regularizer.

``import cmidd`` is light: no torch-heavy work, no ray / mlflow / optuna. Import the modules you need::

    from cmidd.config import load_job
    from cmidd.app import execute      # a job with its loop (plain or Ray Train), tracked or not
"""

__version__ = "0.1.0"
