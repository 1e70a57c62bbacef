"""Live streams: real-time videos without a length, paced to their playback, with memory and
disk bounded for any duration (a sliding HLS window, old segments deleted, no final MP4 unless
kept), on a live helios-tiny server; and the scheduler's pacing with an injected clock."""

from __future__ import annotations

import asyncio
import io
import json
import re
import time
from pathlib import Path

import av
import httpx
import psutil
import pytest

from helios_serve.config import EngineConfig
from helios_serve.core.scheduler import Scheduler
from helios_serve.jobs.sink import LIVE_KEPT_SEGMENTS, LIVE_PLAYLIST_SEGMENTS
from helios_serve.model_executor.step_io import DecodedChunk, RequestSpec, StepResult
from helios_serve.request import Pacing, Request

FPS = 33
"""One chunk (33 frames) is one second of media."""
LIVE_CHUNKS = 300
KEPT_LIMIT_MB = 0.25
LIVE = {"prompt": "an endless river", "size": "128x64", "fps": FPS, "realtime": True}


@pytest.fixture(scope="module")
def live_server(tmp_path_factory):
    """A helios-tiny server whose live streams end, completed, after exactly LIVE_CHUNKS chunks,
    and whose kept live streams end when their segments pass KEPT_LIMIT_MB."""
    from live_server import start_server

    live = start_server(tmp_path_factory.mktemp("live") / "data", "--max-stream-seconds",
                        str(LIVE_CHUNKS * 33 / FPS), "--max-kept-stream-mb", str(KEPT_LIMIT_MB))
    yield live
    live.stop()


