"""The evaluation protocol as a first-class, hashed thing: what produced a score, and its short stable id.

Two scores are comparable only when the same protocol produced them: the same architectures trained for the
same epochs, over the same number of seeds, with the same optimizer and DSA, tested on the same split of the
same data at the same image size. ``Protocol`` holds exactly those fields; ``Protocol.id`` is the first 10 hex
digits of the sha256 of its canonical JSON (sorted keys, no spaces, the format ``VERSION``),
``Protocol.summary`` a readable line.

The data are named by their content (``data``: ``Dataset.digest``, the sha256 of what the loader read, split by
split), for every data kind: two imagefolder roots (or torchvision roots) of different images never share a
protocol, nor its champion, and one copy of the data moved to another folder keeps its protocol.

Canonical, so that one protocol has one id:
- ``archs`` is a set: sorted by name, each with its epochs (the order only moves which seed trains which net);
- DSA: ``off`` when eval.dsa is false or the strategy applies nothing (``none``); in mode ``single`` (one group
  per call, drawn uniformly) the groups are a multiset, sorted; a strategy of one group is the same in
  ``single`` and ``multi`` (reads ``single``); in ``multi`` the order of the ops is kept (they compose);
- ``split_seed`` only where the loader's split uses it (digits, mnist5k; None for imagefolder and torchvision
  sets, whose files define the split).

Left out on purpose (they do not change what a score means): the job's seed (the seeds *drawn* differ, their
number is in), how seeds train (``eval.batched``: vmap and loop train the same nets), intermediate evaluations
(``eval.every``), baselines, the ensemble switch and its ECE bins, the device, and where the data live.

What the fields do not name but a score depends on (the DSA strengths, the lr schedule, the nets' layers, the
normalization constants: ``evaluation_constants``) is versioned: change one and bump ``VERSION``, recording
the new ``constants_digest()`` in ``CONSTANTS_DIGEST`` (tests/test_protocol.py fails until then).

Example:
    >>> p = Protocol.of(job.eval, data)
    >>> p.id, p.summary
    ('3f0c1a9b2e', 'digits data 5e1f0a2c 8px split 0 | ConvNetD2 30ep, VGG11BN 10ep | 1 seed | sgd lr 0.01 ...')
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from .errors import ConfigError

# bump when the evaluation code changes what a protocol's score means, and record the new constants digest:
# 1: the first recorded protocols; 2: the data's content digest in the id, canonical archs and DSA, split_seed
# only where it splits
VERSION = 2
CONSTANTS_DIGEST = {2: "4ae3aa1981f41bff"}  # VERSION -> constants_digest() under it; never edit an old entry


@dataclass(frozen=True)
class Protocol:
    """What produced a score (see the module docstring); build it with ``Protocol.of``."""

    dataset: str
    data: str  # the data's content digest (``Dataset.digest``, 64 hex)
    split_seed: int | None  # None: the loader's split ignores it
    im_size: int
    archs: tuple[str, ...]
    epochs: tuple[int, ...]  # per arch, in the order of ``archs``
    num_eval: int
    lr: float
    lr_decay: float
    momentum: float
    weight_decay: float
    batch: int
    dsa: str  # "off" or "<strategy>/<mode>"

    @classmethod
    def of(cls, eval_cfg, data) -> Protocol:
        """The protocol of an ``EvalCfg`` on the loaded ``data`` (a ``cmidd.data.Dataset``: its name, content
        digest, split seed and image size).

        The image size is the loaded data's, so that a native-size job (``data.im_size: null``) and one naming
        that size explicitly share one protocol.
        """
        e = eval_cfg
        pairs = sorted((str(a), int(e.epochs_for(a))) for a in e.archs)
        return cls(
            dataset=str(data.name), data=str(data.digest),
            split_seed=None if data.split_seed is None else int(data.split_seed), im_size=int(data.im_size),
            archs=tuple(a for a, _ in pairs), epochs=tuple(n for _, n in pairs), num_eval=int(e.num_eval),
            lr=float(e.lr), lr_decay=float(e.lr_decay), momentum=float(e.momentum),
            weight_decay=float(e.weight_decay), batch=int(e.batch),
            dsa=canonical_dsa(bool(e.dsa), e.dsa_strategy, e.dsa_mode),
        )

    def canonical(self) -> str:
        """The canonical JSON the id hashes: sorted keys, no spaces, with the protocol format ``VERSION``."""
        body = {**asdict(self), "archs": list(self.archs), "epochs": list(self.epochs), "v": VERSION}
        return json.dumps(body, sort_keys=True, separators=(",", ":"))

    @property
    def id(self) -> str:
        """10 hex digits of the sha256 of ``canonical()``: stable across runs, machines and Python versions."""
        return hashlib.sha256(self.canonical().encode()).hexdigest()[:10]

    @property
    def summary(self) -> str:
        """One readable line: data set and its digest's first 8 hex, archs with epochs, seeds, optimizer, DSA."""
        archs = ", ".join(f"{a} {n}ep" for a, n in zip(self.archs, self.epochs))
        seeds = f"{self.num_eval} seed" + ("s" if self.num_eval != 1 else "")
        opt = (f"sgd lr {self.lr:g} decay {self.lr_decay:g} mom {self.momentum:g} wd {self.weight_decay:g} "
               f"batch {self.batch}")
        split = "" if self.split_seed is None else f" split {self.split_seed}"
        return (f"{self.dataset} data {self.data[:8]} {self.im_size}px{split} | {archs} | {seeds} | {opt} | "
                f"dsa {self.dsa}")

    def tags(self) -> dict[str, str]:
        """The tags every scored run and registered version carries: ``protocol.id``, ``.summary``, ``.json``."""
        return {TAG_ID: self.id, TAG_SUMMARY: self.summary, TAG_JSON: self.canonical()}

    def eval_cfg(self):
        """An ``EvalCfg`` that scores under this protocol (``Protocol.of(p.eval_cfg(), ...) == p``): how
        ``cmidd evaluate`` re-scores registered sets under a protocol named by its id."""
        from .config import EvalCfg

        first = self.epochs[0]
        dsa = {} if self.dsa == "off" else dict(zip(("dsa_strategy", "dsa_mode"), self.dsa.split("/")))
        return EvalCfg(archs=list(self.archs), epochs=first, num_eval=self.num_eval,
                       epochs_by_arch={a: n for a, n in zip(self.archs, self.epochs) if n != first},
                       lr=self.lr, lr_decay=self.lr_decay, momentum=self.momentum, weight_decay=self.weight_decay,
                       batch=self.batch, dsa=self.dsa != "off", **dsa)

    @classmethod
    def from_json(cls, text: str) -> Protocol:
        """The protocol of a ``canonical()`` string (a ``protocol.json`` tag).

        Raises:
            ConfigError: the string was written under another protocol format ``VERSION`` (its id cannot be
                recomputed: score under a protocol of this version instead).
        """
        raw: dict[str, Any] = json.loads(text)
        v = raw.pop("v", None)
        if v != VERSION:
            raise ConfigError(f"protocol.json: must be of protocol format v{VERSION}, but got v{v} (recorded by an "
                              "older cmidd, without the data's digest); name a protocol recorded by this version")
        return cls(**{**raw, "archs": tuple(raw["archs"]), "epochs": tuple(raw["epochs"])})


