"""IDC (Kim et al. 2022, "Dataset Condensation via Efficient Synthetic-Data Parameterization").

Gradient matching with IDC's choices: the squared-difference gradient distance, and a network trained on
*real* data between outer steps (it follows the real training trajectory instead of overfitting the set).
Multi-formation (``method.factor``, 2 in IDC) is the loop's: every method sees decoded images
(``cmidd.formation``), and so does the CMI term, as in the CMI paper's IDC code.

Differences from the reference, kept on purpose: one image update per outer step for all classes at once
(IDC updates class by class), and the net optimizer is SGD with momentum 0.9 without weight decay.
"""

from __future__ import annotations

from ._registry import METHODS
from .base import MethodContext
from .gm import GM, mse_distance


@METHODS.register("idc")
def build_idc(ctx: MethodContext) -> GM:
    """Gradient matching with IDC's distance, a net trained on real data, and net momentum 0.9."""
    return GM(ctx, distance=mse_distance, net_on_real=True, net_momentum=0.9)
