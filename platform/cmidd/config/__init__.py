"""Typed, validated configs (pydantic v2): YAML in, frozen models out.

Every model is frozen and forbids unknown keys. Defaults live only in the models. Errors become one line
each, naming the file, the field path, the rule and the value::

    jobs/dm.yaml: cmi.lam: Input should be greater than or equal to 0 (got -1)

Example:
    >>> job = load_job("jobs/distill_dm_digits_ipc10.yaml", overrides=["cmi.lam=10"])
    >>> job.cmi.lam
    10.0
"""

from ._fields import DSA_DEFAULT, Device
from ._load import JOBS_DIR, apply_overrides, flatten, format_error, load_raw, read_yaml, set_path
from .job import (JOB_KINDS, JOB_MODELS, BaselineJob, CMICfg, DataCfg, DistillJob, EnsembleJob, EvalCfg, EvaluateJob, ExpertsCfg,
                  ExpertsJob, Job, NetCfg, OutputCfg, PretrainProxiesJob, ProxiesCfg, ScalingCfg, load_job, parse_job)
from .methods import (METHOD_CONFIGS, METHOD_MODELS, DmCfg, GmCfg, IdcCfg, MethodBase, MethodCfg, MttCfg, method_cfg,
                      method_fields)
from .search import (ZERO_ARM, AshaCfg, Objective, ParamSpec, SearchCfg, SearchRunCfg, TrialResources, load_search,
                     trial_job, trial_job_raw)

__all__ = [
    "DSA_DEFAULT", "Device", "JOBS_DIR", "load_raw", "apply_overrides", "flatten", "format_error", "read_yaml", "set_path",
    "JOB_KINDS", "JOB_MODELS", "BaselineJob", "CMICfg", "DataCfg", "DistillJob", "EnsembleJob", "EvalCfg", "EvaluateJob", "ExpertsCfg",
    "ExpertsJob", "Job", "METHOD_MODELS", "MethodBase", "MethodCfg", "NetCfg", "OutputCfg", "PretrainProxiesJob", "ProxiesCfg", "ScalingCfg",
    "load_job", "method_cfg", "method_fields", "parse_job",
    "METHOD_CONFIGS", "DmCfg", "GmCfg", "IdcCfg", "MttCfg",
    "ZERO_ARM", "AshaCfg", "Objective", "ParamSpec", "SearchCfg", "SearchRunCfg", "TrialResources", "load_search",
    "trial_job", "trial_job_raw",
]
