"""Typed, validated job configs (pydantic v2): YAML in, frozen models out.

Every model is frozen and forbids unknown keys. Defaults live only here. Errors become one line each,
naming the file, the field path, the rule and the value::

    jobs/dm.yaml: cmi.lam: Input should be greater than or equal to 0 (got -1)

Example:
    >>> job = load_job("jobs/distill_dm_digits_ipc10.yaml", overrides=["cmi.lam=10"])
    >>> job.cmi.lam
    10.0
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError, UnknownNameError

Device = Literal["cpu", "cuda", "auto"]


class _Cfg(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _check_name(registry_getter, value: str) -> str:
    """Validate a plug-in name against its registry (the one source of allowed values)."""
    try:
        registry_getter().get(value)
    except UnknownNameError as e:
        raise ValueError(str(e)) from None
    return value


def _nets():
    from .nets import NETS

    return NETS


def _datasets():
    from .data import DATASETS

    return DATASETS


def _methods():
    from .methods import METHODS

    return METHODS


def _proxy_sets():
    from .proxies import PROXY_SETS

    return PROXY_SETS


def _aggs():
    from .cmi import AGGREGATORS

    return AGGREGATORS


class DataCfg(_Cfg):
    """Which data set, where it lives, and at which resolution."""

    name: str = "digits"
    root: Path | None = None  # folder of a torchvision-format or imagefolder set; digits need none
    im_size: int | None = Field(default=None, ge=4, le=512)  # None = native size
    download: bool = False  # never download unless asked
    split_seed: int = Field(default=0, ge=0)  # digits' seeded train/test split

    @field_validator("name")
    @classmethod
    def v_name(cls, v):
        return _check_name(_datasets, v)


class NetCfg(_Cfg):
    """A network by registered name plus optional ConvNet-family overrides (None = the variant's default)."""

    name: str = "ConvNet"
    width: int | None = Field(default=None, ge=1)
    depth: int | None = Field(default=None, ge=1, le=8)
    norm: Literal["instance", "batch", "layer", "group", "none"] | None = None
    act: Literal["relu", "sigmoid", "leakyrelu", "swish"] | None = None
    pool: Literal["avg", "max", "none"] | None = None

    @field_validator("name")
    @classmethod
    def v_name(cls, v):
        return _check_name(_nets, v)

    def kwargs(self) -> dict[str, Any]:
        """The overrides that are set, as keyword arguments for ``create_net``."""
        return {k: v for k, v in self.model_dump(exclude={"name"}).items() if v is not None}


DSA_DEFAULT = "color_crop_cutout_flip_scale_rotate"


def _check_strategy(v: str) -> str:
    from .augment import parse_strategy

    try:
        parse_strategy(v)
    except ConfigError as e:
        raise ValueError(str(e)) from None
    return v


class MethodCfg(_Cfg):
    """The DD method and its image optimizer. ``gm``-only fields are ignored by ``dm``."""

    name: str = "dm"
    iterations: int = Field(default=300, ge=1)
    lr_img: float = Field(default=1.0, gt=0)
    momentum: float = Field(default=0.5, ge=0, lt=1)
    batch_real: int = Field(default=256, ge=1)  # real images per class per iteration
    init: Literal["real", "noise"] = "real"
    dsa: bool = True
    dsa_strategy: str = DSA_DEFAULT
    dsa_mode: Literal["single", "multi"] = "single"  # single: one op group per call (reference DSA)
    # gradient matching (DC / DSA): outer steps per fresh net, inner net-training steps, net lr
    outer_loop: int = Field(default=10, ge=1)
    inner_loop: int = Field(default=50, ge=0)
    lr_net: float = Field(default=0.01, gt=0)
    batch_train: int = Field(default=256, ge=1)
    # multi-formation (IDC): each stored image decodes into factor**2 training images (1 = off)
    factor: int = Field(default=1, ge=1, le=4)
    # trajectory matching (MTT): student steps on the set, expert epochs to match, start-epoch range, lrs
    syn_steps: int = Field(default=10, ge=1)
    expert_epochs: int = Field(default=2, ge=1)
    max_start_epoch: int = Field(default=2, ge=0)
    lr_teacher: float = Field(default=0.01, gt=0)  # the student's initial (learnable) step size
    lr_lr: float = Field(default=1e-5, gt=0)  # the learning rate of that step size
    batch_syn: int | None = Field(default=None, ge=1)  # synthetic images per student step (None = all)

    @field_validator("name")
    @classmethod
    def v_name(cls, v):
        return _check_name(_methods, v)
    @field_validator("dsa_strategy")
    @classmethod
    def v_dsa(cls, v):
        return _check_strategy(v)


class CMICfg(_Cfg):
    """The CMI regularizer ``lam * agg_{proxies} CMI_emp(S)``. ``lam = 0`` turns it off."""

    lam: float = Field(default=0.0, ge=0)
    space: Literal["features", "logits"] = "features"  # softmax over penultimate features (paper code)
    temperature: float = Field(default=1.0, gt=0)
    agg: str = "random"  # random (paper) | mean over k sampled | max over k sampled
    k: int = Field(default=1, ge=1)  # proxies sampled per application for mean / max
    every: int = Field(default=1, ge=1)  # apply every k-th image update
    subsample: int | None = Field(default=None, ge=2)  # images per class the CMI sees (None = all)

    @field_validator("agg")
    @classmethod
    def v_agg(cls, v):
        return _check_name(_aggs, v)


class ProxiesCfg(_Cfg):
    """A named proxy set: its recipe is in ``proxies.PROXY_SETS``; its weights live in ``dir``.

    ``dir`` None means ``<output.dir>/../proxies/<dataset>-<im_size>px-<set>`` beside the job's folder.
    ``from_registry`` names proxies in the MLflow registry instead (a proxy set name, or
    ``proxy-<dataset>-<arch>[/version|@alias]``, comma-separated); ``cmidd.tracking`` resolves it to ``dir``.
    """

    set: str = "convnet-x4"
    dir: Path | None = None
    from_registry: str | None = Field(default=None, min_length=1)
    epochs: int | None = Field(default=None, ge=1)  # overrides the set's pre-training epochs
    pretrain_if_missing: bool = True
    lr: float = Field(default=0.01, gt=0)  # paper: SGD lr 0.01, momentum 0.9, wd 1e-3, batch 256, no aug.
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=1e-3, ge=0)
    batch: int = Field(default=256, ge=1)

    @field_validator("set")
    @classmethod
    def v_set(cls, v):
        return _check_name(_proxy_sets, v)

    @model_validator(mode="after")
    def _one_source(self) -> "ProxiesCfg":
        if self.from_registry is not None and self.dir is not None:
            raise ValueError(
                f"set proxies.dir or proxies.from_registry, not both (got dir={str(self.dir)!r}, "
                f"from_registry={self.from_registry!r})"
            )
        return self


