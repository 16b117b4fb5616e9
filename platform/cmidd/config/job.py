"""The job schema: one frozen pydantic model per job kind, validated at the boundary.

Every model forbids unknown keys; defaults live only here. ``parse_job`` dispatches on ``kind`` through the
discriminated union ``Job``; ``load_job`` reads YAML, applies ``--set`` overrides and validates.

Example:
    >>> job = load_job("jobs/distill_dm_digits_ipc10.yaml", overrides=["cmi.lam=10"])
    >>> job.cmi.lam
    10.0
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Field, ValidationError, model_validator

from ..errors import ConfigError
from ._fields import (DSA_DEFAULT, MAX_BATCH, MAX_COUNT, MAX_SEED, MAX_WIDTH, AggName, Bool, Cfg,
                      DatasetName, Device, DsaMode, DsaStrategy, Float, Folder, Int, NetName, ProxySetName,
                      UserPath)
from ._load import apply_overrides, format_error, read_yaml
from .methods import METHOD_MODELS, MethodCfg, method_fields


class DataCfg(Cfg):
    """Which data set, where it lives, and at which resolution."""

    name: DatasetName = "digits"
    root: UserPath | None = None  # folder of a torchvision-format or imagefolder set; digits need none
    im_size: Int | None = Field(default=None, ge=4, le=512)  # None = native size
    download: Bool = False  # never download unless asked
    split_seed: Int = Field(default=0, ge=0, le=MAX_SEED)  # digits' seeded train/test split


class NetCfg(Cfg):
    """A network by registered name plus optional ConvNet-family overrides (None = the variant's default)."""

    name: NetName = "ConvNet"
    width: Int | None = Field(default=None, ge=1, le=MAX_WIDTH)
    depth: Int | None = Field(default=None, ge=1, le=8)
    norm: Literal["instance", "batch", "layer", "group", "none"] | None = None
    act: Literal["relu", "sigmoid", "leakyrelu", "swish"] | None = None
    pool: Literal["avg", "max", "none"] | None = None

    def kwargs(self) -> dict[str, Any]:
        """The overrides that are set, as keyword arguments for ``create_net``."""
        return {k: v for k, v in self.model_dump(exclude={"name"}).items() if v is not None}


class CMICfg(Cfg):
    """The CMI regularizer ``lam * agg_{proxies} CMI_emp(S)``.

    Its weight is ``lam`` (absolute) or ``alpha`` (scale-free): with ``alpha > 0`` the loop sets, at the start,
    ``lam = alpha * g_DD / g_CMI`` from the image-gradient norms of both terms averaged over ``calibrate_draws``
    draws of the DD net, batches and proxy (``cmidd.lam.gradient_norms``), so CMI pulls the images
    ``alpha`` times as hard as the DD term. At most one of ``lam``, ``alpha`` may be > 0; both 0 turn CMI off.
    """

    lam: Float = Field(default=0.0, ge=0, le=1e9)
    alpha: Float = Field(default=0.0, ge=0, le=1e6)  # lam = alpha * g_DD / g_CMI at initialization (0 = use lam)
    calibrate_draws: Int = Field(default=8, ge=1, le=10_000)  # draws averaged for alpha's gradient norms (seeded)
    # every k iterations (0 = never) alpha's ratio g_DD / g_CMI is measured again at the current images (one draw)
    # and smoothed: lam <- ema * lam + (1 - ema) * alpha * ratio (L_DD falls ~200x over a long run)
    recalibrate_every: Int = Field(default=0, ge=0, le=MAX_COUNT)
    recalibrate_ema: Float = Field(default=0.9, ge=0, lt=1)
    # every k iterations (0 = never; from iteration 0) g_DD and g_CMI are measured at the current images (one draw,
    # as a recalibration does; a recalibration's own measurement is recorded without a second one) and recorded
    # with the realised alpha = lam * g_CMI / g_DD (History.calib, metrics cmi.g_dd / cmi.g_cmi /
    # cmi.alpha_realised). Both are no-ops while CMI is off (a study's zero arm shares its job file).
    measure_every: Int = Field(default=0, ge=0, le=MAX_COUNT)
    space: Literal["features", "logits"] = "features"  # softmax over penultimate features (paper code)
    temperature: Float = Field(default=1.0, gt=0, le=1e6)
    agg: AggName = "random"  # random (paper) | mean over k sampled | max over k sampled
    k: Int = Field(default=1, ge=1, le=10_000)  # proxies sampled per application for mean / max
    every: Int = Field(default=1, ge=1, le=MAX_COUNT)  # apply every k-th image update
    subsample: Int | None = Field(default=None, ge=2, le=MAX_BATCH)  # images per class the CMI sees (None = all)
    # the proxy's forward/backward in bfloat16 autocast (opt-in: about 1.8x faster for a ResNet18 proxy on a
    # CPU with AVX512-BF16; the softmax and the CMI stay float32). README: speed and its measured accuracy.
    precision: Literal["fp32", "bf16"] = "fp32"

    @model_validator(mode="after")
    def _one_weight(self) -> "CMICfg":
        if self.lam > 0 and self.alpha > 0:
            raise ValueError(f"cmi.lam and cmi.alpha: at most one may be > 0 (alpha = scale-free lambda), but got "
                             f"lam={self.lam:g}, alpha={self.alpha:g}; set the other to 0")
        if self.recalibrate_every and self.lam > 0:
            raise ValueError(f"cmi.recalibrate_every > 0 needs cmi.alpha > 0 (a fixed cmi.lam is never recalibrated; "
                             f"with CMI off it is a no-op), but got recalibrate_every={self.recalibrate_every}, "
                             f"lam={self.lam:g}, alpha={self.alpha:g}")
        return self

    @property
    def on(self) -> bool:
        """Whether CMI is on (``lam > 0`` or ``alpha > 0``)."""
        return self.lam > 0 or self.alpha > 0


class ProxiesCfg(Cfg):
    """A named proxy set: its recipe is in ``proxy_sets.PROXY_SETS``; its weights live in ``dir``.

    ``dir`` None means ``<output.dir>/../proxies/<dataset>-<im_size>px-<set>`` beside the job's folder.
    ``from_registry`` names proxies in the MLflow registry instead (a proxy set name, or
    ``proxy-<dataset>-<arch>[/version|@alias]``, comma-separated); ``cmidd.tracking`` resolves it to ``dir``.
    """

    set: ProxySetName = "convnet-x4"
    dir: Folder | None = None
    from_registry: str | None = Field(default=None, min_length=1)
    epochs: Int | None = Field(default=None, ge=1, le=MAX_COUNT)  # overrides the set's pre-training epochs
    pretrain_if_missing: Bool = True
    lr: Float = Field(default=0.01, gt=0, le=100)  # paper: SGD lr 0.01, momentum 0.9, wd 1e-3, batch 256, no aug.
    momentum: Float = Field(default=0.9, ge=0, lt=1)
    weight_decay: Float = Field(default=1e-3, ge=0, le=1)
    batch: Int = Field(default=256, ge=1, le=MAX_BATCH)

    @model_validator(mode="after")
    def _one_source(self) -> "ProxiesCfg":
        if self.from_registry is not None and self.dir is not None:
            raise ValueError(
                f"set proxies.dir or proxies.from_registry, not both (got dir={str(self.dir)!r}, "
                f"from_registry={self.from_registry!r})"
            )
        return self


class EvalCfg(Cfg):
    """The DD evaluation protocol: fresh nets trained on the set (DSA on), tested on the real test split."""

    archs: list[NetName] = Field(default_factory=lambda: ["ConvNet"], min_length=1)
    num_eval: Int = Field(default=3, ge=1, le=10_000)  # seeds per architecture
    epochs: Int = Field(default=300, ge=1, le=MAX_COUNT)
    # per-arch override
    epochs_by_arch: dict[str, Annotated[Int, Field(ge=1, le=MAX_COUNT)]] = Field(default_factory=dict)
    lr: Float = Field(default=0.01, gt=0, le=100)
    lr_decay: Float = Field(default=0.1, gt=0, le=1)  # factor applied once, at half the epochs
    momentum: Float = Field(default=0.9, ge=0, lt=1)
    weight_decay: Float = Field(default=5e-4, ge=0, le=1)
    batch: Int = Field(default=256, ge=1, le=MAX_BATCH)
    dsa: Bool = True
    dsa_strategy: DsaStrategy = DSA_DEFAULT
    dsa_mode: DsaMode = "single"
    every: Int = Field(default=0, ge=0, le=MAX_COUNT)  # also evaluate during distillation every k iterations (0 = end)
    at: list[Annotated[Int, Field(ge=1, le=MAX_COUNT)]] = Field(default_factory=list, max_length=1000)  # and at these
    # iterations (beside every)
    baselines: list[Literal["random-real", "full"]] = Field(default_factory=list)
    ensemble: Bool = True  # also score the averaged-softmax ensemble of all archs x seeds (acc/ece/ensemble)
    ece_bins: Int = Field(default=15, ge=1, le=10_000)  # equal-width confidence bins of ece/ensemble
    # how the seeds of one arch train: "vmap" together (torch.func; BatchNorm nets still loop), "loop" one after
    # another, "auto" = vmap on CUDA, loop on CPU (where vmap measured ~0.5x the loop's speed: cmidd bench)
    batched: Literal["auto", "vmap", "loop"] = "auto"

    @model_validator(mode="after")
    def _by_arch_listed(self) -> "EvalCfg":
        extra = sorted(set(self.epochs_by_arch) - set(self.archs))
        if extra:
            raise ValueError(f"eval.epochs_by_arch keys must be in eval.archs, but got {extra}")
        return self

    def epochs_for(self, arch: str) -> int:
        """Training epochs of ``arch`` (large nets may train fewer epochs to bound the cost)."""
        return self.epochs_by_arch.get(arch, self.epochs)


class ExpertsCfg(Cfg):
    """MTT's expert trajectories: ``num`` nets of the job's ``net`` trained ``epochs`` on the real data."""

    num: Int = Field(default=2, ge=1, le=10_000)
    epochs: Int = Field(default=6, ge=1, le=MAX_COUNT)
    lr: Float = Field(default=0.01, gt=0, le=100)
    momentum: Float = Field(default=0.0, ge=0, lt=1)
    batch: Int = Field(default=256, ge=1, le=MAX_BATCH)
    dsa: Bool = False
    dsa_strategy: DsaStrategy = DSA_DEFAULT
    dsa_mode: DsaMode = "single"
    dir: Folder | None = None  # default: <output.dir>/../experts/<data>-<net>-n<num>-e<epochs>
    train_if_missing: Bool = True


class OutputCfg(Cfg):
    """Where the job writes. Nothing is written before the whole job validated and its data loaded."""

    dir: Folder = Path("runs/job")
    checkpoint_every: Int = Field(default=100, ge=0, le=MAX_COUNT)  # 0 = no checkpoints


class ScalingCfg(Cfg):
    """How many Ray Train workers run one distillation (1 = the plain single-process loop)."""

    workers: Int = Field(default=1, ge=1, le=1024)
    use_gpu: Bool = False
    cpus_per_worker: Float = Field(default=1.0, gt=0, le=1024)
    max_failures: Int = Field(default=2, ge=0, le=1000)  # worker-group restarts (from the last checkpoint)


class _JobBase(Cfg):
    name: str = Field(default="job", min_length=1, pattern=r"^[A-Za-z0-9_.+-]+$")
    seed: Int = Field(default=0, ge=0, le=MAX_SEED)
    device: Device = "cpu"
    data: DataCfg = DataCfg()
    output: OutputCfg = OutputCfg()


class DistillJob(_JobBase):
    """Distil ``ipc`` synthetic images per class with ``method`` (+ ``lam * CMI``), then evaluate."""

    kind: Literal["distill"] = "distill"
    ipc: Int = Field(default=10, ge=1, le=MAX_BATCH)
    net: NetCfg = NetCfg()  # the DD network (DM embedder / GM matching net)
    method: MethodCfg = Field(default_factory=lambda: METHOD_MODELS["dm"]())
    cmi: CMICfg = CMICfg()
    proxies: ProxiesCfg = ProxiesCfg()
    eval: EvalCfg = EvalCfg()
    scaling: ScalingCfg = ScalingCfg()
    experts: ExpertsCfg = ExpertsCfg()  # used by a method whose artifacts name "experts" (mtt)

    @model_validator(mode="after")
    def _cmi_rules(self) -> "DistillJob":
        m = self.method
        m.check_job(self)  # the method's own rules on the rest of the job (cmidd.config.methods)
        if self.cmi.subsample is not None and self.cmi.subsample > self.ipc:
            raise ValueError(
                f"cmi.subsample <= ipc must hold, but got cmi.subsample={self.cmi.subsample}, ipc={self.ipc}"
            )
        if self.cmi.measure_every and self.scaling.workers > 1:
            raise ValueError(f"cmi.measure_every is implemented on one worker only, but got "
                             f"scaling.workers={self.scaling.workers}")
        if self.cmi.recalibrate_every and (m.name != "dm" or self.scaling.workers > 1):
            raise ValueError(f"cmi.recalibrate_every is implemented for method dm on one worker only, but got "
                             f"method.name={m.name!r}, scaling.workers={self.scaling.workers}")
        if self.scaling.workers > 1 and self.cmi.on and self.cmi.agg == "max":
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
    synset: UserPath | None = None  # folder with images.pt, labels.pt, manifest.json
    ipc: Int = Field(default=10, ge=1, le=MAX_BATCH)  # for the random-real baseline
    eval: EvalCfg = EvalCfg()

    @model_validator(mode="after")
    def _something(self) -> "EvaluateJob":
        if self.synset is None and not self.eval.baselines:
            raise ValueError("set synset or eval.baselines: an evaluate job needs something to evaluate")
        return self


class BaselineJob(_JobBase):
    """Score the random-real baseline: ``ipc`` real train images per class drawn with each seed of ``draws``,
    each evaluated under ``eval`` with the evaluation seed ``seed`` (``cmidd best`` pairs a set with the draws
    scored with its own evaluation seed: ``cmidd.gain``)."""

    kind: Literal["baseline"] = "baseline"
    ipc: Int = Field(default=10, ge=1, le=MAX_BATCH)
    draws: list[Annotated[Int, Field(ge=0, le=MAX_SEED)]] = Field(min_length=1, max_length=1000)
    eval: EvalCfg = EvalCfg()

    @model_validator(mode="after")
    def _distinct(self) -> "BaselineJob":
        if len(set(self.draws)) != len(self.draws):
            raise ValueError(f"draws: must be distinct seeds, but got {self.draws}")
        return self


class EnsembleJob(_JobBase):
    """Combine saved synthetic sets of one data set (``sets``: folders, best first) into one set and evaluate it
    (``cmidd ensemble`` fetches them from a search's top trials or from registered versions)."""

    kind: Literal["ensemble"] = "ensemble"
    # folders with images.pt, labels.pt, manifest.json (verified)
    sets: list[UserPath] = Field(min_length=2, max_length=1000)
    sources: list[str] = []  # what each set is (runs:/<id>, <model>/<version>) for its meta and tags; default: sets
    mode: Literal["concat", "per-class-best"] = "concat"  # = cmidd.ensemble.SET_MODES
    eval: EvalCfg = EvalCfg()

    @model_validator(mode="after")
    def _sources(self) -> "EnsembleJob":
        if len(set(self.sets)) != len(self.sets):
            raise ValueError(f"sets: must be distinct folders, but got {[str(p) for p in self.sets]}")
        if self.sources and len(self.sources) != len(self.sets):
            raise ValueError(f"sources: one per set must be given, but got {len(self.sources)} sources for "
                             f"{len(self.sets)} sets")
        return self

    def source_labels(self) -> list[str]:
        """What each source set is: ``sources``, else the folders."""
        return list(self.sources) or [str(p) for p in self.sets]


Job = Annotated[Union[DistillJob, PretrainProxiesJob, EvaluateJob, ExpertsJob, EnsembleJob, BaselineJob],
                Field(discriminator="kind")]
# kind -> model: parse_job dispatches here (a pydantic discriminated union would prefix every error path
# with the kind); ``Job`` is the type of the result.
JOB_MODELS = {"distill": DistillJob, "pretrain-proxies": PretrainProxiesJob, "evaluate": EvaluateJob,
              "experts": ExpertsJob, "ensemble": EnsembleJob, "baseline": BaselineJob}
JOB_KINDS = tuple(JOB_MODELS)

def parse_job(raw: dict[str, Any], source: str = "<job>") -> Job:
    """Validate a job mapping (``kind`` defaults to ``distill``).

    Raises:
        ConfigError: one line per problem, naming ``source``, the field path, the rule and the value.
    """
    kind = raw.get("kind", "distill")
    if kind not in JOB_MODELS:
        raise ConfigError(f"{source}: kind: must be one of {', '.join(JOB_KINDS)} (got {kind!r})")
    try:
        return JOB_MODELS[kind].model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_error(source, e, {"method": {n: method_fields(n) for n in METHOD_MODELS}})) from None


