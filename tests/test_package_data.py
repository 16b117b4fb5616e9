"""The job files ``cmidd demo`` and ``cmidd bench`` read ship in the wheel (issue 36, item 4).

A wheel is built from a copy of the checkout (pyproject.toml, README.md, platform/), installed with pip into a
folder of its own, and a fresh interpreter run from outside the checkout, with that folder first on its path,
finds every job file through ``cmidd.config.JOBS_DIR`` (importlib.resources) inside the installed package.
About 5 s: the wheel is pure Python and nothing is fetched (``--no-deps --no-build-isolation --no-index``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from cmidd.config import JOBS_DIR

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import json, sys
from pathlib import Path
import cmidd
from cmidd.config import JOBS_DIR, load_search, parse_job, read_yaml
from cmidd.demo import demo_jobs
from cmidd.bench.reproduce import BASE
jobs = {k: parse_job(v).name for k, v in demo_jobs(Path("out")).items()}
bench = {p: sorted(read_yaml(JOBS_DIR / "bench" / p)) for p in ("speed.yaml", "ray.yaml", "reproduce.yaml")}
space = load_search(JOBS_DIR / "bench" / "search.yaml").name
print(json.dumps({"package": cmidd.__file__, "jobs_dir": str(JOBS_DIR), "demo": jobs, "bench": bench,
                  "space": space, "reproduce_base": str(BASE)}))
"""


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "-q", *args], check=True, capture_output=True, text=True,
                   env={**os.environ, "PIP_NO_INPUT": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"})


def test_the_wheel_ships_the_job_files_and_an_install_finds_them(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "platform", src / "platform",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"))
    _pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp_path / "whl"), str(src))
    (wheel,) = (tmp_path / "whl").glob("cmidd-*.whl")
    shipped = {n.removeprefix("cmidd/jobs/") for n in zipfile.ZipFile(wheel).namelist() if n.startswith("cmidd/jobs/")}
    assert shipped == {str(p.relative_to(JOBS_DIR)) for p in JOBS_DIR.rglob("*.yaml")}  # every one, and only those
    assert {"demo_distill_dm_digits_ipc10.yaml", "bench/speed.yaml", "bench/search.yaml"} <= shipped

    site = tmp_path / "site"
    _pip("install", "--no-deps", "--no-index", "--target", str(site), str(wheel))
    away = tmp_path / "elsewhere"  # no jobs/ folder, no checkout around
    away.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=away, env=env, check=True, capture_output=True,
                         text=True).stdout
    got = json.loads(out.strip().splitlines()[-1])
    assert Path(got["package"]).is_relative_to(site)  # the installed copy, not the checkout
    assert Path(got["jobs_dir"]) == site / "cmidd" / "jobs" and Path(got["reproduce_base"]).is_file()
    assert set(got["demo"]) == {"pretrain", "dm", "dm+cmi"} and got["space"] == "bench-search"
    assert all("kind" in keys for keys in got["bench"].values())