class EvalCfg(_Cfg):
    """The DD evaluation protocol: fresh nets trained on the set (DSA on), tested on the real test split."""

    archs: list[str] = Field(default_factory=lambda: ["ConvNet"], min_length=1)
    num_eval: int = Field(default=3, ge=1)  # seeds per architecture
    epochs: int = Field(default=300, ge=1)
    epochs_by_arch: dict[str, Annotated[int, Field(ge=1)]] = Field(default_factory=dict)  # per-arch override
    lr: float = Field(default=0.01, gt=0)
    lr_decay: float = Field(default=0.1, gt=0, le=1)  # factor applied once, at half the epochs
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=5e-4, ge=0)
    batch: int = Field(default=256, ge=1)
    dsa: bool = True
    dsa_strategy: str = DSA_DEFAULT
    dsa_mode: Literal["single", "multi"] = "single"  # single: one op group per call (reference DSA)
    every: int = Field(default=0, ge=0)  # also evaluate during distillation every k iterations (0 = end)
    baselines: list[Literal["random-real", "full"]] = Field(default_factory=list)
    ensemble: bool = True  # also score the averaged-softmax ensemble of all archs x seeds (acc/ece/ensemble)
    ece_bins: int = Field(default=15, ge=1)  # equal-width confidence bins of ece/ensemble
    # how the seeds of one arch train: "vmap" together (torch.func; BatchNorm nets still loop), "loop" one after
    # another, "auto" = vmap on CUDA, loop on CPU (where vmap measured ~0.5x the loop's speed: cmidd bench)
    batched: Literal["auto", "vmap", "loop"] = "auto"

    @field_validator("archs")
    @classmethod
    def v_archs(cls, v: list[str]) -> list[str]:
        return [_check_name(_nets, a) for a in v]

    @model_validator(mode="after")
    def _by_arch_listed(self) -> "EvalCfg":
        extra = sorted(set(self.epochs_by_arch) - set(self.archs))
        if extra:
            raise ValueError(f"eval.epochs_by_arch keys must be in eval.archs, but got {extra}")
        return self

    def epochs_for(self, arch: str) -> int:
        """Training epochs of ``arch`` (large nets may train fewer epochs to bound the cost)."""
        return self.epochs_by_arch.get(arch, self.epochs)

    @field_validator("dsa_strategy")
    @classmethod
    def v_dsa(cls, v):
        return _check_strategy(v)


