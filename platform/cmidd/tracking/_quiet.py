"""MLflow's noise, turned down before mlflow is first imported (``cmidd.tracking`` imports this module first).

No progress bars for small artifact downloads, no deprecation notices from MLflow's own internals:
``cmidd.cli.main`` shows DeprecationWarnings to cmidd's users; MLflow's are not theirs to act on. No
"Retrying (Retry(total=...))" lines from urllib3 while a tracking server is down: cmidd's hooks say once that the
store is unreachable and, when the budget is spent, end with one error line.
"""

from __future__ import annotations

import logging
import os
import warnings


def quiet_mlflow() -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"(mlflow|sqlalchemy|alembic)(\.|$)")
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)  # its per-retry WARNING lines


quiet_mlflow()
