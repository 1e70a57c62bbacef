"""/metrics of a live server: vLLM-style names with a model_name label, HTTP and process metrics,
no _created series, and the Grafana dashboard's queries against what the server exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from live_server import start_server

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "helios-serve.json"
MODEL = "helios-tiny"
VIDEO_ROUTE = "/v1/videos/{video_id}"


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A server of its own (exact counts) that has made one video."""
    server = start_server(tmp_path_factory.mktemp("metrics") / "data")
    try:
        created = httpx.post(f"{server.api}/videos", json={"prompt": "a heron", "num_frames": 33, "size": "128x64"})
        assert created.status_code == 200, created.text
        video_id = created.json()["id"]
        wait_for_status(server, video_id, "completed")
        yield server, video_id
    finally:
        server.stop()


def wait_for_status(server, video_id: str, status: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while (current := httpx.get(f"{server.api}/videos/{video_id}").json()["status"]) != status:
        assert current in ("queued", "in_progress"), current
        assert time.monotonic() < deadline, current
        time.sleep(0.05)


def scrape(server) -> list:
    """Every sample of /metrics, parsed by prometheus_client (so the text format must be valid)."""
    answer = httpx.get(f"{server.url}/metrics")
    assert answer.status_code == 200
    return [sample for family in text_string_to_metric_families(answer.text) for sample in family.samples]


def value(samples, name: str, **labels) -> float:
    wanted = {"model_name": MODEL, **labels}
    matching = [s.value for s in samples if s.name == name and s.labels == wanted]
    assert len(matching) == 1, (name, wanted, matching)
    return matching[0]


# -- the dashboard's queries -----------------------------------------------------------------------

PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "group_left", "group_right"}


def promql_metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: identifiers that are not functions, aggregations,
    keywords, or inside label matchers, ranges and by/on clauses."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings may hold anything, even a $variable
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range windows
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"(?<![\w:.])([A-Za-z_:][\w:]*)\s*(\()?", expr):  # not the m of 5m
        if not match.group(2) and match.group(1) not in PROMQL_KEYWORDS:
            names.add(match.group(1))
    return names


def dashboard_queries(dashboard: dict) -> list[str]:
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":  # label_values(metric, label): the metric is the first argument
            queries.append(re.fullmatch(r"label_values\((.+),\s*\w+\)", variable["query"]["query"]).group(1))
    return queries


def test_the_promql_reader_finds_metrics_and_nothing_else():
    expr = ('histogram_quantile(0.95, sum by (le, model_name) (rate(helios:x_bucket{model_name=~"$m",replica=""}'
            '[$__rate_interval]))) / on (instance) group_left avg(helios:y) and process_z offset 5m')
    assert promql_metric_names(expr) == {"helios:x_bucket", "helios:y", "process_z"}


def test_every_dashboard_query_reads_metrics_the_server_exports(live):
    server, _ = live
    dashboard = json.loads(DASHBOARD.read_text())
    names = set().union(*(promql_metric_names(query) for query in dashboard_queries(dashboard)))
    exported = {sample.name for sample in scrape(server)}  # histograms as their _bucket, _sum, _count
    assert names - exported == set()
    must_chart = {"helios:num_requests_running", "helios:num_requests_waiting", "helios:e2e_request_latency_seconds",
                  "helios:request_queue_time_seconds", "helios:time_to_first_chunk_seconds", "helios:realtime_factor",
                  "helios:frames_generated_total", "helios:model_flops_utilization", "helios:http_requests_total",
                  "process_resident_memory_bytes"}
    assert {name for name in must_chart if not any(n == name or n.startswith(name + "_") for n in names)} == set()


def test_promtool_parses_every_dashboard_query(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian's prometheus package has it)")
    grafana_variables = {"$__rate_interval": "1m", "$model_name": ".*"}
    rules = []
    for number, query in enumerate(dashboard_queries(json.loads(DASHBOARD.read_text()))):
        for variable, example in grafana_variables.items():
            query = query.replace(variable, example)
        rules.append({"record": f"dashboard:query_{number}", "expr": query})
    rule_file = tmp_path / "dashboard-rules.yml"
    rule_file.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))  # JSON is YAML
    result = subprocess.run([promtool, "check", "rules", str(rule_file)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(rules)} rules found" in result.stdout


def test_the_dashboard_asks_for_its_prometheus_data_source():
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in (panel, *panel["targets"]):
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]


# -- labels and series --------------------------------------------------------------------------------

def test_every_helios_series_names_the_served_model(live):
    server, _ = live
    helios = [sample for sample in scrape(server) if sample.name.startswith("helios:")]
    assert len({sample.name for sample in helios}) > 20
    assert [s for s in helios if s.labels.get("model_name") != MODEL] == []


