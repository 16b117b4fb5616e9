"""MLflow as the system of record (the only importer of mlflow): runs, registry, hooks, reports.

Every run cmidd logs goes through one lifecycle (``open_run``: open -> yield -> FINISHED | FAILED/KILLED,
deleting the registry versions the failed run created) and carries the tags of ``run_tags``. What lives in
the store:

    runs         one per job (``tracked_run``), per search (a parent with one child run per trial: ``_search``), per
                 ensemble build (kind ``ensemble``) and per bench report (kind ``report``)
    registry     ``distilled-<dataset>-ipc<k>``: one version per distill run or ensemble, source
                 ``runs:/<run>/synthetic``, tagged with the evaluation protocol that scored it; aliases
                 ``champion-<protocol id>`` on the best of each protocol by acc/cross_arch_mean and
                 ``champion`` on the default protocol's (``_ranking``; docs/registry.md);
                 ``proxy-<dataset>-<arch>`` and ``experts-<dataset>-<net>``: pre-trained proxies and MTT
                 expert trajectories

Registration comes last: artifacts are uploaded, downloaded again and checked against the manifest's
sha256 first, so no version ever points at missing or partial files.

Every function takes the tracking URI explicitly (``resolve_uri``) and talks to MLflow through its own
``MlflowClient``: nothing here sets MLflow's global tracking URI or active run, so notebooks, threads
and Ray workers do not step on each other.

Example:
    >>> from cmidd.tracking import tracked_run, best_set, load_set
    >>> tracked = tracked_run(load_job("jobs/distill_dm_digits_ipc10.yaml"), uri="sqlite:///mlflow.db")
    >>> best_set("digits", 10)["metrics"]["acc/cross_arch_mean"]
    >>> synset = load_set("digits", 10)  # the champion, checksums verified
"""

from ._quiet import quiet_mlflow  # first: importing it quiets MLflow before mlflow is imported
from ._baselines import BASELINES, log_baseline
from ._client import (
    CHAMPION, DEFAULT_METRIC, EXPERTS, PROXIES, SYNTHETIC, TAG_ERROR, RunSession, client_for, credentials_env, end_run,
    ensure_experiment, ensure_model, fail_run, log_metrics, log_params, metrics_at, mlflow_errors, open_run,
    resolve_uri, set_tags,
)
from ._ensembles import SourceSets, search_children, search_sets, version_sets
from ._hooks import CHECKPOINT_SLOTS, TAG_SHA, TAG_SLOT, TAG_STEP, MlflowHooks, upload_checkpoint
from ._proxies import (
    experts_model_name, fetch_proxies, load_proxies_from_registry, proxy_model_name, publish_experts,
    publish_proxies, resolve_registry_proxies, verify_proxy_folder,
)
from ._ranking import baseline_table, champion_alias, move_champion, set_default_protocol, version_protocol
from ._reports import list_runs, log_report
from ._rescore import TAG_EVALUATES, find_protocol, rescore_versions
from ._run import PUBLISHERS, Publisher, TrackedRun, tracked_run
from ._search import (PARETO_FILE, find_trial_run, finish_search, pareto_best, run_trial, search_concurrency,
                      search_parent)
from ._sets import (
    best_per_protocol, best_set, load_set, load_verified, pull, register_distilled, register_set, set_model_name,
    verify_remote_set,
)
from ._tags import code_version, distill_tags, git_sha, job_params, job_tags, proxy_label, run_tags
from ._ui import (
    KEY_ACC, KEY_GAIN, KEY_LAMBDA, KEY_RATIO, TAG_GAIN, TRAINING_VIEW, gain_text, key_metrics, log_key_metrics,
    log_summary, parent_run, run_ui_hint, tag_gains, ui_hint, ui_url,
)

__all__ = [
    "BASELINES", "CHAMPION", "CHECKPOINT_SLOTS", "DEFAULT_METRIC", "EXPERTS", "PROXIES", "PUBLISHERS", "SYNTHETIC",
    "TAG_ERROR", "TAG_EVALUATES", "TAG_SHA", "TAG_SLOT", "TAG_STEP",
    "SourceSets", "MlflowHooks", "Publisher", "RunSession", "TrackedRun",
    "best_per_protocol", "best_set", "champion_alias", "client_for", "code_version", "credentials_env",
    "distill_tags", "end_run", "ensure_experiment",
    "baseline_table", "ensure_model", "experts_model_name", "fail_run", "fetch_proxies", "find_protocol",
    "PARETO_FILE", "find_trial_run", "finish_search", "git_sha", "pareto_best",
    "job_params", "job_tags", "list_runs", "load_proxies_from_registry", "load_set", "load_verified", "quiet_mlflow",
    "log_baseline", "log_metrics", "log_params", "log_report", "metrics_at", "mlflow_errors", "move_champion",
    "open_run", "proxy_label", "proxy_model_name", "publish_experts", "publish_proxies", "pull",
    "register_distilled", "register_set", "rescore_versions", "resolve_registry_proxies", "resolve_uri",
    "run_tags", "search_sets", "version_sets",
    "run_trial", "search_children", "search_concurrency", "search_parent", "set_default_protocol", "set_model_name",
    "set_tags", "tracked_run", "upload_checkpoint",
    "verify_proxy_folder", "verify_remote_set", "version_protocol",
    # what MLflow's UI shows first (_ui)
    "KEY_ACC", "KEY_GAIN", "KEY_LAMBDA", "KEY_RATIO", "TAG_GAIN", "TRAINING_VIEW", "gain_text", "key_metrics",
    "log_key_metrics", "log_summary", "parent_run", "run_ui_hint", "tag_gains", "ui_hint", "ui_url",
]
