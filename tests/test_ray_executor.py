"""The Ray executor on a local two-CPU Ray instance: a two-run sweep end to end, then a rerun that skips both."""

from __future__ import annotations

import sys
import threading

import pytest

from peftbench.errors import UsageError
from peftbench.harness.sweep.driver import expand, plan, run_sweep
from peftbench.harness.sweep.ray_executor import RayExecutor, task_options
from peftbench.records import load_record
from tests.helpers import FAST

# Trains real runs in child processes (or loads the embedded MiniLM): the full suite, not make test-fast.
pytestmark = pytest.mark.slow


@pytest.mark.ray
def test_two_run_sweep_through_ray(tiny_model_dir, tmp_path):
    ray = pytest.importorskip("ray")
    results = tmp_path / "results"
    requests = expand(["sst2"], ["lora"], [], [0, 1], model=str(tiny_model_dir), data="sample", sets=FAST)
    planned = plan(requests, results)
    assert len(planned) == 2 and not any(p.done for p in planned)

    ray.init(num_cpus=2, object_store_memory=80 * 2**20, include_dashboard=False, log_to_driver=False)
    try:
        outcome = run_sweep(planned, results, executor="ray", ray_resources={"num_cpus": 1, "num_gpus": 0})
        # The executor joined the instance this test started and must leave it running.
        assert ray.is_initialized()
        assert outcome.ran == 2 and outcome.skipped == 0 and outcome.failed == []
        for p in planned:
            rec = load_record(p.record)
            assert rec.ok, rec.problem or rec.record.error
            assert rec.record.config == p.config
            assert rec.record.metrics.primary is not None
            assert rec.record.train.total_steps == 3
            # A run that asked for no GPU is kept off any GPU the machine has.
            assert rec.record.env["device"] == "cpu"

        again = plan(requests, results)
        assert all(p.done for p in again)
        second = run_sweep(again, results, executor="ray", ray_resources={"num_cpus": 1})
        assert second.ran == 0 and second.skipped == 2
    finally:
        ray.shutdown()


@pytest.mark.ray
def test_two_ray_sweeps_at_once_train_each_config_once(tiny_model_dir, tmp_path):
    """The Ray path goes through the same attempt as every executor: the config's lock, then a look for a record."""
    ray = pytest.importorskip("ray")
    results = tmp_path / "results"
    requests = expand(["sst2"], ["lora"], [], [0, 1], model=str(tiny_model_dir), data="sample", sets=FAST)
    ray.init(num_cpus=2, object_store_memory=80 * 2**20, include_dashboard=False, log_to_driver=False)
    try:
        planned = [plan(requests, results), plan(requests, results)]
        outcomes = [None, None]

        def sweep(i: int) -> None:
            outcomes[i] = run_sweep(planned[i], results, executor="ray", progress=False, ray_resources={"num_cpus": 1})

        threads = [threading.Thread(target=sweep, args=(i,)) for i in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert all(o is not None and o.failed == [] for o in outcomes)
        assert sum(o.ran for o in outcomes) == 2  # each config trained once ...
        assert sum(o.elsewhere for o in outcomes) == 2  # ... and the other sweep found it done
        assert all(load_record(p.record).ok for p in planned[0])
    finally:
        ray.shutdown()


def test_missing_ray_is_a_usage_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` fail as if it were not installed
    with pytest.raises(UsageError, match=r"pip install 'peftbench\[ray\]'"):
        RayExecutor(None, {})
    assert run_sweep([], tmp_path, executor="ray").ran == 0  # nothing to run needs no ray


@pytest.mark.parametrize(
    "resources, message",
    [({"num_cpus": 0}, "cpus-per-run"), ({"num_gpus": -1}, "num_gpus"), ({"gpu": 1}, "unknown Ray resource")],
)
def test_bad_resource_requests(resources, message):
    with pytest.raises(UsageError, match=message):
        task_options(resources)


def test_resource_options():
    assert task_options({}) == {"num_cpus": 1.0, "num_gpus": 0.0}
    assert task_options({"num_cpus": 2, "num_gpus": 0.5, "memory": 2**30}) == {
        "num_cpus": 2,
        "num_gpus": 0.5,
        "memory": 2**30,
    }
