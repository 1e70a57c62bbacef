"""The Ray ingress's routing decisions (helios_serve.integrations.ray_serve.routing), without Ray."""

from __future__ import annotations

import time

import pytest

from prometheus_client.parser import text_string_to_metric_families

from helios_serve.integrations.ray_serve.routing import (
    DEAD_AFTER_S,
    SLOW_AFTER_S,
    ReplicaView,
    least_loaded,
    merge_metrics,
    orphaned_jobs,
    replica_count_metrics,
)


def view(slot, instance, waiting=0, running=0, ready=True):
    replica = ReplicaView(slot)
    replica.record_answer({"instance": instance, "ready": ready, "waiting": waiting, "running": running},
                          f"http://{slot}", now=0.0)
    return replica


def test_new_work_goes_to_the_ready_replica_with_the_least_work():
    replicas = [view("a", "a-1", waiting=2, running=1), view("b", "b-1", running=2), view("c", "c-1", ready=False)]
    assert least_loaded(replicas).slot == "b"
    replicas[1].waiting = 5
    assert least_loaded(replicas).slot == "a"
    assert least_loaded(replicas, avoid="a").slot == "b"  # another ready replica exists
    assert least_loaded([replicas[0]], avoid="a").slot == "a"  # nobody else: still served
    assert least_loaded([replicas[2]]) is None


def test_creates_sent_during_a_poll_still_count_when_its_answer_arrives():
    a, b = view("a", "a-1"), view("b", "b-1")
    asked_at = a.creates_sent  # a poll of "a" begins ...
    a.record_create()  # ... a create goes to "a" before its answer, which cannot have seen it
    a.record_answer({"instance": "a-1", "ready": True, "waiting": 0, "running": 0}, "http://a", 1.0, asked_at)
    assert a.load == 1 and least_loaded([a, b]).slot == "b"
    a.record_answer({"instance": "a-1", "ready": True, "waiting": 1, "running": 0}, "http://a", 2.0, a.creates_sent)
    assert a.load == 1  # a later poll sees it itself: not counted twice


def test_a_replica_slow_to_answer_one_poll_stays_in_rotation():
    a, b = view("a", "a-1"), view("b", "b-1", waiting=3)
    a.record_silence(now=SLOW_AFTER_S / 2)  # busy: one 2 s poll timed out
    assert a.ready and least_loaded([a, b]).slot == "a"
    a.record_silence(now=SLOW_AFTER_S + 0.1)
    assert not a.ready and least_loaded([a, b]).slot == "b"
    never = ReplicaView("c")
    never.record_silence(now=0.0)
    assert not never.ready


def test_a_restarted_or_long_silent_replica_instance_is_dead_and_its_jobs_are_orphans():
    a, b = view("a", "a-1"), view("b", "b-1")
    jobs = [("j1", "a-1"), ("j2", "b-1"), ("j3", "a-1"), ("j4", None)]
    assert orphaned_jobs(jobs, [a, b]) == {}
    a.record_answer({"instance": "a-2", "ready": True, "waiting": 0, "running": 0}, "http://a", now=1.0)
    assert orphaned_jobs(jobs, [a, b]) == {"a-1": ["j1", "j3"]}
    b.record_silence(now=DEAD_AFTER_S - 1)  # silent but not for long: maybe just slow
    assert not b.ready and "b-1" not in orphaned_jobs(jobs, [a, b])
    b.record_silence(now=DEAD_AFTER_S + 1)
    assert orphaned_jobs(jobs, [a, b])["b-1"] == ["j2"]


