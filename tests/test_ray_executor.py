"""The Ray executor on a local two-CPU Ray instance: a two-run sweep end to end, then a rerun that skips both."""

from __future__ import annotations

import sys

import pytest

from peftbench.errors import UsageError
from peftbench.harness.sweep.ray_executor import run_with_ray, task_options
from peftbench.harness.sweep.driver import expand, plan, run_sweep
from peftbench.records import load_record
from tests.helpers import FAST


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
            assert rec.ok, rec.problem or rec.data.get("error")
            assert rec.data["config"]["seed"] == p.config.seed
            assert rec.data["config"]["config_hash"] == p.config.config_hash
            assert rec.data["metrics"]["primary"] is not None
            assert rec.data["train"]["total_steps"] == 3
            # A run that asked for no GPU is kept off any GPU the machine has.
            assert rec.data["env"]["device"] == "cpu"

        again = plan(requests, results)
        assert all(p.done for p in again)
        second = run_sweep(again, results, executor="ray", ray_resources={"num_cpus": 1})
        assert second.ran == 0 and second.skipped == 2
    finally:
        ray.shutdown()


def test_missing_ray_is_a_usage_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` fail as if it were not installed
    with pytest.raises(UsageError, match=r"pip install 'peftbench\[ray\]'"):
        run_with_ray([object()], tmp_path, None, {})  # type: ignore[list-item]
    assert run_with_ray([], tmp_path, None, {}) == []  # nothing to run needs no ray


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