def test_no_created_series_and_process_metrics_are_there(live):
    server, _ = live
    samples = scrape(server)
    assert [s.name for s in samples if s.name.endswith("_created")] == []
    assert "_created" not in httpx.get(f"{server.url}/metrics").text
    resident = [s.value for s in samples if s.name == "process_resident_memory_bytes"]
    assert len(resident) == 1 and resident[0] > 10 * 2**20  # a loaded model and torch: far above 10 MiB
    assert any(s.name == "python_info" for s in samples)


def test_a_finished_job_is_observed_once_in_e2e_and_queue_time(live):
    server, video_id = live
    samples = scrape(server)
    assert value(samples, "helios:request_success_total", finished_reason="completed") == 1
    assert value(samples, "helios:e2e_request_latency_seconds_count") == 1
    assert value(samples, "helios:request_queue_time_seconds_count") == 1
    timings = httpx.get(f"{server.api}/videos/{video_id}").json()
    # The e2e histogram holds the job's whole time: at least its time to first chunk.
    assert value(samples, "helios:e2e_request_latency_seconds_sum") >= timings["time_to_first_chunk_s"]
    assert value(samples, "helios:request_queue_time_seconds_sum") == pytest.approx(timings["queue_time_s"])

    cancelled = httpx.post(f"{server.api}/videos", json={"prompt": "never ends", "num_frames": 990,
                                                         "size": "128x64"}).json()["id"]
    wait_for_status(server, cancelled, "in_progress")  # admitted, so it has a queue time
    assert httpx.delete(f"{server.api}/videos/{cancelled}").status_code == 200
    deadline = time.monotonic() + 30
    while value(samples := scrape(server), "helios:request_success_total", finished_reason="cancelled") < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert value(samples, "helios:request_success_total", finished_reason="cancelled") == 1
    assert value(samples, "helios:request_success_total", finished_reason="completed") == 1
    assert value(samples, "helios:e2e_request_latency_seconds_count") == 2
    assert value(samples, "helios:request_queue_time_seconds_count") == 2


# -- HTTP ----------------------------------------------------------------------------------------------

def http_count(samples, route: str, status: int, method: str = "GET") -> float:
    matching = [s.value for s in samples if s.name == "helios:http_requests_total"
                and s.labels == {"model_name": MODEL, "method": method, "route": route, "status": str(status)}]
    return matching[0] if matching else 0.0


def test_http_requests_are_counted_by_route_template(live):
    server, video_id = live
    before = scrape(server)
    assert httpx.get(f"{server.api}/videos/{video_id}").status_code == 200
    assert httpx.get(f"{server.api}/videos/video_nonexistent").status_code == 404
    assert httpx.put(f"{server.api}/videos/{video_id}").status_code == 405  # the path matched, the method not
    # Refused by the Host check before any route ran: still counted under the route it asked for.
    assert httpx.get(f"{server.api}/videos/{video_id}", headers={"host": "evil.example"}).status_code == 400
    assert httpx.get(f"{server.url}/no/such/{video_id}").status_code == 404
    after = scrape(server)

    def grew(route, status, method="GET"):
        return http_count(after, route, status, method) - http_count(before, route, status, method)

    assert grew(VIDEO_ROUTE, 200) == 1 and grew(VIDEO_ROUTE, 404) == 1 and grew(VIDEO_ROUTE, 400) == 1
    assert grew(VIDEO_ROUTE, 405, "PUT") == 1
    assert grew("unmatched", 404) == 1
    routes = {s.labels["route"] for s in after if s.name.startswith("helios:http_")}
    assert not any(video_id in route for route in routes), routes  # never a raw path
    assert "/metrics" not in routes  # scrapes are not counted
    durations = {s.labels["route"]: s.value for s in after if s.name == "helios:http_request_duration_seconds_count"
                 and s.labels["method"] == "GET"}
    earlier = {s.labels["route"]: s.value for s in before if s.name == "helios:http_request_duration_seconds_count"
               and s.labels["method"] == "GET"}
    assert durations[VIDEO_ROUTE] - earlier.get(VIDEO_ROUTE, 0) == 3


def test_the_model_name_label_is_the_first_served_model_name(tmp_path):
    from fastapi.testclient import TestClient

    from helios_serve.config import HeliosConfig, ServerConfig
    from helios_serve.entrypoints.openai.api_server import build_app

    config = HeliosConfig(server=ServerConfig(data_dir=str(tmp_path), served_model_name=("studio-video", "helios")))
    client = TestClient(build_app(config), base_url="http://127.0.0.1")  # no lifespan: no model is loaded
    families = text_string_to_metric_families(client.get("/metrics").text)
    labels = {s.labels.get("model_name") for family in families for s in family.samples if s.name.startswith("helios:")}
    assert labels == {"studio-video"}
