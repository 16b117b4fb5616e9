"""The CMI weight has one owner, ``cmidd.lam`` (issue 36, item 3): no other module defines a weight rule,
computes a lambda from gradient norms, or spells the ``+cmi`` label. The check walks every module's AST (no
import is executed); ``offences`` is shown to catch each kind on a snippet first."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "platform" / "cmidd"
OWNER = PKG / "lam.py"
RULES = {"effective_lambda", "gradient_norms", "lam_effective", "lam_of", "lam_from_alpha", "realised_alpha",
         "maybe_recalibrate", "weight_on", "set_label", "set_label_of_job", "set_label_of_params", "fmt_lam",
         "norms_here", "norms_whole", "norms_by_class"}
NORMS = {"g_dd", "g_cmi"}


def _name(node: ast.AST) -> str:
    return node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""


def offences(source: str) -> list[str]:
    """What in ``source`` belongs to the CMI weight's owner: a definition of one of its rules, arithmetic on the
    gradient norms (a lambda or a realised alpha), or the ``+cmi`` label literal."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in RULES:
            out.append(f"defines {node.name}")
        elif isinstance(node, ast.BinOp) and {_name(node.left), _name(node.right)} & NORMS:
            out.append(f"computes with {ast.unparse(node)}")
        elif isinstance(node, ast.Constant) and node.value == "+cmi":
            out.append("spells '+cmi'")
    return out


def test_offences_catches_each_kind():
    src = ("def set_label(m):\n    return m + '+cmi'\n\ndef f(run, g_dd, g_cmi):\n"
           "    run.lam = 0.3 * g_dd / g_cmi\n")
    assert set(offences(src)) == {"defines set_label", "computes with 0.3 * g_dd / g_cmi", "computes with 0.3 * g_dd",
                                  "spells '+cmi'"}
    assert offences("g = (g_dd, g_cmi)\nprint(f'{g_dd:.3g}')\n") == []  # passing the norms along is fine


def test_only_lam_py_owns_the_cmi_weight():
    bad = {str(p.relative_to(PKG)): o for p in sorted(PKG.rglob("*.py")) if p != OWNER
           for o in [offences(p.read_text())] if o}
    assert bad == {}
    assert offences(OWNER.read_text())  # the owner itself is where they live
