"""IDC (Kim et al. 2022, "Dataset Condensation via Efficient Synthetic-Data Parameterization").

Gradient matching with IDC's choices: the squared-difference gradient distance, and a network trained on
*real* data between outer steps (it follows the real training trajectory instead of overfitting the set).
Multi-formation (``method.factor``, 2 in IDC) is the loop's: every method sees decoded images
(``cmidd.formation``), and so does the CMI term, as in the CMI paper's IDC code.

As in the reference, the images take one SGD step per class (``class_by_class``: class c's matching loss and,
with CMI, the CMI of class c's images alone), then the net trains on real data. Difference kept on purpose:
the net optimizer is SGD with momentum 0.9 without weight decay.
"""

from __future__ import annotations

from ._registry import METHODS
from .base import MethodContext
from .gm import GM, mse_distance


@METHODS.register("idc")
def build_idc(ctx: MethodContext) -> GM:
    """Gradient matching with IDC's distance, a net trained on real data, net momentum 0.9, class by class."""
    return GM(ctx, distance=mse_distance, net_on_real=True, net_momentum=0.9, class_by_class=True)