def canonical_dsa(on: bool, strategy: str, mode: str) -> str:
    """``off`` or ``<strategy>/<mode>`` in canonical form (module docstring): off when ``on`` is false or the
    strategy applies nothing; one group reads ``single``; ``single``'s groups sorted; ``multi``'s order kept.

    Example:
        >>> canonical_dsa(True, "rotate_crop", "single"), canonical_dsa(True, "none", "multi")
        ('crop_rotate/single', 'off')
    """
    names = [] if strategy in ("", "none") else strategy.split("_")
    if not on or not names:
        return "off"
    if len(names) == 1:
        mode = "single"  # single = multi restricted to the drawn group: with one group they are equal
    return "_".join(sorted(names) if mode == "single" else names) + f"/{mode}"


def evaluation_constants() -> dict[str, Any]:
    """What a score depends on that no protocol field names: the DSA strengths and flip probability, the lr
    schedule, every registered net's layers and parameter shapes (3 channels, 10 classes, 32 px), and the loaders'
    constants (digits' test fraction and pixel scale, mnist5k's split and statistics, the torchvision sets'
    normalization). ``constants_digest`` hashes it; change one and bump ``VERSION``."""
    import torch

    from .augment import FLIP_PROB, DSAParams, op_names
    from .data import digits, mnist5k, torchvision_sets
    from .nets import NETS, create_net
    from .training import lr_at

    dsa = {k: v for k, v in asdict(DSAParams()).items() if k not in ("strategy", "mode")}
    nets = {}
    for name in NETS.names():
        with torch.random.fork_rng(devices=[]):
            net = create_net(name, 3, 10, 32)
        nets[name] = [f"{n}:{type(m).__name__}" for n, m in net.named_modules()] + \
                     [f"{n}:{tuple(p.shape)}" for n, p in net.named_parameters()]
    return {
        "dsa": {**dsa, "flip_prob": FLIP_PROB, "ops": op_names()},
        "lr_schedule": [lr_at(e, 10, 1.0, 0.1) for e in range(1, 11)] + [lr_at(e, 7, 1.0, 0.5) for e in range(1, 8)],
        "nets": nets,
        "data": {"digits": [digits.TEST_FRACTION, digits.WHITE],
                 "mnist5k": [mnist5k.PER_CLASS, mnist5k.TEST_PER_CLASS, mnist5k.MEAN, mnist5k.STD],
                 "torchvision": torchvision_sets.normalization()},
    }


def constants_digest() -> str:
    """16 hex of the sha256 of ``evaluation_constants()`` as canonical JSON (what ``CONSTANTS_DIGEST`` records)."""
    text = json.dumps(evaluation_constants(), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


TAG_ID, TAG_SUMMARY, TAG_JSON = "protocol.id", "protocol.summary", "protocol.json"
UNKNOWN = "unknown"  # the protocol id of a version registered before protocols were recorded


def protocol_of_job(job, data) -> Protocol | None:
    """The protocol of a job that scores sets (distill, evaluate) on its loaded ``data``, None for the others."""
    eval_cfg = getattr(job, "eval", None)
    return None if eval_cfg is None else Protocol.of(eval_cfg, data)
