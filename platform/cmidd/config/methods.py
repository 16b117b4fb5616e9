"""Each DD method's config model, registered by name in ``METHOD_CONFIGS``.

Kept in the config package, beside the job schema that builds its ``method`` union from them: torch-free, and the
plug-ins (``cmidd.methods``, which import torch) stay below the config (they name these models under
``TYPE_CHECKING`` only), so no import cycle runs through them.

The job's ``method`` block is the union of these models, told apart by ``method.name`` (``MethodCfg``, below).
A model holds the fields shared by every method (``MethodBase``: the image optimizer, the loop's multi-formation,
the real batch, DSA) plus its method's own; a field of another method is refused (``extra="forbid"``). Every
int/float field has an upper bound (``tests/test_config.py``).

A new method adds its model here with ``@METHOD_CONFIGS.register("<name>")`` and ``name: Literal["<name>"]``; the
model also declares the artifacts the method needs (``artifacts``) and its rules on the rest of the job
(``check_job``).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import BeforeValidator, Discriminator, Field, Tag

from ..errors import UnknownNameError
from ..registry import Registry
from ._fields import DSA_DEFAULT, MAX_BATCH, MAX_COUNT, MAX_LR, Bool, Cfg, DsaMode, DsaStrategy, Float, Int

# name -> the method's config model; the method's factory is registered under the same name in
# ``cmidd.methods.METHODS`` (tests/test_method_conformance.py checks the two registries name the same methods)
METHOD_CONFIGS: Registry = Registry("method")


class MethodBase(Cfg):
    """The fields every method has: its image optimizer, the loop's multi-formation, the real batch, DSA."""

    name: str
    iterations: Int = Field(default=300, ge=1, le=MAX_COUNT)
    lr_img: Float = Field(default=1.0, gt=0, le=MAX_LR)
    momentum: Float = Field(default=0.5, ge=0, lt=1)
    batch_real: Int = Field(default=256, ge=1, le=MAX_BATCH)  # real images per class per iteration
    init: Literal["real", "noise"] = "real"
    dsa: Bool = True
    dsa_strategy: DsaStrategy = DSA_DEFAULT
    dsa_mode: DsaMode = "single"
    # multi-formation (IDC's, applied by the loop to every method: cmidd.formation): each stored image decodes
    # into factor**2 training images (1 = off)
    factor: Int = Field(default=1, ge=1, le=4)

    # what the method needs besides the real data, prepared by the runner before the loop (``runner.ARTIFACTS``):
    # "experts" = expert trajectories trained on the real data (``cmidd.experts``)
    artifacts: ClassVar[tuple[str, ...]] = ()

    def check_job(self, job: Any) -> None:
        """Rules tying this method's fields to the rest of the distill ``job`` (raise ``ValueError``); none here."""


@METHOD_CONFIGS.register("dm")
class DmCfg(MethodBase):
    """Distribution matching (``cmidd.methods.dm``)."""

    name: Literal["dm"] = "dm"
    # the DD net's forward/backward (real and synthetic sides) under bfloat16 autocast, embeddings cast back to
    # float32 before the loss; the images and their optimizer stay float32. Opt-in (README: speed).
    precision: Literal["fp32", "bf16"] = "fp32"


@METHOD_CONFIGS.register("gm")
class GmCfg(MethodBase):
    """Gradient matching, DC / DSA (``cmidd.methods.gm``): outer steps per fresh net, inner net-training steps."""

    name: Literal["gm"] = "gm"
    outer_loop: Int = Field(default=10, ge=1, le=MAX_COUNT)
    inner_loop: Int = Field(default=50, ge=0, le=MAX_COUNT)
    lr_net: Float = Field(default=0.01, gt=0, le=100)
    batch_train: Int = Field(default=256, ge=1, le=MAX_BATCH)
    # the per-class gradients: "batched" = every class in one torch.func vmap pass (per-class BatchNorm statistics
    # kept), "loop" = one backward per class as in the reference; equal up to float rounding. "auto": batched on
    # CUDA (launch-bound there), loop elsewhere (28x28 on 2 CPU cores: the loop ~4x faster, gpu.md)
    gm_impl: Literal["auto", "batched", "loop"] = "auto"
    gm_class_chunk: Int = Field(default=10, ge=1, le=1000)  # classes per batched pass (bounds its memory)


@METHOD_CONFIGS.register("idc")
class IdcCfg(GmCfg):
    """IDC (``cmidd.methods.idc``): gradient matching's fields (its reference sets ``factor: 2``)."""

    name: Literal["idc"] = "idc"  # type: ignore[assignment]


@METHOD_CONFIGS.register("mtt")
class MttCfg(MethodBase):
    """Trajectory matching (``cmidd.methods.mtt``): student steps on the set, expert epochs to match, lrs."""

    name: Literal["mtt"] = "mtt"
    syn_steps: Int = Field(default=10, ge=1, le=10_000)
    expert_epochs: Int = Field(default=2, ge=1, le=MAX_COUNT)
    max_start_epoch: Int = Field(default=2, ge=0, le=MAX_COUNT)
    lr_teacher: Float = Field(default=0.01, gt=0, le=100)  # the student's initial (learnable) step size
    lr_lr: Float = Field(default=1e-5, gt=0, le=100)  # the learning rate of that step size
    batch_syn: Int | None = Field(default=None, ge=1, le=MAX_BATCH)  # synthetic images per student step (None = all)

    artifacts: ClassVar[tuple[str, ...]] = ("experts",)

    def check_job(self, job: Any) -> None:
        if self.max_start_epoch + self.expert_epochs > job.experts.epochs:
            raise ValueError("method.max_start_epoch + method.expert_epochs <= experts.epochs must hold, but got "
                             f"{self.max_start_epoch} + {self.expert_epochs} > {job.experts.epochs}")


def _method_tag(value: Any) -> str | None:
    """The ``method`` block's member of the union: its ``name`` (``dm`` when omitted)."""
    if isinstance(value, dict):
        name = value.get("name", "dm")
        return name if isinstance(name, str) else None
    return getattr(value, "name", None)


def _known_method(value: Any) -> Any:
    """Refuse an unregistered ``method.name`` with the registry's line (close match, the choices)."""
    name = value.get("name", "dm") if isinstance(value, dict) else None
    if isinstance(name, str) and name not in METHOD_CONFIGS:
        try:
            METHOD_CONFIGS.get(name)
        except UnknownNameError as e:
            raise ValueError(f"name: {e}") from None
    return value


# The DD method and its image optimizer: one model per registered method (above), told apart
# by ``name``; each forbids the fields of the others.
METHOD_MODELS: dict[str, type[MethodBase]] = {n: METHOD_CONFIGS.get(n) for n in METHOD_CONFIGS.names()}
MethodCfg = Annotated[Union[tuple(Annotated[m, Tag(n)] for n, m in METHOD_MODELS.items())],  # type: ignore[misc]
                      Discriminator(_method_tag, custom_error_type="method",
                                    custom_error_message=f"must be a mapping of a method's fields, its name one of "
                                                         f"{', '.join(METHOD_MODELS)}"),
                      BeforeValidator(_known_method)]


def method_cfg(**fields: Any) -> MethodBase:
    """The config model of method ``fields["name"]`` (``dm`` when omitted), validated: ``method_cfg(name="gm")``."""
    return METHOD_CONFIGS.get(fields.get("name", "dm")).model_validate(fields)


def method_fields(name: str) -> set[str]:
    """The field names of method ``name``'s config model."""
    return set(METHOD_MODELS[name].model_fields)