def create(server, **fields) -> dict:
    response = httpx.post(f"{server.api}/videos", json={**LIVE, **fields}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def job(server, video_id: str) -> dict:
    return httpx.get(f"{server.api}/videos/{video_id}", timeout=30).json()


def wait_final(server, video_id: str, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while (view := job(server, video_id))["status"] not in ("completed", "failed"):
        assert time.monotonic() < deadline, view
        time.sleep(0.1)
    return view


def tree_rss(pid: int) -> int:
    """Resident memory of the server process and its children (decode workers, if any)."""
    process = psutil.Process(pid)
    total = process.memory_info().rss
    for child in process.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def dir_bytes(path: Path) -> tuple[int, int]:
    """(bytes of the files in ``path``, of which in files being written: ``*.partial``, the
    temporary a segment or snapshot is written to before it is renamed over the old one)."""
    total = partial = 0
    for item in path.rglob("*"):
        try:
            if item.is_file():
                size = item.stat().st_size
                total += size
                partial += size if ".partial" in item.name else 0
        except FileNotFoundError:  # deleted while we walk
            pass
    return total, partial


def segment_indices(job_dir: Path) -> list[int]:
    return sorted(int(m.group(1)) for p in job_dir.glob("seg_*.m4s") if (m := re.match(r"seg_(\d{5})\.m4s", p.name)))


def check_live_playlist(server, video_id: str, job_dir: Path, fetch: str = "last") -> list[bytes]:
    """The playlist is a sliding window: the last LIVE_PLAYLIST_SEGMENTS segments, its media
    sequence the first of them; older segments are gone from disk. Returns the listed segments
    fetched (``fetch``: "all", or only the "last": one made quicker than a playlist's length
    may already be gone when the first is fetched, as a live player would find)."""
    text = httpx.get(f"{server.api}/videos/{video_id}/stream.m3u8", timeout=30).text
    assert "#EXT-X-PLAYLIST-TYPE" not in text and "#EXT-X-ENDLIST" not in text
    sequence = int(re.search(r"#EXT-X-MEDIA-SEQUENCE:(\d+)", text).group(1))
    listed = [int(i) for i in re.findall(r"^stream/seg_(\d{5})\.m4s$", text, re.M)]
    assert listed == list(range(sequence, sequence + LIVE_PLAYLIST_SEGMENTS)), text
    fetched = []
    for index in listed if fetch == "all" else listed[-1:]:
        response = httpx.get(f"{server.api}/videos/{video_id}/stream/seg_{index:05d}.m4s", timeout=30)
        assert response.status_code == 200, index
        fetched.append(response.content)
    on_disk = segment_indices(job_dir)
    assert len(on_disk) <= LIVE_KEPT_SEGMENTS + 1 and on_disk[0] >= sequence + LIVE_PLAYLIST_SEGMENTS \
        - LIVE_KEPT_SEGMENTS - 1, on_disk
    assert httpx.get(f"{server.api}/videos/{video_id}/stream/seg_00000.m4s").status_code == 404
    return fetched


def test_endless_stream_keeps_memory_and_disk_flat(live_server):
    """300 chunks of a live stream (no length, no pacing: as fast as it goes) end at the server's
    limit; the server's peak RSS and the data directory's size over the last 100 chunks are
    within 5% of those over the first 100 (counted from chunk LIVE_KEPT_SEGMENTS, once the
    segment window has filled). The data directory's size is that of its settled files: a
    sample may also catch the one segment and one snapshot being written (``*.partial``), which
    is bounded too and checked as such."""
    started = time.monotonic()
    video = create(live_server)
    assert video["live"] and video["total_chunks"] == LIVE_CHUNKS
    video_id, data_dir = video["id"], live_server.data_dir
    job_dir = data_dir / "videos" / video_id
    pid = live_server.process.pid
    samples = []  # (chunks completed, rss, data-dir bytes, of which partial)
    checked_window = False
    while True:
        view = job(live_server, video_id)
        samples.append((view["chunks_completed"], tree_rss(pid), *dir_bytes(data_dir)))
        if not checked_window and view["chunks_completed"] >= 150 and view["status"] == "in_progress":
            checked_window = bool(check_live_playlist(live_server, video_id, job_dir))
        if view["status"] in ("completed", "failed"):
            break
        time.sleep(0.02)
    elapsed = time.monotonic() - started
    assert view["status"] == "completed" and view["end_reason"] == "max_stream_seconds", view
    assert view["chunks_completed"] == LIVE_CHUNKS and checked_window

    first = [s for s in samples if LIVE_KEPT_SEGMENTS <= s[0] < 100]
    last = [s for s in samples if LIVE_CHUNKS - 100 <= s[0] < LIVE_CHUNKS]
    assert len(first) > 20 and len(last) > 20
    rss = (max(s[1] for s in first), max(s[1] for s in last))
    disk = (max(s[2] - s[3] for s in first), max(s[2] - s[3] for s in last))
    raw = (max(s[2] for s in first), max(s[2] for s in last))
    print(f"\n{LIVE_CHUNKS} chunks in {elapsed:.1f} s, {len(samples)} samples; peak RSS first/last 100 chunks: "
          f"{rss[0] / 2**20:.1f} / {rss[1] / 2**20:.1f} MiB; data dir (settled) {disk[0] / 1024:.1f} / "
          f"{disk[1] / 1024:.1f} KiB; with files being written {raw[0] / 1024:.1f} / {raw[1] / 1024:.1f} KiB")
    assert rss[1] <= 1.05 * rss[0], rss
    assert disk[1] <= 1.05 * disk[0], disk
    snapshot, segment = (job_dir / "resume.pt").stat().st_size, max(p.stat().st_size for p in job_dir.glob("seg_*"))
    assert raw[1] <= 1.05 * disk[0] + snapshot + segment, (raw, snapshot, segment)

    # Ended at the limit: the playlist's window ends the video; no MP4 was made
    text = httpx.get(f"{live_server.api}/videos/{video_id}/stream.m3u8").text
    assert text.rstrip().endswith("#EXT-X-ENDLIST")
    assert f"#EXT-X-MEDIA-SEQUENCE:{LIVE_CHUNKS - LIVE_PLAYLIST_SEGMENTS}" in text
    assert not (job_dir / "video.mp4").exists() and len(segment_indices(job_dir)) <= LIVE_KEPT_SEGMENTS
    content = httpx.get(f"{live_server.api}/videos/{video_id}/content")
    assert content.status_code == 409 and "keep" in content.json()["error"]["message"]
    assert httpx.get(f"{live_server.api}/videos/{video_id}/content?variant=thumbnail").status_code == 200
    # a late SSE subscriber hears the window's chunks, then the end
    late = httpx.get(f"{live_server.api}/videos/{video_id}/events", timeout=30).text
    assert late.count("event: chunk") == LIVE_PLAYLIST_SEGMENTS and "event: completed" in late


def test_paced_websocket_live_session_stays_within_its_lead(live_server):
    """A session.start without num_frames is a live stream at its fps, here paced (lead 0.5 s; a
    chunk is 0.5 s of media at 66 fps, which helios-tiny makes in about 0.15 s here): chunk k
    comes out no earlier than the lead before it is due, k * 33 / fps after chunk 0. Meanwhile
    its HLS playlist is the sliding window, every listed segment fetchable and playable, older
    ones deleted; session.stop ends it (cancelled) and removes it."""
    import websockets

    fps, lead, count = 66, 0.5, LIVE_KEPT_SEGMENTS + 3

    async def session() -> tuple[list[dict], list[bytes], list[float], list[bytes]]:
        uri = live_server.url.replace("http", "ws") + "/v1/realtime/video"
        messages, binary, arrivals, window = [], [], [], []
        async with websockets.connect(uri, max_size=None) as ws:
            await ws.send(json.dumps({"type": "session.start", "prompt": "a live websocket river", "format": "m4s",
                                      "width": 128, "height": 64, "fps": fps, "pace_to_media_time": True,
                                      "pacing_lead_seconds": lead}))
            async for message in ws:
                if isinstance(message, bytes):
                    arrivals.append(time.monotonic())
                    binary.append(message)
                    if len(binary) == count:
                        video_id = messages[0]["request_id"]
                        window += await asyncio.to_thread(check_live_playlist, live_server, video_id,
                                                          live_server.data_dir / "videos" / video_id, "all")
                        init = await asyncio.to_thread(httpx.get, f"{live_server.api}/videos/{video_id}/stream/init.mp4")
                        window.insert(0, init.content)
                        await ws.send(json.dumps({"type": "session.stop"}))
                    continue
                messages.append(json.loads(message))
        return messages, binary, arrivals, window

    messages, binary, arrivals, window = asyncio.run(session())
    start = messages[0]
    assert start["type"] == "video.start" and start["config"]["live"] and start["config"]["fps"] == fps
    assert start["config"]["total_chunks"] == LIVE_CHUNKS * fps // FPS  # the server's limit in seconds, at 66 fps
    assert messages[-1]["type"] == "session.done" and messages[-1]["status"] == "cancelled"
    assert count <= len(binary) <= count + 3  # paced: it had not run ahead when stopped
    with av.open(io.BytesIO(b"".join(binary))) as container:  # the chunks play as one stream
        assert sum(1 for _ in container.decode(video=0)) == 33 * len(binary)
    init = httpx.get(f"{live_server.api}/videos/{start['request_id']}/stream/init.mp4")
    assert init.status_code == 404  # stopped: deleted with its files
    with av.open(io.BytesIO(b"".join(window))) as container:  # the playlist's init and window play
        assert sum(1 for _ in container.decode(video=0)) == 33 * LIVE_PLAYLIST_SEGMENTS

    # Generation may run at most the lead ahead of playback, which starts when chunk 0 comes out:
    # chunk k begins no earlier than its due time minus the lead and comes out after its
    # generation, so ahead_k = due_k - arrival_k <= lead - (its generation time) < lead. We see
    # each chunk a little after the engine made it (the sink writes it, its row is updated, it is
    # sent); epsilon allows chunk 0 being seen later than a chunk k by that path, nothing more:
    # chunk 0 also sets up the fMP4 encoder and writes the init segment and thumbnail (its write
    # measured 0.21 s against 0.035 s for later chunks on this 2-core CPU), which delays the
    # client's playback start, not the engine's.
    epsilon = 0.3
    ahead = [arrivals[0] + k * 33 / fps - t for k, t in enumerate(arrivals)]
    print(f"\npaced: at most {max(ahead[1:]):.3f} s ahead of playback (lead {lead} s); arrivals "
          f"{[round(t - arrivals[0], 2) for t in arrivals]}")
    assert max(ahead[1:]) <= lead + epsilon, ahead
    # ... and it is paced at all: unpaced, the last chunk would come out seconds ahead
    assert arrivals[count - 1] - arrivals[0] >= (count - 1) * 33 / fps - lead - epsilon


def test_paced_http_live_stream_does_not_run_ahead(live_server):
    """The same fields on POST /v1/videos: chunks made by time t after the create are at most
    those due by then plus the lead (and one chunk made before playback starts); DELETE ends it."""
    fps, lead = 66, 0.5
    created = time.monotonic()
    video = create(live_server, fps=fps, pace_to_media_time=True, pacing_lead_seconds=lead)
    assert video["live"]
    deadline = created + 4.0
    most = 0.0
    while (now := time.monotonic()) < deadline:
        done = job(live_server, video["id"])["chunks_completed"]
        most = max(most, done - (now - created + lead) * fps / 33)
        time.sleep(0.05)
    assert done >= 4 and most <= 1 + 1e-6, (done, most)  # unpaced, about 25 chunks by now
    assert httpx.delete(f"{live_server.api}/videos/{video['id']}").status_code == 200
    assert not (live_server.data_dir / "videos" / video["id"]).exists()


def test_kept_live_stream_builds_its_mp4_at_the_size_limit(live_server):
    """keep: true keeps every segment; past --max-kept-stream-mb the stream ends, completed, with
    the final MP4 of everything it made."""
    video = create(live_server, keep=True)
    final = wait_final(live_server, video["id"], timeout=300)
    assert final["status"] == "completed" and final["end_reason"] == "max_kept_stream_mb", final
    job_dir = live_server.data_dir / "videos" / video["id"]
    chunks = final["chunks_completed"]
    assert 2 <= chunks < LIVE_CHUNKS and segment_indices(job_dir) == list(range(chunks))
    assert sum(p.stat().st_size for p in job_dir.glob("seg_0*.m4s")) > KEPT_LIMIT_MB * 2**20
    response = httpx.get(f"{live_server.api}/videos/{video['id']}/content", timeout=60)
    assert response.status_code == 200
    with av.open(io.BytesIO(response.content)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 33 * chunks
    playlist = httpx.get(f"{live_server.api}/videos/{video['id']}/stream.m3u8").text
    assert "#EXT-X-MEDIA-SEQUENCE:0" in playlist and playlist.rstrip().endswith("#EXT-X-ENDLIST")


def test_live_and_pacing_fields_are_checked(live_server):
    def post(path="/videos", **fields):
        return httpx.post(f"{live_server.api}{path}", json={"prompt": "x", "size": "128x64", **fields}, timeout=30)

    response = post(pace_to_media_time=True, num_frames=33)
    assert response.status_code == 422 and "pace_to_media_time" in response.json()["error"]["message"]
    response = post(keep=True, realtime=True, num_frames=33)
    assert response.status_code == 422 and "keep" in response.json()["error"]["message"]
    response = post(realtime=True, pace_to_media_time=True, pacing_lead_seconds=0)
    assert response.status_code == 422 and response.json()["error"]["param"] == "pacing_lead_seconds"
    response = post("/videos/sync", realtime=True)
    assert response.status_code == 422 and "live stream" in response.json()["error"]["message"]
    # without realtime, no num_frames is the model's default length, as before
    video = post().json()
    assert not video["live"] and video["total_chunks"] < 10
    httpx.delete(f"{live_server.api}/videos/{video['id']}")


# -- the scheduler's pacing, with an injected clock ------------------------------------------------

def test_scheduler_paces_chunks_to_playback_and_reanchors_after_a_stall():
    """Chunk k of a paced request does not begin before first_chunk_time + k * 33 / fps - lead;
    a chunk delivered more than max_lag late restarts the playback clock from it."""
    scheduler = Scheduler(EngineConfig(max_rows_per_forward=8, max_tokens_per_forward=10**6,
                                       max_running_requests=8), (1, 2, 2))
    spec = RequestSpec("p", "", 33 * 6, 64, 64, 0, 1.0, (1, 1, 1))
    request = Request("a", spec, 0.0, realtime_fps=33.0, pacing=Pacing(lead_s=0.5, max_lag_s=2.0))
    scheduler.add_request(request)
    begun: dict[int, float] = {}
    delivered: dict[int, float] = {}
    clock = {"now": 0.0, "stall_chunk": 3, "stall_until": 10.0}

    def run_until(done) -> None:
        """Steps 10 ms apart (each unit is instant); chunk ``stall_chunk``'s decode takes until ``stall_until``."""
        while not done():
            now = clock["now"]
            assert now < 30, "stuck"
            plan = scheduler.schedule(now)
            for _ in plan.begin_chunk:
                begun[request.chunk_index] = now
            if plan.decode and request.chunk_index == clock["stall_chunk"]:
                now = clock["now"] = clock["stall_until"]
            decoded = [DecodedChunk("a", request.chunk_index, None) for _ in plan.decode]
            for chunk in decoded:
                delivered[chunk.chunk_index] = now
            scheduler.update_from_output(plan, StepResult(chunks=decoded), now)
            clock["now"] = now + 0.01

    run_until(lambda: 1 in begun)  # chunk 0 at once; chunk 1 is due 1 s after chunk 0 came out
    start = request.first_chunk_time
    assert start == delivered[0] and begun[0] < start
    assert start + 1.0 - 0.5 <= begun[1] < start + 0.5 + 0.02
    run_until(lambda: 2 in begun)
    assert start + 2.0 - 0.5 <= begun[2] < start + 1.5 + 0.02
    # chunk 2 is made at once: nothing to do until chunk 3 may begin, which is when the engine wakes
    run_until(lambda: request.chunk_index == 3 and request.decodes_in_flight == 0)
    assert scheduler.idle_seconds(clock["now"]) == pytest.approx(start + 2.5 - clock["now"])
    # a stall: chunk 3 (due at start + 3) comes out at 10.0, more than max_lag (2 s) late
    run_until(lambda: 4 in begun)
    assert delivered[3] == 10.0 and request.first_chunk_time == pytest.approx(10.0 - 3.0)
    # playback restarted from chunk 3's delivery: chunk 4 is due one chunk after it, begun a lead before
    assert request.chunk_deadline(4) == pytest.approx(11.0)
    assert 11.0 - 0.5 - 1e-9 <= begun[4] < 11.0 - 0.5 + 0.02
    assert scheduler.get("a") is not None
