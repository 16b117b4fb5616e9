"""Shared fixtures: the digits data set (8x8, loaded once) and tiny job mappings."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# the tests' throw-away local Rays (127.0.0.1, one test session) run without Ray's token auth, which Ray 2.60 turns
# on by default; `make test-cluster` runs its cluster with token auth on (tests/test_cluster.py)
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
CLUSTER_ENV = "CMIDD_TEST_CLUSTER"  # `make test-cluster` sets it: only then do the tests marked `cluster` run


@pytest.fixture(scope="session")
def digits():
    from cmidd.data import load_dataset

    return load_dataset("digits")


def tiny_distill(tmp_path, **over) -> dict:
    """A distill job mapping at toy size (8x8 digits, ConvNetD1 width 16, few iterations and epochs)."""
    job = {
        "kind": "distill", "name": "tiny", "seed": 0, "ipc": 2,
        "data": {"name": "digits"},
        "net": {"name": "ConvNetD1", "width": 16},
        "method": {"name": "dm", "iterations": 4, "batch_real": 16},
        "cmi": {"lam": 0},
        "proxies": {"set": "convnet-x1", "epochs": 1, "dir": str(tmp_path / "proxies")},
        "eval": {"archs": ["ConvNetD1"], "num_eval": 1, "epochs": 2},
        "output": {"dir": str(tmp_path / "job"), "checkpoint_every": 2},
    }
    for k, v in over.items():
        node = job
        *parents, leaf = k.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = v
    return job


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray with 2 CPUs for the whole test session (each ray.init costs 2.5-4 s)."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        # address="local": a new Ray, never a cluster some `ray start` on this machine left in /tmp/ray
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


# `make test-fast` (-m "not slow") leaves out every test that starts Ray, an MLflow server, a subprocess or a long
# loop: those using the fixtures below, every test of the modules below, and the tests named below (each measured
# at > 3 s on 2 cores). Their own @pytest.mark.slow marks stay valid too.
SLOW_FIXTURES = {"ray_local", "mlflow_server", "_server_proc", "template_db", "proxies4"}
SLOW_MODULES = {"test_search", "test_search_pareto", "test_package_data", "test_distributed", "test_gpu_run",
                "test_bench_ray"}
SLOW_TESTS = {
    "test_demo_quick_end_to_end", "test_two_concurrent_jobs_on_one_sqlite_store_both_finish",
    "test_sigkill_leaves_no_version_and_resume_run_continues_from_mlflow", "test_gpu_check_dry_run",
    "test_run_no_track_without_platform", "test_bench_speed_without_platform", "test_speed_schema_and_figures",
    "test_import_cmidd_and_its_cli_does_not_import_mlflow", "test_gpu_check_cuda_without_gpu_fails_loudly",
    "test_the_docs_example_trains_a_model_from_a_saved_set",
}


def pytest_collection_modifyitems(config, items):
    skip_cluster = pytest.mark.skip(reason=f"the 2-node cluster test runs in `make test-cluster` ({CLUSTER_ENV}=1)")
    for item in items:
        if "cluster" in item.keywords and os.environ.get(CLUSTER_ENV) != "1":
            item.add_marker(skip_cluster)
        module = item.module.__name__.rpartition(".")[2] if item.module else ""
        if (SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) or module in SLOW_MODULES
                or item.originalname in SLOW_TESTS):
            item.add_marker(pytest.mark.slow)


def stop_at(n: int):
    """Loop hooks that end a distillation after step ``n`` (as an ASHA stop would) and record each step's metrics
    (``steps``: the step numbers; ``seen``: the metrics dicts)."""
    from cmidd.hooks import Hooks

    class StopAt(Hooks):
        def __init__(self) -> None:
            self.steps: list[int] = []
            self.seen: list[dict[str, float]] = []

        def on_step(self, step: int, metrics: dict[str, float]) -> None:
            self.steps.append(step)
            self.seen.append(dict(metrics))

        def should_stop(self) -> bool:
            return self.steps[-1:] == [n]

    return StopAt()


def brute_norms(job, digits, proxy, draws: int) -> tuple[float, float]:
    """Both image-gradient norms by hand (the reference of ``cmidd.lam.gradient_norms``): draw m = iteration
    m's net and batches, the initial real images."""
    import torch

    from cmidd.cmi import cmi_emp, proxy_log_probs
    from cmidd.data import RealPool
    from cmidd.distill import iteration_generator
    from cmidd.methods import MethodContext, build_method

    pool = RealPool(digits.train_x, digits.train_y, digits.num_classes)
    x0, y = pool.random_init(job.ipc, torch.Generator().manual_seed(job.seed))
    m = build_method(MethodContext(job.method, job.net, pool, 1, 10, digits.im_size, torch.device("cpu")))
    dd, cm = [], []
    for it in range(draws):
        gen = iteration_generator(job.seed, it)
        m.begin_iteration(gen)
        x = x0.clone().requires_grad_(True)
        dd.append(float(torch.autograd.grad(m.loss(x, y, gen), x)[0].norm()))
        x = x0.clone().requires_grad_(True)
        cm.append(float(torch.autograd.grad(cmi_emp(proxy_log_probs(proxy, x), y, 10), x)[0].norm()))
    return sum(dd) / draws, sum(cm) / draws