class ExpertsCfg(_Cfg):
    """MTT's expert trajectories: ``num`` nets of the job's ``net`` trained ``epochs`` on the real data."""

    num: int = Field(default=2, ge=1)
    epochs: int = Field(default=6, ge=1)
    lr: float = Field(default=0.01, gt=0)
    momentum: float = Field(default=0.0, ge=0, lt=1)
    batch: int = Field(default=256, ge=1)
    dsa: bool = False
    dsa_strategy: str = DSA_DEFAULT
    dsa_mode: Literal["single", "multi"] = "single"  # single: one op group per call (reference DSA)
    dir: Path | None = None  # default: <output.dir>/../experts/<data>-<net>-n<num>-e<epochs>
    train_if_missing: bool = True

    @field_validator("dsa_strategy")
    @classmethod
    def v_dsa(cls, v):
        return _check_strategy(v)


class OutputCfg(_Cfg):
    """Where the job writes. Nothing is written before the whole job validated and its data loaded."""

    dir: Path = Path("runs/job")
    checkpoint_every: int = Field(default=100, ge=0)  # 0 = no checkpoints


class ScalingCfg(_Cfg):
    """How many Ray Train workers run one distillation (1 = the plain single-process loop)."""

    workers: int = Field(default=1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(default=1.0, gt=0)
    max_failures: int = Field(default=2, ge=0)  # worker-group restarts (from the last checkpoint) before failing


class _JobBase(_Cfg):
    name: str = Field(default="job", min_length=1, pattern=r"^[A-Za-z0-9_.+-]+$")
    seed: int = Field(default=0, ge=0)
    device: Device = "cpu"
    data: DataCfg = DataCfg()
    output: OutputCfg = OutputCfg()


class DistillJob(_JobBase):
    """Distil ``ipc`` synthetic images per class with ``method`` (+ ``lam * CMI``), then evaluate."""

    kind: Literal["distill"] = "distill"
    ipc: int = Field(default=10, ge=1)
    net: NetCfg = NetCfg()  # the DD network (DM embedder / GM matching net)
    method: MethodCfg = MethodCfg()
    cmi: CMICfg = CMICfg()
    proxies: ProxiesCfg = ProxiesCfg()
    eval: EvalCfg = EvalCfg()
    scaling: ScalingCfg = ScalingCfg()
    experts: ExpertsCfg = ExpertsCfg()  # used by method mtt

    @model_validator(mode="after")
    def _cmi_rules(self) -> "DistillJob":
        m = self.method
        if m.name == "mtt" and m.max_start_epoch + m.expert_epochs > self.experts.epochs:
            raise ValueError(
                "method.max_start_epoch + method.expert_epochs <= experts.epochs must hold, but got "
                f"{m.max_start_epoch} + {m.expert_epochs} > {self.experts.epochs}"
            )
        if self.cmi.subsample is not None and self.cmi.subsample > self.ipc:
            raise ValueError(
                f"cmi.subsample <= ipc must hold, but got cmi.subsample={self.cmi.subsample}, ipc={self.ipc}"
            )
        if self.scaling.workers > 1 and self.cmi.lam > 0 and self.cmi.agg == "max":
            raise ValueError(  # a max over proxies held by different workers is not a sum of the workers' terms
                f"cmi.agg must be mean or random when scaling.workers > 1, but got cmi.agg='max' "
                f"with scaling.workers={self.scaling.workers}"
            )
        return self


class PretrainProxiesJob(_JobBase):
    """Pre-train the proxy set ``proxies.set`` on the real train split and save it to ``proxies.dir``."""

    kind: Literal["pretrain-proxies"] = "pretrain-proxies"
    proxies: ProxiesCfg = ProxiesCfg()


class ExpertsJob(_JobBase):
    """Train MTT's expert trajectories for ``net`` on the data set (distill jobs also train them on demand)."""

    kind: Literal["experts"] = "experts"
    net: NetCfg = NetCfg()
    experts: ExpertsCfg = ExpertsCfg()


class EvaluateJob(_JobBase):
    """Evaluate a saved synthetic set (``synset``) and/or baselines with the DD protocol."""

    kind: Literal["evaluate"] = "evaluate"
    synset: Path | None = None  # folder with images.pt, labels.pt, manifest.json
    ipc: int = Field(default=10, ge=1)  # for the random-real baseline
    eval: EvalCfg = EvalCfg()

    @model_validator(mode="after")
    def _something(self) -> "EvaluateJob":
        if self.synset is None and not self.eval.baselines:
            raise ValueError("set synset or eval.baselines: an evaluate job needs something to evaluate")
        return self


Job = Annotated[Union[DistillJob, PretrainProxiesJob, EvaluateJob, ExpertsJob], Field(discriminator="kind")]
JOB_MODELS = {"distill": DistillJob, "pretrain-proxies": PretrainProxiesJob, "evaluate": EvaluateJob,
              "experts": ExpertsJob}
JOB_KINDS = tuple(JOB_MODELS)


# ----------------------------------------------------------------------------------------------------
# Loading: YAML -> dict -> --set overrides -> validate -> frozen model


def format_error(source: str, err: ValidationError) -> str:
    """One line per pydantic error: ``source: a.b: message (got value)``."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-after"))
        msg = e["msg"].removeprefix("Value error, ")
        got = e.get("input")
        tail = "" if e["type"] in ("missing",) or isinstance(got, dict) else f" (got {got!r})"
        if e["type"] == "extra_forbidden":
            msg, tail = "unknown field", ""
        lines.append(f"{source}: {loc or '<root>'}: {msg}{tail}")
    return "; ".join(lines)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or a non-mapping raises ``ConfigError``."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {str(e).splitlines()[0]}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    return raw


def apply_overrides(raw: dict[str, Any], overrides: list[str], source: str = "--set") -> dict[str, Any]:
    """Apply ``a.b=value`` overrides (values parsed with ``yaml.safe_load``) to a nested dict copy.

    Unknown paths are caught by validation (``extra="forbid"``); a malformed override raises here.
    """
    out = _deepcopy(raw)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{source}: expected key.path=value, got {item!r}")
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"{source}: {key}: {p!r} is not a section")
            node = nxt
        node[parts[-1]] = yaml.safe_load(value) if value.strip() else None
    return out


def _deepcopy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deepcopy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deepcopy(v) for v in d]
    return d


def parse_job(raw: dict[str, Any], source: str = "<job>") -> Job:
    """Validate a job mapping. Raises ``ConfigError`` with one line per problem."""
    kind = raw.get("kind", "distill")
    model = JOB_MODELS.get(kind)
    if model is None:
        raise ConfigError(f"{source}: kind: must be one of {', '.join(JOB_KINDS)} (got {kind!r})")
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_error(source, e)) from None


def load_job(path: str | Path, overrides: list[str] | None = None):
    """Load, override and validate a job YAML file.

    Args:
        path: the YAML file.
        overrides: ``["cmi.lam=100", "ipc=1"]``.

    Returns:
        A frozen ``DistillJob``, ``PretrainProxiesJob`` or ``EvaluateJob``.

    Raises:
        ConfigError: one line naming the file, the field path, the rule and the value.
    """
    raw = apply_overrides(read_yaml(path), overrides or [])
    return parse_job(raw, str(path))


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten a nested dict to dotted keys (for MLflow params and tables)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


# ----------------------------------------------------------------------------------------------------
# Search spaces: a base distill job + distributions over some of its fields (cmidd.search runs them)

ZERO_ARM = "cmi_on"  # the categorical that ``zero_arm: true`` adds: False runs the trial with cmi.lam = 0
SCALAR = Union[bool, int, float, str, None]


class ParamSpec(_Cfg):
    """One searched field: exactly one of ``loguniform``, ``uniform``, ``int`` (inclusive) or ``choice``.

    ``zero_arm: true`` (only on ``cmi.lam``) also tries lambda = 0, the plain DD baseline: the search adds a
    categorical ``cmi_on`` in {true, false} and enqueues one ``cmi_on: false`` trial first, so TPE sees the
    baseline from the start and the log-scale lambda distribution never has to hold 0.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    loguniform: tuple[float, float] | None = None
    uniform: tuple[float, float] | None = None
    int_: tuple[int, int] | None = Field(default=None, alias="int")
    choice: list[SCALAR] | None = None
    zero_arm: bool = False

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


class AshaCfg(_Cfg):
    """Asynchronous successive halving on the eval metric, in distillation iterations (the ``step`` reported)."""

    grace_period: int = Field(default=1, ge=1)  # iterations before a trial can be stopped
    reduction_factor: float = Field(default=2.0, gt=1)  # keep the top 1/reduction_factor at each rung
    max_t: int | None = Field(default=None, ge=1)  # None = the base job's method.iterations


class SearchRunCfg(_Cfg):
    """How many trials, how many at once, the seed of TPE, what to optimize, early stopping, time budget."""

    num_samples: int = Field(default=8, ge=1)
    max_concurrent_trials: int = Field(default=1, ge=1)  # with a sqlite store the search forces 1 (see search.py)
    seed: int = Field(default=0, ge=0)
    metric: str = Field(default="acc/cross_arch_mean", min_length=1)
    mode: Literal["max", "min"] = "max"
    asha: AshaCfg | None = AshaCfg()  # null = no early stopping
    time_budget_s: float | None = Field(default=None, gt=0)


class TrialResources(_Cfg):
    """Resources of one trial's driver (a trial with scaling.workers > 1 puts its workers beside it)."""

    cpus: float = Field(default=1.0, gt=0)
    gpus: float = Field(default=0.0, ge=0)


class SearchCfg(_Cfg):
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
    register_top_k: int = Field(default=3, ge=0)
    storage: Path | None = None  # Tune's storage + the parent run id; None = runs/search/<name>
    source: Path | None = None

    @property
    def storage_dir(self) -> Path:
        """Where Tune keeps the experiment and the search keeps ``parent_run_id`` (absolute)."""
        return (self.storage or Path("runs/search") / self.name).absolute()

    @property
    def max_t(self) -> int:
        """ASHA's horizon in iterations (``asha.max_t`` or the base job's iterations)."""
        a = self.search.asha
        return a.max_t if a is not None and a.max_t is not None else self.base.method.iterations


def set_path(raw: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """A copy of ``raw`` with ``dotted`` (``cmi.lam``) set to ``value`` (sections created as needed)."""
    out = _deepcopy(raw)
    node = out
    *parents, leaf = dotted.split(".")
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: {p!r} is not a section")
    node[leaf] = value
    return out


def _field_exists(model: type[BaseModel], dotted: str) -> bool:
    """Whether ``dotted`` names a leaf field of ``model`` (nested models walked by their annotations)."""
    parts = dotted.split(".")
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


def trial_job_raw(cfg: SearchCfg, values: dict[str, Any]) -> dict[str, Any]:
    """The base job's mapping with the sampled ``values`` applied (``cmi_on: false`` sets cmi.lam = 0)."""
    raw = cfg.base_raw
    for path, value in values.items():
        if path != ZERO_ARM:
            raw = set_path(raw, path, value)
    if values.get(ZERO_ARM) is False:
        raw = set_path(raw, "cmi.lam", 0.0)
    return raw


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
    base_job = parse_job(base_raw, base_src)
    if base_job.kind != "distill":
        raise ConfigError(f"{path}: base: a search needs a distill job, but {base_src} is kind {base_job.kind!r}")
    try:
        cfg = SearchCfg.model_validate({**raw, "base": base_job, "base_raw": base_raw, "source": path})
    except ValidationError as e:
        raise ConfigError(format_error(str(path), e)) from None
    if cfg.search.asha is not None and cfg.base.eval.every == 0:
        raise ConfigError(f"{path}: search.asha: needs intermediate accuracies, so base eval.every > 0 must hold "
                          f"(got eval.every=0); set it or asha: null")
    ipcs = cfg.params["ipc"].examples() if "ipc" in cfg.params else [cfg.base.ipc]
    if "cmi.lam" in cfg.params and 1 in ipcs:
        import warnings

        warnings.warn(f"{path}: ipc 1 is searched with cmi.lam, but at IPC 1 CMI is identically 0 and lambda has no "
                      "effect; those trials differ only in the other fields")
    for key, spec in cfg.params.items():
        where = f"{path}: params.{key}"
        if not _field_exists(DistillJob, key):
            raise ConfigError(f"{where}: must name a field of the distill job (e.g. cmi.lam, ipc, method.lr_img), "
                              f"but {key!r} is not one")
        if spec.zero_arm and key != "cmi.lam":
            raise ConfigError(f"{where}: zero_arm is only allowed on cmi.lam (got zero_arm: true on {key!r})")
        if spec.zero_arm and spec.choice is not None:
            raise ConfigError(f"{where}: zero_arm needs loguniform/uniform/int; with choice, list 0 instead")
        for value in spec.examples():
            try:
                parse_job(set_path(base_raw, key, value), where)
            except ConfigError as e:
                raise ConfigError(f"{e} [searched value {value!r}]") from None
    return cfg
