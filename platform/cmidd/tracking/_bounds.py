"""How long cmidd waits for an MLflow server: the outage budget, and a wall-clock bound on every HTTP call.

A server that refuses connections fails a call at once; one that hangs (a stopped process, a dead host behind a
live load balancer: the kernel still accepts the connection) holds every call until its read timeout, retried.
MLflow's defaults (120 s timeout, 7 retries, backoff factor 2) hold one call for ~20 minutes. cmidd sets MLflow's
own documented variables (``MLFLOW_HTTP_REQUEST_TIMEOUT``: connect and read timeout of one request;
``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, ``..._BACKOFF_FACTOR``, ``..._BACKOFF_JITTER``) from the outage budget,
unless the user set them, so that one call ends within ``call_bound_s()`` (two requests of a sixth of the
budget, 3 to 30 s each); the loop's hooks never start a call that could end past the budget (``MlflowHooks``).
"""

from __future__ import annotations

import os

from ..errors import ConfigError

OUTAGE_ENV, OUTAGE_DEFAULT_S = "CMIDD_OUTAGE_BUDGET_S", 60.0
TIMEOUT_ENV, RETRIES_ENV = "MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
BACKOFF_ENV, JITTER_ENV = "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"
RETRIES = 1  # one retry: a dropped connection is survived; an outage is the hooks' budget's to wait out
MIN_TIMEOUT_S, MAX_TIMEOUT_S = 3, 30


def outage_budget() -> float:
    """Seconds the loop keeps going while MLflow is unreachable (``$CMIDD_OUTAGE_BUDGET_S``, default 60)."""
    text = os.environ.get(OUTAGE_ENV, "")
    try:
        value = float(text) if text.strip() else OUTAGE_DEFAULT_S
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise ConfigError(f"{OUTAGE_ENV}: must be a finite number of seconds >= 0, but got {text!r}")
    return value


def http_defaults(budget_s: float) -> dict[str, str]:
    """MLflow's HTTP variables for a budget: a request timeout of a sixth of the budget (3 to 30 s; MLflow reads
    whole seconds), one retry, no backoff or jitter: one call ends within 2 timeouts, a third of the budget, so
    the loop's hooks try again during the first two thirds of an outage."""
    timeout = int(min(MAX_TIMEOUT_S, max(MIN_TIMEOUT_S, budget_s // 6)))
    return {TIMEOUT_ENV: str(timeout), RETRIES_ENV: str(RETRIES), BACKOFF_ENV: "0", JITTER_ENV: "0"}


def bound_http_calls() -> None:
    """Set MLflow's HTTP variables from the outage budget where the user has not set them."""
    for name, value in http_defaults(outage_budget()).items():
        os.environ.setdefault(name, value)


def call_bound_s() -> float:
    """The longest one MLflow HTTP call can take with the variables in effect: (retries + 1) timeouts plus the
    backoff sleeps between them (urllib3: none before the first retry, then factor * 2**(n-1)) and their jitter."""
    def num(name: str, default: float) -> float:
        try:
            return float(os.environ.get(name, default))
        except ValueError:
            return default

    timeout, retries = num(TIMEOUT_ENV, 120), int(num(RETRIES_ENV, 7))
    factor, jitter = num(BACKOFF_ENV, 2), num(JITTER_ENV, 1.0)
    sleeps = sum(factor * 2 ** (n - 1) for n in range(2, retries + 1)) + jitter * retries
    return (retries + 1) * timeout + sleeps


def store_call_bound_s(uri: str) -> float:
    """``call_bound_s()`` for an MLflow server (http, https); 0 for a local store (sqlite: no network to hang on,
    so a failed call is retried whatever the HTTP variables say)."""
    return call_bound_s() if uri.startswith(("http://", "https://")) else 0.0
