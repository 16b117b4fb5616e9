"""MTT (Cazenavette et al. 2022, "Dataset Distillation by Matching Training Trajectories").

Per iteration: draw an expert trajectory and a start epoch t <= ``max_start_epoch``; from the expert's
parameters at t, train a student for ``syn_steps`` SGD steps on the synthetic set with a learnable step
size; the loss is the student's squared distance to the expert at t + ``expert_epochs``, normalized by the
expert's own travel: ``||theta_N - theta*_{t+M}||^2 / ||theta*_t - theta*_{t+M}||^2``.

The unrolled student keeps ``syn_steps`` graphs alive: memory grows linearly in ``syn_steps`` times the
activations of one student batch (``batch_syn``), which is the knob that bounds it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from ..augment import DSAParams, dsa
from ..errors import ConfigError
from ..experts import unflatten
from ..nets import create_net
from ._registry import METHODS
from .base import Method, MethodContext, draw_seed


def param_distance(theta: Tensor, start: Tensor, target: Tensor) -> Tensor:
    """MTT's normalized parameter distance ``||theta - target||^2 / ||start - target||^2``."""
    return ((theta - target) ** 2).sum() / ((start - target) ** 2).sum()


def unrolled_student(net, theta: Tensor, syn: Tensor, syn_y: Tensor, lr: Tensor, steps: int, batch: int | None,
                     gen: torch.Generator, augment=None) -> Tensor:
    """``steps`` differentiable SGD steps from ``theta`` on (syn, syn_y); returns the final parameter vector."""
    n = syn.shape[0]
    for _ in range(steps):
        if batch is None or batch >= n:
            x, y = syn, syn_y
        else:
            idx = torch.randperm(n, generator=gen)[:batch].to(syn.device)
            x, y = syn[idx], syn_y[idx]
        if augment is not None:
            x = augment(x, draw_seed(gen))
        loss = F.cross_entropy(functional_call(net, unflatten(theta, net), (x,)), y)
        (grad,) = torch.autograd.grad(loss, theta, create_graph=True)
        theta = theta - lr * grad
    return theta


class MTT(Method):
    """Trajectory matching with a learnable student step size (its own SGD, stepped after each update)."""

    steps_per_iteration = 1

    def __init__(self, ctx: MethodContext) -> None:
        if not ctx.experts:
            raise ConfigError("method mtt needs expert trajectories (experts: ...); none were given")
        self.ctx, cfg = ctx, ctx.cfg
        self.net = create_net(ctx.net.name, ctx.channels, ctx.num_classes, ctx.im_size, **ctx.net.kwargs())
        self.net.to(ctx.device).train()
        self.net.requires_grad_(False)  # parameters come from the trajectory vector
        self.experts = [t.to(ctx.device) for t in ctx.experts]
        self.lr = torch.tensor(cfg.lr_teacher, device=ctx.device, requires_grad=True)
        self.lr_opt = torch.optim.SGD([self.lr], lr=cfg.lr_lr, momentum=0.5)
        self.dsa_params = DSAParams(strategy=cfg.dsa_strategy, mode=cfg.dsa_mode)
        self._pick: tuple[int, int] = (0, 0)

    def begin_iteration(self, gen: torch.Generator) -> None:
        e = int(torch.randint(len(self.experts), (1,), generator=gen))
        t = int(torch.randint(self.ctx.cfg.max_start_epoch + 1, (1,), generator=gen))
        self._pick = (e, t)

    def loss(self, syn: Tensor, syn_y: Tensor, gen: torch.Generator, classes: list[int] | None = None) -> Tensor:
        """The trajectory loss. Sharded (``classes`` given), it does not split over classes: every worker
        computes it, drawing the same random numbers as the others, and only the worker holding class 0 keeps
        it, so that the summed gradient is the single-process one."""
        e, t = self._pick
        traj = self.experts[e]
        start, target = traj[t], traj[t + self.ctx.cfg.expert_epochs]
        theta0 = start.clone().requires_grad_(True)
        augment = (lambda x, s: dsa(x, s, self.dsa_params)) if self.ctx.cfg.dsa else None
        theta = unrolled_student(self.net, theta0, syn, syn_y, self.lr, self.ctx.cfg.syn_steps,
                                 self.ctx.cfg.batch_syn, gen, augment)
        loss = param_distance(theta, start, target)
        return loss if classes is None or 0 in classes else loss * 0.0

    def after_update(self, syn: Tensor, syn_y: Tensor, gen: torch.Generator) -> None:
        if self.lr.grad is not None:
            self.lr_opt.step()
            self.lr_opt.zero_grad(set_to_none=True)
            with torch.no_grad():
                self.lr.clamp_(min=1e-8)

    def state_dict(self) -> dict[str, Tensor]:
        """The learnable step size and its optimizer, for checkpoints (resume stays exact)."""
        return {"lr": self.lr.detach().clone(), "lr_opt": self.lr_opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.lr.copy_(state["lr"])
        self.lr_opt.load_state_dict(state["lr_opt"])


@METHODS.register("mtt")
def build_mtt(ctx: MethodContext) -> MTT:
    return MTT(ctx)