def test_metrics_are_merged_per_replica_and_in_total():
    text = """# HELP helios:frames_generated Frames generated.
# TYPE helios:frames_generated counter
helios:frames_generated_total{{model_name="m"}} {frames}
helios:frames_generated_created{{model_name="m"}} 1.7e9
# HELP helios:num_requests_waiting Waiting requests.
# TYPE helios:num_requests_waiting gauge
helios:num_requests_waiting{{model_name="m"}} {waiting}
# HELP helios:time_to_first_chunk_seconds Time to first chunk.
# TYPE helios:time_to_first_chunk_seconds histogram
helios:time_to_first_chunk_seconds_bucket{{le="1.0",model_name="m"}} {fast}
helios:time_to_first_chunk_seconds_bucket{{le="+Inf",model_name="m"}} 3.0
helios:time_to_first_chunk_seconds_count{{model_name="m"}} 3.0
helios:time_to_first_chunk_seconds_sum{{model_name="m"}} {total}
# HELP helios:model_flops_per_second Achieved FLOP/s.
# TYPE helios:model_flops_per_second gauge
helios:model_flops_per_second{{model_name="m"}} {achieved}
# HELP helios:device_peak_flops Peak FLOP/s.
# TYPE helios:device_peak_flops gauge
helios:device_peak_flops{{model_name="m"}} 100.0
# HELP helios:model_flops_utilization MFU.
# TYPE helios:model_flops_utilization gauge
helios:model_flops_utilization{{model_name="m"}} {mfu}
# HELP process_resident_memory_bytes Resident memory size in bytes.
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes {rss}
# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.
# TYPE process_start_time_seconds gauge
process_start_time_seconds {start}
"""
    merged = merge_metrics({
        "replica-0": text.format(frames=99, waiting=1, fast=1, total=2.5, achieved=60, mfu=0.6, rss=5e8, start=1.7e9),
        "replica-1": text.format(frames=33, waiting=4, fast=2, total=1.5, achieved=20, mfu=0.2, rss=7e8, start=1.8e9),
    })
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(merged) for s in family.samples}
    m = ("model_name", "m")
    assert samples[("helios:frames_generated_total", (m,))] == 132
    assert samples[("helios:frames_generated_total", (m, ("replica", "replica-1")))] == 33
    assert samples[("helios:num_requests_waiting", (m,))] == 5
    assert samples[("helios:time_to_first_chunk_seconds_bucket", (("le", "1.0"), m))] == 3
    assert samples[("helios:time_to_first_chunk_seconds_bucket", (("le", "1.0"), m, ("replica", "replica-0")))] == 1
    assert samples[("helios:time_to_first_chunk_seconds_sum", (m,))] == 4.0
    assert not any(name.endswith("_created") for name, _ in samples)
    assert samples[("helios:model_flops_per_second", (m,))] == 80
    assert samples[("helios:model_flops_utilization", (m,))] == pytest.approx(0.4)  # 80 of 200, not 0.6 + 0.2
    assert samples[("process_resident_memory_bytes", ())] == 1.2e9  # the cluster's memory
    # A start time has no total (a sum of two would be a date 50 years on), only each replica's.
    assert ("process_start_time_seconds", ()) not in samples
    assert samples[("process_start_time_seconds", (("replica", "replica-1"),))] == 1.8e9


def test_the_ingress_replica_gauges_carry_the_served_model_name():
    text = replica_count_metrics('my "video" model', ready=1, deployed=3)
    samples = {s.name: (s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples == {"helios:replicas_ready": ({"model_name": 'my "video" model'}, 1.0),
                       "helios:replicas": ({"model_name": 'my "video" model'}, 3.0)}


def test_a_create_sent_again_with_the_ingress_job_id_is_not_made_twice(tmp_path):
    """The ingress names each job it creates; when its replica dies mid-request it sends the
    create again with the same name, and a replica that already has the job returns it."""
    from fastapi.testclient import TestClient

    from helios_serve.config import HeliosConfig, ServerConfig
    from helios_serve.entrypoints.openai.api_server import build_app
    from helios_serve.entrypoints.openai.replica import JOB_ID_HEADER
    from helios_serve.jobs.storage import new_job_id

    body = {"prompt": "once", "num_frames": 1, "size": "64x64"}
    chosen = new_job_id()
    for instance, expect_chosen in (("replica-test", True), (None, False)):
        app = build_app(HeliosConfig(server=ServerConfig(data_dir=str(tmp_path / str(instance)))), replica_id=instance)
        with TestClient(app, base_url="http://127.0.0.1") as client:  # a name the server answers to
            while client.get("/ready").status_code != 200:
                time.sleep(0.1)
            ids = [client.post("/v1/videos", json=body, headers={JOB_ID_HEADER: chosen}).json()["id"]
                   for _ in range(2)]
            listed = client.get("/v1/videos").json()["data"]
        if expect_chosen:
            assert ids == [chosen, chosen] and len(listed) == 1
        else:  # a single server ignores the header: clients cannot pick ids
            assert chosen not in ids and ids[0] != ids[1] and len(listed) == 2


def test_a_sequence_parallel_replica_reserves_its_gpus_on_one_node():
    from helios_serve.config import EngineConfig, HeliosConfig, ModelConfig, ScaleOutConfig
    from helios_serve.integrations.ray_serve.launch import replica_gpus, replica_options

    def config(size=2, gpus=None, vae_device=None):
        return HeliosConfig(model=ModelConfig(vae_device=vae_device), engine=EngineConfig(sequence_parallel_size=size),
                            scale_out=ScaleOutConfig(replicas=2, gpus_per_replica=gpus))

    assert replica_gpus(config(), cluster_has_gpus=True) == 2
    assert replica_gpus(config(vae_device="cuda:2"), cluster_has_gpus=True) == 3
    assert replica_gpus(config(), cluster_has_gpus=False) == 0
    assert replica_gpus(config(gpus=4), cluster_has_gpus=True) == 4
    with pytest.raises(ValueError, match="gpus_per_replica is 1, but each replica runs 2 sequence-parallel"):
        replica_gpus(config(gpus=1), cluster_has_gpus=True)
    options = replica_options(cpus=1, gpus=2)
    assert options["placement_group_bundles"] == [{"CPU": 1, "GPU": 2}]
    assert options["placement_group_strategy"] == "STRICT_PACK"
    assert options["ray_actor_options"] == {"num_cpus": 1, "num_gpus": 2}
