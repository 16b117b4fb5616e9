"""MLflow's noise, turned down before mlflow is first imported (``cmidd.tracking`` imports this module first).

No progress bars for small artifact downloads, no deprecation notices from MLflow's own internals:
``cmidd.cli.main`` shows DeprecationWarnings to cmidd's users; MLflow's are not theirs to act on.
"""

from __future__ import annotations

import os
import warnings


def quiet_mlflow() -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"(mlflow|sqlalchemy|alembic)(\.|$)")


quiet_mlflow()
