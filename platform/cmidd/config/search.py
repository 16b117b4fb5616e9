"""The search-space schema: a base distill job plus distributions over some of its fields.

``cmidd.ray.tune`` (Ray Tune + Optuna) runs them; this module only validates: every searched path is a leaf
field of the distill job, and each end of its range (each choice) gives a valid job.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import ConfigError
from ..names import COSTS, CROSS_ARCH_MEAN, CROSS_ARCH_STD
from ._fields import MAX_COUNT, MAX_SEED, Bool, Cfg, Float, Folder, Int
from ._load import apply_overrides, format_error, read_yaml, set_path
from .job import DistillJob, EvalCfg, parse_job
from .methods import METHOD_MODELS, method_fields

ZERO_ARM = "cmi_on"  # the categorical that ``zero_arm: true`` adds: False runs the trial with cmi.lam = alpha = 0
WEIGHTS = ("cmi.lam", "cmi.alpha")  # the searched CMI weights that may carry a zero arm
SCALAR = Union[bool, int, float, str, None]


class ParamSpec(Cfg):
    """One searched field: exactly one of ``loguniform``, ``uniform``, ``int`` (inclusive) or ``choice``.

    ``zero_arm: true`` (only on ``cmi.lam`` or ``cmi.alpha``) also tries lambda = 0, the plain DD baseline: the
    search adds a categorical ``cmi_on`` in {true, false} and enqueues one ``cmi_on: false`` trial first, so TPE
    sees the baseline from the start and the log-scale lambda (alpha) distribution never has to hold 0.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, allow_inf_nan=False)

    loguniform: tuple[Float, Float] | None = None
    uniform: tuple[Float, Float] | None = None
    int_: tuple[Int, Int] | None = Field(default=None, alias="int")
    choice: list[SCALAR] | None = None
    zero_arm: Bool = False

    @model_validator(mode="after")
    def _one_distribution(self) -> "ParamSpec":
        given = [k for k in ("loguniform", "uniform", "int_", "choice") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"exactly one of loguniform, uniform, int, choice must be given, but got "
                             f"{[g.rstrip('_') for g in given] or 'none'}")
        if self.choice is not None and not self.choice:
            raise ValueError("choice must list at least one value (got [])")
        for name in ("loguniform", "uniform", "int_"):
            bounds = getattr(self, name)
            if bounds is not None and not bounds[0] < bounds[1]:
                raise ValueError(f"{name.rstrip('_')}: lo < hi must hold, but got {list(bounds)}")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError(f"loguniform: lo > 0 must hold (use zero_arm: true for lambda = 0), "
                             f"but got {list(self.loguniform)}")
        return self

    @property
    def kind(self) -> str:
        """``loguniform``, ``uniform``, ``int`` or ``choice``."""
        return next(k.rstrip("_") for k in ("loguniform", "uniform", "int_", "choice") if getattr(self, k) is not None)

    def examples(self) -> list[Any]:
        """The values that bound the distribution (both ends, every choice) for validation against the job."""
        if self.choice is not None:
            return list(self.choice)
        lo, hi = getattr(self, {"int": "int_"}.get(self.kind, self.kind))
        return [lo, hi] + ([0] if self.zero_arm else [])


class AshaCfg(Cfg):
    """Asynchronous successive halving on the eval metric, in distillation iterations (the ``step`` reported)."""

    grace_period: Int = Field(default=1, ge=1, le=MAX_COUNT)  # iterations before a trial can be stopped
    reduction_factor: Float = Field(default=2.0, gt=1, le=1000)  # keep the top 1/reduction_factor at each rung
    max_t: Int | None = Field(default=None, ge=1, le=MAX_COUNT)  # None = the base job's method.iterations


class Objective(Cfg):
    """One objective of a multi-objective search: a metric the trials report and its direction."""

    metric: str = Field(min_length=1)
    mode: Literal["max", "min"]


