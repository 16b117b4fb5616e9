"""cmidd: dataset distillation with a class-aware CMI regularizer.

``import cmidd`` is light: no torch-heavy work, no ray / mlflow / optuna. Import the modules you need::

    from cmidd.config import load_job
    from cmidd.launch import run_job
    from cmidd.tracking import tracked_run  # imports mlflow; cmidd.ray imports ray when a function runs
"""

__version__ = "0.1.0"
