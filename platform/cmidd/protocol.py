"""The evaluation protocol as a first-class, hashed thing: what produced a score, and its short stable id.

Two scores are comparable only when the same protocol produced them: the same architectures trained for the
same epochs, over the same number of seeds, with the same optimizer and DSA, tested on the same split of the
same data set at the same image size. ``Protocol`` holds exactly those fields; ``Protocol.id`` is the first 10
hex digits of the sha256 of its canonical JSON (sorted keys, no spaces), ``Protocol.summary`` a readable line.

Left out on purpose (they do not change what a score means): the job's seed (the seeds *drawn* differ, their
number is in), how seeds train (``eval.batched``: vmap and loop train the same nets), intermediate evaluations
(``eval.every``), baselines, the ensemble switch and its ECE bins, and the device.

Example:
    >>> p = Protocol.of(job.eval, "digits", split_seed=0, im_size=8)
    >>> p.id, p.summary
    ('3f0c1a9b2e', 'digits 8px split 0 | ConvNetD2 30ep, VGG11BN 10ep | 1 seed | sgd lr 0.01 ...')
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

VERSION = 1  # bump when the evaluation code changes what a protocol's score means


@dataclass(frozen=True)
class Protocol:
    """What produced a score (see the module docstring); build it with ``Protocol.of``."""

    dataset: str
    split_seed: int
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
    def of(cls, eval_cfg, dataset: str, split_seed: int, im_size: int) -> Protocol:
        """The protocol of an ``EvalCfg`` on ``dataset`` (test split drawn with ``split_seed``) at ``im_size``.

        ``im_size`` is the loaded data's (``data.im_size``), so that a native-size job (``data.im_size: null``)
        and one naming that size explicitly share one protocol.
        """
        e = eval_cfg
        return cls(
            dataset=str(dataset), split_seed=int(split_seed), im_size=int(im_size),
            archs=tuple(e.archs), epochs=tuple(int(e.epochs_for(a)) for a in e.archs), num_eval=int(e.num_eval),
            lr=float(e.lr), lr_decay=float(e.lr_decay), momentum=float(e.momentum),
            weight_decay=float(e.weight_decay), batch=int(e.batch),
            dsa=f"{e.dsa_strategy}/{e.dsa_mode}" if e.dsa else "off",
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
        """One readable line: data set, archs with epochs, seeds, optimizer, DSA."""
        archs = ", ".join(f"{a} {n}ep" for a, n in zip(self.archs, self.epochs))
        seeds = f"{self.num_eval} seed" + ("s" if self.num_eval != 1 else "")
        opt = (f"sgd lr {self.lr:g} decay {self.lr_decay:g} mom {self.momentum:g} wd {self.weight_decay:g} "
               f"batch {self.batch}")
        return (f"{self.dataset} {self.im_size}px split {self.split_seed} | {archs} | {seeds} | {opt} | "
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
        """The protocol of a ``canonical()`` string (a ``protocol.json`` tag)."""
        raw: dict[str, Any] = json.loads(text)
        raw.pop("v", None)
        return cls(**{**raw, "archs": tuple(raw["archs"]), "epochs": tuple(raw["epochs"])})


TAG_ID, TAG_SUMMARY, TAG_JSON = "protocol.id", "protocol.summary", "protocol.json"
UNKNOWN = "unknown"  # the protocol id of a version registered before protocols were recorded


def protocol_of_job(job, im_size: int) -> Protocol | None:
    """The protocol of a job that scores sets (distill, evaluate), None for the others."""
    eval_cfg = getattr(job, "eval", None)
    return None if eval_cfg is None else Protocol.of(eval_cfg, job.data.name, job.data.split_seed, im_size)