def load_job(path: str | Path, overrides: list[str] | None = None) -> Job:
    """Load, override and validate a job YAML file.

    Args:
        path: the YAML file.
        overrides: ``["cmi.lam=100", "ipc=1"]``; one that sets ``cmi.alpha`` (or ``cmi.lam``) > 0 replaces the
            file's ``cmi.lam`` (``cmi.alpha``): the two are spellings of one weight.

    Returns:
        A frozen ``DistillJob``, ``PretrainProxiesJob``, ``ExpertsJob`` or ``EvaluateJob``.

    Raises:
        ConfigError: one line naming the file, the field path, the rule and the value.
    """
    raw = apply_overrides(read_yaml(path), overrides or [], str(path))
    return parse_job(_one_weight(raw, overrides or []), str(path))


# cmi.lam and cmi.alpha are two spellings of one weight (at most one may be > 0): a --set of one of them to a value
# > 0 replaces the file's other, so `--set cmi.alpha=0.05` works on a job file that sets cmi.lam.
WEIGHT_SPELLINGS = {"lam": "alpha", "alpha": "lam"}


def _one_weight(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    given = {o.partition("=")[0].strip() for o in overrides}
    cmi = raw.get("cmi")
    if not isinstance(cmi, dict):
        return raw
    for key, other in WEIGHT_SPELLINGS.items():
        value = cmi.get(key)
        if f"cmi.{key}" in given and f"cmi.{other}" not in given and isinstance(value, (int, float)) and value > 0:
            return {**raw, "cmi": {**cmi, other: 0}}
    return raw