class SearchRunCfg(Cfg):
    """How many trials, how many at once, the seed of TPE, what to optimize, early stopping, time budget.

    What to optimize is either one ``metric`` + ``mode`` or a list of ``objectives`` (2 to 4, e.g. accuracy to
    maximize and ``ipc`` or ``time/distill_s`` to minimize): then Optuna's multi-objective TPE samples, the search
    reports the Pareto front, and the first objective stands in for ``metric`` / ``mode`` (the best trial, the
    registered top-k, the tables). A multi-objective search stops no trial early (``asha: null``): ASHA ranks on
    one metric and would stop the cheap trials the front needs.
    """

    num_samples: Int = Field(default=8, ge=1, le=100_000)
    # with a sqlite store the search forces 1 (see search.py)
    max_concurrent_trials: Int = Field(default=1, ge=1, le=10_000)
    seed: Int = Field(default=0, ge=0, le=MAX_SEED)
    metric: str = Field(default=CROSS_ARCH_MEAN, min_length=1)
    mode: Literal["max", "min"] = "max"
    objectives: list[Objective] | None = Field(default=None, min_length=2, max_length=4)
    asha: AshaCfg | None = AshaCfg()  # null = no early stopping
    time_budget_s: Float | None = Field(default=None, gt=0, le=1e8)

    @model_validator(mode="before")
    @classmethod
    def _one_form(cls, data: Any) -> Any:
        """``objectives`` or ``metric`` + ``mode``, not both; with objectives, the first one is metric + mode."""
        if not isinstance(data, dict) or data.get("objectives") is None:
            return data
        both = [k for k in ("metric", "mode") if k in data]
        if both:
            raise ValueError(f"give either metric + mode (one objective) or objectives (a list), not both, but "
                             f"got objectives and {' and '.join(both)}")
        first = data["objectives"][0] if isinstance(data["objectives"], list) and data["objectives"] else None
        if isinstance(first, dict) and "metric" in first and "mode" in first:
            return {**data, "metric": first["metric"], "mode": first["mode"]}
        return data

    @model_validator(mode="after")
    def _objectives(self) -> "SearchRunCfg":
        if self.objectives is None:
            return self
        names = [o.metric for o in self.objectives]
        if len(set(names)) != len(names):
            raise ValueError(f"objectives: each metric must be given once, but got {names}")
        if self.asha is not None:
            raise ValueError("asha: a multi-objective search (objectives) stops no trial early, so asha: null must "
                             "be set (ASHA ranks on one metric and would stop the cheap trials the front needs)")
        return self

    @property
    def multi(self) -> bool:
        """Whether the search has several objectives (a Pareto front)."""
        return self.objectives is not None

    @property
    def targets(self) -> list[Objective]:
        """The objectives: the list, or the one ``metric`` + ``mode``."""
        return list(self.objectives) if self.objectives is not None else [Objective(metric=self.metric,
                                                                                    mode=self.mode)]


class TrialResources(Cfg):
    """Resources of one trial's driver (a trial with scaling.workers > 1 puts its workers beside it)."""

    cpus: Float = Field(default=1.0, gt=0, le=1024)
    gpus: Float = Field(default=0.0, ge=0, le=64)
    # Ray custom resources (``ray start --resources '{"trainer": 4}'``): pins trials to the nodes that have them
    custom: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$", max_length=128)],
                 Annotated[float, Field(gt=0, le=1e6)]] = Field(default_factory=dict, max_length=64)


class SearchCfg(Cfg):
    """A search space: the base distill job (already validated), the searched fields, the search settings.

    ``base_raw`` is the base job's mapping (trial = base_raw + sampled values -> ``parse_job``); ``source`` is
    the YAML file (logged to the parent run).
    """

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.+-]+$")
    base: DistillJob
    base_raw: dict[str, Any]
    params: dict[str, ParamSpec] = Field(min_length=1)
    search: SearchRunCfg = SearchRunCfg()
    resources: TrialResources = TrialResources()
    register_top_k: Int = Field(default=3, ge=0, le=1000)
    # the evaluation protocol the top-k are scored under before they are registered (None: the base job's eval
    # block); a top trial scored under another protocol (a searched eval.* field) is re-evaluated first
    register_eval: EvalCfg | None = None
    storage: Folder | None = None  # Tune's storage + the parent run id; None = runs/search/<name>
    # Tune's experiment somewhere else than <storage>/tune: a folder every node sees, or a URI of a filesystem pyarrow
    # knows (file:///shared/path, s3://bucket/path, gs://..., hdfs://...); the experiment is <tune_storage>/<name>
    tune_storage: str | None = Field(default=None, pattern=r"^(/|(file|s3|gs|gcs|hdfs|abfs|abfss)://)\S+$")
    source: Path | None = None

    @property
    def storage_dir(self) -> Path:
        """Where Tune keeps the experiment and the search keeps ``parent_run_id`` (absolute)."""
        return (self.storage or Path("runs/search") / self.name).absolute()

    @property
    def tune_location(self) -> tuple[str, str]:
        """(Tune's ``storage_path``, the experiment's ``name``): ``(<storage>, "tune")`` unless ``tune_storage``."""
        if self.tune_storage is None:
            return str(self.storage_dir), "tune"
        return self.tune_storage.rstrip("/"), self.name

    @property
    def registration_eval(self) -> EvalCfg:
        """The eval block whose protocol the registered top-k are scored under."""
        return self.register_eval or self.base.eval

    @property
    def max_t(self) -> int:
        """ASHA's horizon in iterations (``asha.max_t`` or the base job's iterations)."""
        a = self.search.asha
        return a.max_t if a is not None and a.max_t is not None else self.base.method.iterations


