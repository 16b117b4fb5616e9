"""``RealPool``: the real training images grouped by class on the device, with seeded per-class draws."""

from __future__ import annotations

import torch
from torch import Tensor

from ..device import to_device
from ..errors import DataError


class RealPool:
    """Real images sorted by class in one device tensor, plus per-class offsets and counts.

    Class ``c`` occupies ``images[offsets[c] : offsets[c] + counts[c]]``. All randomness comes from the
    caller's CPU ``torch.Generator``; indices are drawn on CPU and then moved to ``device``, so a draw is
    identical whatever the device.

    Attributes:
        images: (N, C, H, W) on ``device``, sorted by class (stable: original order within a class).
        labels: (N,) int64 on ``device``, the sorted labels.
        num_classes: number of classes.
        counts: (num_classes,) int64 on CPU, images per class (may contain zeros).
        offsets: (num_classes,) int64 on CPU, start of each class in ``images``.
        device: where ``images`` lives.
    """

    def __init__(self, x: Tensor, y: Tensor, num_classes: int, device: torch.device | str = "cpu") -> None:
        """Build the pool.

        Args:
            x: (N, C, H, W) images.
            y: (N,) integer labels in ``[0, num_classes)``.
            num_classes: number of classes (classes without images are allowed).
            device: device to keep the images on.
        """
        if x.ndim != 4 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise ValueError(
                f"RealPool needs x (N,C,H,W) and y (N,); got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        y_cpu = y.detach().to("cpu", torch.int64)
        if y_cpu.numel() and (int(y_cpu.min()) < 0 or int(y_cpu.max()) >= num_classes):
            raise ValueError(
                f"RealPool labels must lie in [0, {num_classes}); got {int(y_cpu.min())}..{int(y_cpu.max())}"
            )
        self.device = torch.device(device)
        self.num_classes = int(num_classes)
        order = torch.argsort(y_cpu, stable=True)
        self._sorted_labels = y_cpu[order]
        self.images = x.detach()[order.to(x.device)].to(self.device)
        self.labels = self._sorted_labels.to(self.device)
        self.counts = torch.bincount(y_cpu, minlength=self.num_classes)
        self.offsets = torch.cumsum(self.counts, 0) - self.counts

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def _check_class(self, c: int) -> int:
        if not 0 <= c < self.num_classes:
            raise ValueError(f"class {c} out of range [0, {self.num_classes})")
        return int(c)

    def sample(self, c: int, n: int, gen: torch.Generator) -> Tensor:
        """Draw ``n`` distinct random images of class ``c``.

        Args:
            c: class index.
            n: how many; capped at the class size.
            gen: CPU generator.

        Returns:
            (min(n, counts[c]), C, H, W) on ``device``.
        """
        return self.images[to_device(self.sample_index(c, n, gen), self.device)]

    def sample_index(self, c: int, n: int, gen: torch.Generator) -> Tensor:
        """The CPU row indices ``sample`` draws (same ``gen`` consumption), for a caller that gathers several
        classes' draws with one copy to the device."""
        c = self._check_class(c)
        count, start = int(self.counts[c]), int(self.offsets[c])
        return torch.randperm(count, generator=gen)[: max(0, min(n, count))] + start

    def sample_all(self, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """Draw ``n`` distinct random images of every class with one batched index computation.

        Args:
            n: per-class count; capped at the smallest class size.
            gen: CPU generator.

        Returns:
            x (num_classes * n_eff, C, H, W) and y (num_classes * n_eff,) int64, both on ``device``,
            grouped by class in class order (class 0's n_eff images first).
        """
        n_eff = max(0, min(int(n), int(self.counts.min()) if self.num_classes else 0))
        # key = class + U[0,1): sorting keeps the class segments in place and shuffles within each one.
        # float64 so large class ids still leave plenty of resolution for the random part.
        noise = torch.rand(len(self), generator=gen, dtype=torch.float64)
        keys = self._sorted_labels.to(torch.float64) + noise
        perm = torch.argsort(keys)
        pos = (self.offsets.unsqueeze(1) + torch.arange(n_eff).unsqueeze(0)).reshape(-1)
        idx = perm[pos]
        y = torch.arange(self.num_classes).repeat_interleave(n_eff)
        return self.images[to_device(idx, self.device)], to_device(y, self.device)

    def first(self, c: int, n: int) -> Tensor:
        """The first ``n`` images of class ``c`` in stored (original) order: a deterministic pick.

        Returns:
            (min(n, counts[c]), C, H, W) on ``device``.
        """
        c = self._check_class(c)
        start = int(self.offsets[c])
        return self.images[start : start + max(0, min(n, int(self.counts[c])))]

    def random_init(self, ipc: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """``ipc`` distinct random real images per class, to initialize a synthetic set or as a baseline.

        Args:
            ipc: images per class.
            gen: CPU generator.

        Returns:
            x (num_classes * ipc, C, H, W) and y (num_classes * ipc,) int64 on ``device``, in class order.

        Raises:
            DataError: ``ipc`` exceeds the smallest class.
        """
        if ipc < 1:
            raise DataError(f"data.ipc: ipc must be at least 1; got {ipc}")
        smallest = int(torch.argmin(self.counts)) if self.num_classes else 0
        if self.num_classes and ipc > int(self.counts[smallest]):
            raise DataError(
                f"data.ipc: ipc={ipc} is larger than the smallest class "
                f"(class {smallest} has {int(self.counts[smallest])} images)"
            )
        return self.sample_all(ipc, gen)

    def __repr__(self) -> str:
        return (
            f"RealPool(n={len(self)}, num_classes={self.num_classes}, shape={tuple(self.images.shape[1:])}, "
            f"device={self.device})"
        )
