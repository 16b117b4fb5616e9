"""Screenshots of MLflow's UI and optuna-dashboard on a tiny demo and a tiny search, in headless Chromium (not run by CI).

    python tools/ui_screenshots.py --out docs/img                # builds the stores, serves them, shoots, stops
    python tools/ui_screenshots.py --out docs/img --work /tmp/ui  # keep (and reuse) the stores in /tmp/ui

Steps: ``cmidd demo --quick`` and a 4-trial ``cmidd search`` into one sqlite MLflow store under ``--work``;
``mlflow server`` on 127.0.0.1 against it and ``optuna-dashboard`` on the search's study (if installed); Chromium
(``--headless --no-sandbox``, a new empty profile per shot, no network beyond 127.0.0.1) shoots the experiment
page, the best set's run (its key numbers first), the demo's parent run (its comparison figure), a registry
version and the study;
the PNGs are cut to the page (the MLflow Assistant panel on the right left out), reduced to 256 colours and
written to ``--out``. Needs ``chromium`` (``apt-get install -y chromium``) and Pillow (matplotlib's dependency).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
VIEW = "workflowType=machine_learning"  # cmidd.tracking.TRAINING_VIEW
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--virtual-time-budget=20000"]
SEARCH = {  # 4 trials of 8 iterations on digits at toy size: lambda (with its zero arm) and lr_img
    "name": "ui-search",
    "base": {"kind": "distill", "name": "ui-search", "seed": 0, "ipc": 2, "data": {"name": "digits"},
             "net": {"name": "ConvNetD1", "width": 16},
             "method": {"name": "dm", "iterations": 8, "batch_real": 16, "dsa": False},
             "cmi": {"lam": 1.0}, "proxies": {"set": "convnet-x1", "epochs": 1},
             "eval": {"archs": ["ConvNetD1"], "num_eval": 1, "epochs": 2, "every": 4, "dsa": False}},
    "params": {"cmi.lam": {"loguniform": [1.0, 100.0], "zero_arm": True},
               "method.lr_img": {"loguniform": [0.01, 10.0]}},
    "search": {"num_samples": 4, "seed": 0},
    "register_top_k": 1,
}


def cmidd(*args: str, cwd: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "platform"), "RAY_USAGE_STATS_ENABLED": "0",
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    out = subprocess.run([sys.executable, "-m", "cmidd.cli", "-q", *args], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=1200)
    if out.returncode != 0:
        raise SystemExit(f"cmidd {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return out.stdout


def build(work: Path) -> tuple[str, dict, dict]:
    """The demo and the search into ``work/mlflow.db`` (skipped when ``work`` holds them already)."""
    uri = f"sqlite:///{work / 'mlflow.db'}"
    if not (work / "demo.json").is_file():
        (work / "demo.json").write_text(cmidd("demo", "--quick", "--out", str(work / "demo"), "--tracking-uri", uri,
                                              "--json", cwd=work))
    if not (work / "search.json").is_file():
        import yaml

        space = {**SEARCH, "storage": str(work / "search")}
        space["base"] = {**SEARCH["base"], "proxies": {**SEARCH["base"]["proxies"], "dir": str(work / "proxies")},
                         "output": {"dir": str(work / "search-job")}}
        (work / "space.yaml").write_text(yaml.safe_dump(space))
        (work / "search.json").write_text(cmidd("search", str(work / "space.yaml"), "--tracking-uri", uri, "--json",
                                                cwd=work))
    return uri, json.loads((work / "demo.json").read_text()), json.loads((work / "search.json").read_text())


def serve(cmd: list[str], url: str, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{cmd[0]} ended: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return proc
        except OSError:
            time.sleep(1)
    proc.terminate()
    raise SystemExit(f"{url} did not answer in 120 s")


def shoot(url: str, path: Path, size: tuple[int, int], crop_right: int = 0) -> Path:
    """One screenshot of ``url`` (a new empty profile), cut by ``crop_right`` pixels, 256 colours."""
    from PIL import Image

    with tempfile.TemporaryDirectory(prefix="cmidd-chromium-") as profile:
        raw = Path(profile) / "shot.png"
        subprocess.run(["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}/p", f"--window-size={size[0]},{size[1]}",
                        f"--screenshot={raw}", url], capture_output=True, timeout=180, check=True)
        img = Image.open(raw).convert("RGB")
        if crop_right:
            img = img.crop((0, 0, img.width - crop_right, img.height))
        img.quantize(256).save(path, optimize=True)
    print(f"{path} ({path.stat().st_size // 1024} KiB): {url}")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    p.add_argument("--work", type=Path, default=None, help="where the stores go (default: a new temporary folder)")
    p.add_argument("--port", type=int, default=5077)
    p.add_argument("--dashboard-port", type=int, default=8077)
    args = p.parse_args(argv)
    if shutil.which("chromium") is None:
        raise SystemExit("chromium not found: apt-get install -y chromium")
    work = args.work or Path(tempfile.mkdtemp(prefix="cmidd-ui-"))
    work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    uri, demo, search = build(work)

    from mlflow import MlflowClient

    base = f"http://127.0.0.1:{args.port}"
    server = serve([str(BIN / "mlflow"), "server", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port",
                    str(args.port), "--workers", "1"], f"{base}/health", work / "mlflow-server.log")
    procs = [server]
    try:
        client = MlflowClient(base)
        parent = client.get_run(demo["parent_run_id"])
        exp = parent.info.experiment_id
        version = demo["best"]["version"]
        wide, crop = (1700, 820), 440  # the Assistant panel: ~430 px on the right
        shoot(f"{base}/#/experiments/{exp}?{VIEW}", args.out / "mlflow-experiment.png", (1700, 420), crop)
        shoot(f"{base}/#/experiments/{exp}/runs/{demo['best']['run_id']}?{VIEW}", args.out / "mlflow-run.png",
              (1700, 1300), crop)
        shoot(f"{base}/#/experiments/{exp}/runs/{parent.info.run_id}/artifacts/comparison.png?{VIEW}",
              args.out / "mlflow-demo-run.png", wide, crop)
        shoot(f"{base}/#/models/distilled-digits-ipc10/versions/{version}", args.out / "mlflow-version.png",
              (1700, 1000), crop)
        study = search["summary"].get("optuna_study")
        dashboard = shutil.which("optuna-dashboard", path=str(BIN)) or shutil.which("optuna-dashboard")
        if study and dashboard:
            dash = f"http://127.0.0.1:{args.dashboard_port}"
            procs.append(serve([dashboard, study["storage"], "--host", "127.0.0.1", "--port",
                                str(args.dashboard_port)], f"{dash}/api/studies", work / "dashboard.log"))
            shoot(f"{dash}/dashboard/studies/1", args.out / "optuna-dashboard.png", (1400, 900))
        else:
            print("optuna-dashboard: not installed (pip install -c constraints.txt -e '.[dashboard]'): no shot")
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