def _field_exists(model: type[BaseModel], dotted: str, methods: list[str] | None = None) -> bool:
    """Whether ``dotted`` names a leaf field of ``model`` (nested models walked by their annotations).

    ``method.<field>`` resolves through the method union: it exists when every method of ``methods`` (the base
    job's method, or each choice of a searched ``method.name``) has the field.
    """
    parts = dotted.split(".")
    if parts[0] == "method" and model is DistillJob and len(parts) == 2:
        known = [m for m in methods or [] if m in METHOD_MODELS] or list(METHOD_MODELS)  # others: refused below
        return all(parts[1] in method_fields(m) for m in known)
    for i, p in enumerate(parts):
        info = model.model_fields.get(p)
        if info is None:
            return False
        ann = info.annotation
        if i == len(parts) - 1:
            return not (isinstance(ann, type) and issubclass(ann, BaseModel))
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return False
        model = ann
    return True


def searched_methods(params: dict[str, Any], base_raw: dict[str, Any]) -> list[str]:
    """The methods a search's trials run: the choices of a searched ``method.name``, else the base job's."""
    spec = params.get("method.name")
    choice = spec.get("choice") if isinstance(spec, dict) else getattr(spec, "choice", None)
    if isinstance(choice, list) and choice:
        return [str(c) for c in choice]
    method = base_raw.get("method")
    return [str(method.get("name", "dm")) if isinstance(method, dict) else "dm"]


