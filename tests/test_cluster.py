"""`make test-cluster`: the README's digits search on a real 2-node Ray cluster with an authenticated MLflow server.

Real parts only: a Ray head and a second Ray node (`ray start --address`) on 127.0.0.1, both with Ray's token auth
on (the token in the environment, not in argv); the second node in its own mount namespace (`unshare -m`, root)
with an empty tmpfs over /tmp (where this test keeps the driver's files: the search's storage, the proxies the
driver pre-trains) and over the checkout's runs/, so only what travels through Ray's object store or the MLflow
server reaches it; a real `mlflow server` with MLflow's basic-auth app (admin credentials from environment
variables) and artifacts proxied through it. Trials are pinned to the second node by a custom resource.

Then `best`, `pull`, `evaluate`, `ensemble --from-search` against the server, and bad input: a wrong password and a
server that is down each give one error line naming the server and write nothing.

Run by `make test-cluster` (CMIDD_TEST_CLUSTER=1); skipped by `make test` (the cluster marker).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
NODE2 = "node2"  # the custom resource only the second node has
T0 = time.monotonic()


def _space(root: Path, shared: Path) -> Path:
    """The README's digits search (search_spaces/digits_dmcmi.yaml) at the tiniest sizes, trials pinned to node 2,
    registered under another protocol than the trials' (so registration re-scores against the server), Tune's
    experiment in a declared shared storage given as a URI (``file://``; ``s3://`` goes the same pyarrow way)."""
    space = yaml.safe_load((ROOT / "search_spaces/digits_dmcmi.yaml").read_text())
    base = space["base"]
    base["ipc"] = 2
    base["method"]["iterations"] = 4
    base["proxies"]["epochs"] = 1
    base["eval"].update(epochs=2, every=2)
    base["output"] = {"dir": str(root / "unused"), "checkpoint_every": 2}
    space["params"] = {"cmi.lam": {"loguniform": [1.0, 1000.0]},  # every trial uses the driver's proxies
                       "method.lr_img": {"loguniform": [0.3, 3.0]}}
    space["search"].update(num_samples=2, max_concurrent_trials=1, asha=None, time_budget_s=900)
    space["resources"] = {"cpus": 1, "gpus": 0, "custom": {NODE2: 1}}
    space["register_top_k"] = 2
    space["register_eval"] = {**base["eval"], "epochs": 3}
    space["storage"] = str(root / "storage")
    space["tune_storage"] = f"file://{shared}"
    path = root / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def _on_node2(address: str, env: dict[str, str], code: str) -> str:
    """Run ``code`` (an expression) in a Ray task pinned to node 2; its value as text."""
    script = ("import os, ray; ray.init(address=%r, log_to_driver=False); "
              "f = ray.remote(num_cpus=0, resources={%r: 0.001})(lambda: str(%s)); "
              "print('VALUE', ray.get(f.remote()), ray.get_runtime_context().get_node_id())" % (address, NODE2, code))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    line = [x for x in out.stdout.splitlines() if x.startswith("VALUE ")]
    assert line, out.stderr[-2000:]
    return line[-1].split()[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from mlflowserver import auth_server
    from raycluster import alive_nodes, cluster

    if os.geteuid() != 0:
        pytest.fail("make test-cluster needs root (unshare -m and mount for the second node's private /tmp)")
    root = tmp_path_factory.mktemp("cluster")
    shared = Path(tempfile.mkdtemp(prefix="cmidd-cluster-shared-", dir="/var/tmp"))  # both nodes see /var/tmp
    ray_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    (ROOT / "runs").mkdir(exist_ok=True)
    for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_URI"):
        os.environ.pop(k, None)  # the nodes hold no MLflow credentials: the trials get them from the driver
    hidden = (Path("/tmp"), ROOT / "runs")
    with auth_server(root / "mlflow") as server, \
            cluster(root, (1, 1), env=ray_env, resources={1: {NODE2: 1}}, hide={1: hidden}) as address:
        nodes = alive_nodes(address, ray_env)
        node2 = [n["NodeID"] for n in nodes if NODE2 in n["Resources"]]
        assert len(nodes) == 2 and len(node2) == 1, nodes
        env = {**os.environ, **ray_env, **server.client_env(), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1"}
        env.pop("MLFLOW_TRACKING_URI", None)
        print(f"\n[cluster] up in {time.monotonic() - T0:.0f} s: head + node 2 ({node2[0]}), server {server.url}")
        try:
            yield SimpleNamespace(root=root, server=server, address=address, node2=node2[0], env=env,
                                  ray_env=ray_env, shared=shared, space=_space(root, shared))
        finally:
            shutil.rmtree(shared, ignore_errors=True)


def _cmidd(w, *args: str, env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    t = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "cmidd.cli", *args], capture_output=True, text=True,
                         env=env or w.env, cwd=w.root, timeout=timeout)
    print(f"[cluster] cmidd {args[0]}: exit {out.returncode} in {time.monotonic() - t:.0f} s")
    return out


def _client(w):
    from mlflow import MlflowClient

    os.environ.update(w.server.client_env())
    return MlflowClient(tracking_uri=w.server.url, registry_uri=w.server.url)


def test_node2_cannot_read_the_drivers_files(world):
    marker = world.root / "marker"
    marker.write_text("driver only")
    assert _on_node2(world.address, world.env, f"os.path.exists({str(marker)!r})") == "False"
    assert _on_node2(world.address, world.env, f"os.path.exists({str(ROOT / 'platform')!r})") == "True"


def test_search_best_pull_evaluate_ensemble_on_two_nodes(world):
    w = world
    out = _cmidd(w, "search", str(w.space), "--address", w.address, "--tracking-uri", w.server.url)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    assert w.server.password not in out.stdout + out.stderr
    parent = (w.root / "storage" / "parent_run_id").read_text().strip()
    client = _client(w)
    trials = client.search_runs([client.get_run(parent).info.experiment_id],
                                f"tags.`mlflow.parentRunId` = '{parent}'")
    assert len(trials) == 2 and all(r.info.status == "FINISHED" for r in trials)
    for r in trials:  # which trial ran on which node: each on node 2, the one with the custom resource
        print(f"[cluster] trial {r.data.tags['cmidd.tune_trial_id']} (run {r.info.run_id}, lambda "
              f"{r.data.params.get('cmi.lam')}) ran on node {r.data.tags['cmidd.node_id']}")
        assert r.data.tags["cmidd.node_id"] == w.node2
        assert float(r.data.params["cmi.lam_effective"]) > 0  # CMI ran there: the driver's proxies reached it
    results = list((w.shared / "search-digits-dmcmi").glob("*/result.json"))  # written by the trials on node 2
    assert len(results) == 2 and all(r.stat().st_size > 0 for r in results), list(w.shared.rglob("*"))[:20]
    assert "re-scored and registered: distilled-digits-ipc2" in out.stdout  # registration under another protocol
    model = client.get_registered_model("distilled-digits-ipc2")
    versions = client.search_model_versions("name = 'distilled-digits-ipc2'")
    assert len(versions) == 2 and all(v.source == f"runs:/{v.run_id}/synthetic" for v in versions)
    assert "champion" in model.aliases

    best = _cmidd(w, "best", "--dataset", "digits", "--ipc", "2", "--tracking-uri", w.server.url, "--json")
    assert best.returncode == 0, best.stderr[-3000:]
    pulled = _cmidd(w, "pull", "--dataset", "digits", "--ipc", "2", "--out", str(w.root / "pulled"),
                    "--tracking-uri", w.server.url)
    assert pulled.returncode == 0, pulled.stderr[-3000:]
    record = json.loads((w.root / "pulled" / "registry.json").read_text())
    assert record["tracking_uri"] == w.server.url and (w.root / "pulled" / "manifest.json").is_file()

    trial_protocol = trials[0].data.tags["protocol.id"]  # the trials' protocol: no version is scored under it yet
    ev = _cmidd(w, "evaluate", "--dataset", "digits", "--ipc", "2", "--protocol", trial_protocol,
                "--tracking-uri", w.server.url, "--device", "cpu")
    assert ev.returncode == 0, ev.stdout[-2000:] + ev.stderr[-3000:]
    assert ev.stdout.count("-> registered as version") == 2
    rescored = [v for v in client.search_model_versions("name = 'distilled-digits-ipc2'")
                if v.tags.get("protocol.id") == trial_protocol]
    assert len(rescored) == 2 and all(v.source == f"runs:/{v.run_id}/synthetic" for v in rescored)

    ens = _cmidd(w, "ensemble", "--from-search", parent, "--top", "2", "--mode", "concat", "--set", "eval.epochs=2",
                 "--set", "eval.num_eval=1", "--set", "eval.archs=[ConvNetD2]", "--tracking-uri", w.server.url)
    assert ens.returncode == 0, ens.stdout[-2000:] + ens.stderr[-3000:]
    assert client.search_model_versions("name = 'distilled-digits-ipc4'")  # 2 sets of IPC 2, concatenated
    for o in (best, pulled, ev, ens):
        assert w.server.password not in o.stdout + o.stderr


def _store_counts(w) -> tuple[int, int]:
    client = _client(w)
    exps = [e.experiment_id for e in client.search_experiments()]
    runs = len(client.search_runs(exps, max_results=5000)) if exps else 0
    return runs, len(client.search_model_versions(max_results=10_000))


def test_a_wrong_password_is_one_line_and_writes_nothing(world):
    w = world
    before = _store_counts(w)
    bad = {**w.env, "MLFLOW_TRACKING_PASSWORD": "not-the-password"}
    for args in (("search", str(w.space), "--address", w.address, "--tracking-uri", w.server.url,
                  "--set", f"storage={w.root / 'storage-bad'}", "--set", f"tune_storage=file://{w.shared / 'bad'}"),
                 ("evaluate", "--dataset", "digits", "--ipc", "2", "--protocol", "0", "--tracking-uri", w.server.url),
                 ("best", "--dataset", "digits", "--ipc", "2", "--tracking-uri", w.server.url)):
        out = _cmidd(w, *args, env=bad)
        errors = [x for x in out.stderr.splitlines() if x.startswith("error:")]
        assert out.returncode == 2 and len(errors) == 1, out.stderr[-3000:]
        assert w.server.url in errors[0] and "MLFLOW_TRACKING_PASSWORD" in errors[0], errors[0]
        assert "not-the-password" not in out.stdout + out.stderr
    assert _store_counts(w) == before  # nothing half-written: no run, no version
    assert not (w.root / "storage-bad" / "parent_run_id").exists()


def test_a_server_that_is_down_is_one_line(world):
    from raycluster import free_port

    down = f"http://127.0.0.1:{free_port()}"
    out = _cmidd(world, "best", "--dataset", "digits", "--ipc", "2", "--tracking-uri", down)
    errors = [x for x in out.stderr.splitlines() if x.startswith("error:")]
    assert out.returncode == 1 and len(errors) == 1 and down in errors[0], out.stderr[-3000:]


def test_zz_secrets_stay_out_of_argv_logs_and_files(world):
    w = world
    assert w.server.password not in " ".join(w.server.argv)
    assert w.server.password not in w.server.log.read_text(errors="replace")
    started = time.time() - (time.monotonic() - T0)
    ray_logs = [p for p in Path("/tmp/ray").glob("session_*/logs/*") if p.is_file() and p.stat().st_mtime >= started]
    assert ray_logs  # the head's logs (node 2's are in its own /tmp, gone with it)
    for path in [*(w.root / "storage").rglob("*"), *w.shared.rglob("*"), *ray_logs]:  # Tune's files (tuner.pkl
        if path.is_file():  # too), cmidd's, Ray's logs (the runtime env that carried the credentials)
            assert w.server.password.encode() not in path.read_bytes(), path
    print(f"[cluster] wall time {time.monotonic() - T0:.0f} s")