def fit_method(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` with the ``method`` fields its method's model lacks dropped: a search over ``method.name`` keeps, in
    its base, the fields of every searched method (``load_search`` checked each belongs to one of them)."""
    method = raw.get("method")
    name = method.get("name", "dm") if isinstance(method, dict) else None
    if not isinstance(name, str) or name not in METHOD_MODELS:
        return raw
    keep = method_fields(name)
    return {**raw, "method": {k: v for k, v in method.items() if k in keep}}


def trial_job_raw(cfg: SearchCfg, values: dict[str, Any]) -> dict[str, Any]:
    """The base job's mapping with the sampled ``values`` applied (``cmi_on: false`` sets cmi.lam = alpha = 0),
    the method fields of the trial's method kept (``fit_method``)."""
    raw = cfg.base_raw
    for path, value in values.items():
        if path != ZERO_ARM:
            raw = set_path(raw, path, value)
    if values.get(ZERO_ARM) is False:
        raw = set_path(set_path(raw, "cmi.lam", 0.0), "cmi.alpha", 0.0)
    return fit_method(raw)


def trial_job(cfg: SearchCfg, values: dict[str, Any], trial_id: str) -> DistillJob:
    """A trial's distill job: the base + sampled ``values``, its own output folder ``<storage>/trials/<id>``."""
    raw = trial_job_raw(cfg, values)
    raw = set_path(raw, "output.dir", str(cfg.storage_dir / "trials" / trial_id))
    raw = set_path(raw, "name", f"{cfg.name}-{trial_id}")
    return parse_job(raw, f"{cfg.name}: trial {trial_id}")


def tune_metrics(job: DistillJob) -> list[str]:
    """The metrics an intermediate evaluation of ``job`` reports to Tune (``EvalResult.metrics`` names)."""
    names = [m for a in job.eval.archs for m in (f"acc/{a}", f"acc_std/{a}")]
    names += [CROSS_ARCH_MEAN, CROSS_ARCH_STD]
    return names + (["acc/ensemble", "ece/ensemble"] if job.eval.ensemble else [])


def _check_tune_settings(cfg: SearchCfg, path: Path) -> None:
    """The rules Ray Tune (ASHA) and the trials impose, checked here so that a bad search starts nothing.

    Raises:
        ConfigError: ASHA's grace period beyond its horizon, or a metric the trials never report.
    """
    a = cfg.search.asha
    if a is not None and a.grace_period > cfg.max_t:
        horizon = (f"asha.max_t={a.max_t}" if a.max_t is not None
                   else f"the base job's method.iterations={cfg.base.method.iterations}")
        raise ConfigError(f"{path}: search.asha.grace_period: grace_period <= max_t must hold, but got "
                          f"grace_period={a.grace_period} > {horizon}")
    if a is not None and a.max_t is not None and a.max_t > cfg.base.method.iterations:
        raise ConfigError(f"{path}: search.asha.max_t: max_t <= the base job's method.iterations must hold, but got "
                          f"max_t={a.max_t} > {cfg.base.method.iterations}")
    searched_archs = any(k.startswith("eval.") for k in cfg.params)
    known = tune_metrics(cfg.base)
    if not searched_archs and a is not None and cfg.search.metric not in known:
        raise ConfigError(f"{path}: search.metric: must be a metric the trials' evaluations report "
                          f"({', '.join(known)}), but got {cfg.search.metric!r}")
    for i, o in enumerate(cfg.search.objectives or []):  # every Tune report must carry every objective
        if not searched_archs and o.metric not in known + list(COSTS):
            raise ConfigError(f"{path}: search.objectives.{i}.metric: must be a metric every report of a trial "
                              f"carries ({', '.join(known + list(COSTS))}), but got {o.metric!r}")


def _check_method_fields(base_raw: dict[str, Any], methods: list[str], source: str) -> None:
    """Each field of the base's ``method`` block must belong to one of the searched methods (a typo is refused)."""
    method = base_raw.get("method")
    if not isinstance(method, dict) or not all(m in METHOD_MODELS for m in methods):
        return  # parse_job names the problem
    for key in method:
        if not any(key in method_fields(m) for m in methods):
            raise ConfigError(f"{source}: method.{key}: unknown field for method {', '.join(methods)}")


def load_search(path: str | Path, overrides: list[str] | None = None) -> SearchCfg:
    """Load a search-space YAML, resolve and validate its base job, and check every searched field.

    ``--set`` overrides starting with ``base.`` change the base job (``base.method.iterations=4``); the others
    change the search file (``search.num_samples=2``). Each searched path must be a field of the distill
    job, and each end of its range (each choice) must give a valid job.

    Raises:
        ConfigError: one line naming the file, the field, the rule and the value.
    """
    path = Path(path)
    overrides = overrides or []
    raw = apply_overrides(read_yaml(path), [o for o in overrides if not o.startswith("base.")], str(path))
    base = raw.get("base")
    if isinstance(base, (str, Path)):
        base_file = (path.parent / base) if not Path(base).is_absolute() else Path(base)
        base_raw, base_src = read_yaml(base_file), str(base_file)
    elif isinstance(base, dict):
        base_raw, base_src = base, f"{path}: base"
    else:
        raise ConfigError(f"{path}: base: must be a path to a distill job YAML or a mapping (got {base!r})")
    base_raw = apply_overrides(base_raw, [o.removeprefix("base.") for o in overrides if o.startswith("base.")],
                               str(path))
    methods = searched_methods(raw.get("params") or {}, base_raw)
    _check_method_fields(base_raw, methods, base_src)
    base_job = parse_job(fit_method(base_raw), base_src)
    if base_job.kind != "distill":
        raise ConfigError(f"{path}: base: a search needs a distill job, but {base_src} is kind {base_job.kind!r}")
    try:
        cfg = SearchCfg.model_validate({**raw, "base": base_job, "base_raw": base_raw, "source": path})
    except ValidationError as e:
        raise ConfigError(format_error(str(path), e)) from None
    if cfg.search.asha is not None and cfg.base.eval.every == 0:
        raise ConfigError(f"{path}: search.asha: needs intermediate accuracies, so base eval.every > 0 must hold "
                          f"(got eval.every=0); set it or asha: null")
    _check_tune_settings(cfg, path)
    ipcs = cfg.params["ipc"].examples() if "ipc" in cfg.params else [cfg.base.ipc]
    weight = next((w for w in WEIGHTS if w in cfg.params), None)
    if weight is not None and 1 in ipcs:
        warnings.warn(f"{path}: ipc 1 is searched with {weight}, but at IPC 1 CMI is identically 0 and lambda has no "
                      "effect; those trials differ only in the other fields", stacklevel=2)
    for key, spec in cfg.params.items():
        where = f"{path}: params.{key}"
        if not _field_exists(DistillJob, key, methods):
            whose = f" of every searched method ({', '.join(methods)})" if key.startswith("method.") else ""
            raise ConfigError(f"{where}: must name a field{whose} of the distill job (e.g. cmi.lam, ipc, "
                              f"method.lr_img), but {key!r} is not one")
        if spec.zero_arm and key not in WEIGHTS:
            raise ConfigError(f"{where}: zero_arm is only allowed on cmi.lam or cmi.alpha (got zero_arm: true on "
                              f"{key!r})")
        if spec.zero_arm and spec.choice is not None:
            raise ConfigError(f"{where}: zero_arm needs loguniform/uniform/int; with choice, list 0 instead")
        for value in spec.examples():
            try:
                parse_job(fit_method(set_path(base_raw, key, value)), where)
            except ConfigError as e:
                raise ConfigError(f"{e} [searched value {value!r}]") from None
    return cfg
