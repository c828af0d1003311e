"""`/v1/score` under load: one local thumbnail + a title per request at several concurrencies (JSON).

    .venv/bin/python benchmarks/service_load.py                          # 40/120/160 requests at 1/8/32
    .venv/bin/python benchmarks/service_load.py --requests 8 24 32       # a quick look
    .venv/bin/python benchmarks/service_load.py --batch-max 1            # without cross-request batching

The service runs in a child process (so the load generator does not share its interpreter): a
real uvicorn on loopback over a published ``tech`` niche of ``--references`` rendered sample
thumbnails embedded with CLIP ViT-B-32 (random weights unless ``--pretrained``), built and
published with the pipeline's own functions. This process serves the thumbnail on loopback: one
real-sized JPEG (a photo from ``../shared/data/images`` when present, else a rendered sample
thumbnail, scaled to ``--size``, 1280x720 by default). Each level sends a warm-up of ``concurrency`` requests,
then the counted ones from a thread pool. Reported per level: requests/s, p50/p99 latency in ms,
errors, the mean CLIP batch size of each tower (from the service's batchers), and the service
process's CPU time per request with the requests/s it allows on otherwise idle cores (the figure
to trust on a shared, busy machine). Target: >= 10 requests/s at concurrency 8 on 2 cores.
"""

from __future__ import annotations

import argparse
import http.server
import io
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED_IMAGES = REPO.parent / "shared" / "data" / "images"
NICHE = "tech"
STATS_PATH = "/bench/batches"  # added to the app by this benchmark only
TARGET_CONCURRENCY, TARGET_RPS = 8, 10.0


# --- the service side (child process) ---------------------------------------------------------

def thumbnail_jpeg(size: tuple[int, int], image: Path | None) -> tuple[bytes, str]:
    """A real-sized JPEG: the given photo (or the first of the shared photos) else a rendered sample, at ``size``."""
    from PIL import Image, ImageOps

    from thumblab_dagster.lib.collections.thumbnails.sample_source import render_thumbnail

    if image is None and SHARED_IMAGES.is_dir():
        image = next(iter(sorted(SHARED_IMAGES.rglob("*.jpg"))), None)
    if image is not None:
        picture, source = Image.open(image).convert("RGB"), str(image)
    else:
        picture, source = render_thumbnail(NICHE, "bench-upload"), "rendered sample thumbnail"
    picture = ImageOps.fit(picture, size)  # cover and crop, as a 16:9 upload is
    buf = io.BytesIO()
    picture.save(buf, format="JPEG", quality=90)
    return buf.getvalue(), source


def publish_references(root: Path, clip, n: int) -> None:
    """A published niche of ``n`` rendered thumbnails and titles, embedded and built as the pipeline does."""
    import pandas as pd

    from thumblab_dagster.lib.collections.thumbnails.pipeline import niche_index_spec
    from thumblab_dagster.lib.collections.thumbnails.sample_source import render_thumbnail
    from thumblab_dagster.lib.embed.clip import embed_images, embed_texts
    from thumblab_dagster.lib.engine.build import build_index_dir
    from thumblab_dagster.lib.engine.publish import publish

    ids = [f"ref{i:05d}" for i in range(n)]
    titles = [f"reference video {i} about gadgets" for i in range(n)]
    vectors = embed_images(clip, [render_thumbnail(NICHE, vid) for vid in ids])
    metadata = pd.DataFrame({"video_id": ids, "title": titles,
                             "thumbnail_url": [f"https://i.ytimg.com/vi/{vid}/hqdefault.jpg" for vid in ids],
                             "views_per_hour": np.linspace(10, 1000, n)})
    spec = niche_index_spec(metadata, embed_texts(clip, titles), embedding=clip.weights.as_dict(),
                            extra={"niche": NICHE, "snapshot": "2026-11-30"})
    build_index_dir(root / "build", vectors, ids, spec)
    publish(root / "build", root / "pub", NICHE, "2026-11-30")


class JpegHandler(http.server.BaseHTTPRequestHandler):
    jpeg = b""
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(self.jpeg)))
        self.end_headers()
        self.wfile.write(self.jpeg)

    def log_message(self, *args):
        pass


def serve(args: argparse.Namespace) -> None:
    """Build the niche and start the service (allowed to fetch from ``--image-host``), print one ready line,
    serve until terminated."""
    import torch
    import uvicorn

    from thumblab_dagster.lib.embed.clip import describe_weights, load_clip
    from thumblab_dagster.lib.embed.untrusted_fetch import FetchPolicy
    from thumblab_dagster.service.app import ServiceSettings, create_app

    publish_references(args.workdir, load_clip("ViT-B-32", args.pretrained, "cpu"), args.references)  # fp32, as built
    clip = load_clip("ViT-B-32", args.pretrained, "cpu", precision=args.precision)  # what the service runs
    settings = ServiceSettings(publish_dir=str(args.workdir / "pub"),
                               fetch=FetchPolicy(allowed_private=(args.image_host,)),
                               batch_window_ms=args.window_ms, batch_max=args.batch_max)
    app = create_app(settings, clip=clip)
    app.add_api_route(STATS_PATH, lambda: app.state.batchers.stats(), methods=["GET"], include_in_schema=False)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)  # requests queue here until uvicorn serves: the ready line may come first
    print(json.dumps({"base": f"http://127.0.0.1:{sock.getsockname()[1]}",
                      "model": describe_weights(clip.weights.as_dict()),
                      "precision": clip.precision, "precision_note": clip.weights.precision_note,
                      "torch_threads": torch.get_num_threads()}),
          flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning", backlog=1024)).run(sockets=[sock])


# --- the load side (this process) -------------------------------------------------------------

def batch_stats(session, base: str) -> dict:
    return session.get(base + STATS_PATH, timeout=60).json()


def mean_batches(before: dict, after: dict) -> dict:
    """Mean batch size per tower between two stats snapshots."""
    out = {}
    for tower in after:
        batches = after[tower]["batches"] - before[tower]["batches"]
        out[tower] = round((after[tower]["items"] - before[tower]["items"]) / batches, 2) if batches else None
    return out


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux), for the service's CPU cost per request."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def run_level(base: str, image: str, concurrency: int, count: int, timeout_s: float, pid: int) -> dict:
    import requests

    local = threading.local()

    def one(i: int) -> tuple[float, bool]:
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        body = {"title": f"I built a mechanical keyboard, take {i}", "category": NICHE,
                "thumbnails": [{"id": f"upload-{i}", "url": f"{image}?r={i}"}]}
        start = time.perf_counter()
        try:
            resp = session.post(base + "/v1/score", json=body, timeout=timeout_s)
            ok = resp.status_code == 200 and all(t["ok"] for t in resp.json()["thumbnails"])
        except requests.RequestException:
            ok = False
        return (time.perf_counter() - start) * 1e3, ok

    with ThreadPoolExecutor(concurrency) as pool, requests.Session() as stats_session:
        list(pool.map(one, range(-concurrency, 0)))  # warm-up: connections, threads, the first batches
        before, cpu_before = batch_stats(stats_session, base), cpu_seconds(pid)
        start = time.perf_counter()
        results = list(pool.map(one, range(count)))
        wall = time.perf_counter() - start
        after, cpu_after = batch_stats(stats_session, base), cpu_seconds(pid)
    latencies = [ms for ms, _ in results]
    cpu_ms = None if cpu_before is None or cpu_after is None else (cpu_after - cpu_before) * 1e3 / count
    return {"concurrency": concurrency, "requests": count, "errors": sum(not ok for _, ok in results),
            "requests_per_s": round(count / wall, 2), "p50_ms": round(float(np.percentile(latencies, 50)), 1),
            "p99_ms": round(float(np.percentile(latencies, 99)), 1), "mean_batch": mean_batches(before, after),
            # the service's CPU per request, and what that allows when it has every core to itself (an estimate
            # that holds on a shared, busy machine too, where requests/s above measures the sharing as well)
            "service_cpu_ms_per_request": cpu_ms and round(cpu_ms, 1),
            "cpu_bound_requests_per_s": cpu_ms and round(os.cpu_count() * 1e3 / cpu_ms, 2)}


def drive(args: argparse.Namespace) -> dict:
    if len(args.requests) != len(args.concurrency):
        raise SystemExit("--requests needs one count per --concurrency level")
    # The image server runs here, beside the load: the service's CPU time is the service's alone.
    JpegHandler.jpeg, source = thumbnail_jpeg(args.size, args.image)
    images = http.server.ThreadingHTTPServer(("127.0.0.1", 0), JpegHandler)
    images.daemon_threads = True
    threading.Thread(target=images.serve_forever, daemon=True).start()
    image_host = f"127.0.0.1:{images.server_address[1]}"
    thumbnail = {"source": source, "size": list(args.size), "bytes": len(JpegHandler.jpeg)}
    with tempfile.TemporaryDirectory(prefix="service-load-") as tmp:
        command = [sys.executable, __file__, "--serve", "--workdir", tmp, "--references", str(args.references),
                   "--pretrained", args.pretrained, "--window-ms", str(args.window_ms),
                   "--batch-max", str(args.batch_max), "--precision", args.precision, "--image-host", image_host]
        child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=REPO)
        try:
            line = child.stdout.readline()
            if not line:
                raise SystemExit(f"the service did not start (exit code {child.wait()})")
            ready = json.loads(line)
            load_before = os.getloadavg()
            levels = []
            for concurrency, count in zip(args.concurrency, args.requests):
                levels.append(run_level(ready["base"], f"http://{image_host}/thumb.jpg", concurrency, count,
                                        args.timeout_s, child.pid))
                print(json.dumps(levels[-1]), file=sys.stderr, flush=True)
        finally:
            child.terminate()
            child.wait(30)
            images.shutdown()
    at_target = next((lv for lv in levels if lv["concurrency"] == TARGET_CONCURRENCY), None)
    return {"benchmark": "service_load",
            "machine": {"cores": os.cpu_count(), "python": platform.python_version(),
                        "load_average_before": [round(x, 2) for x in load_before],
                        "load_average_after": [round(x, 2) for x in os.getloadavg()]},
            "service": {"model": ready["model"], "precision": ready["precision"],
                        "precision_note": ready["precision_note"], "torch_threads": ready["torch_threads"],
                        "references": args.references,
                        "thumbnail": thumbnail,
                        "batching": {"window_ms": args.window_ms, "max": args.batch_max}},
            "levels": levels,
            "target": {"concurrency": TARGET_CONCURRENCY, "requests_per_s": TARGET_RPS,
                       "met": None if at_target is None else at_target["requests_per_s"] >= TARGET_RPS
                       and at_target["errors"] == 0}}


def size(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    return int(width), int(height)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, nargs="+", default=[40, 120, 160], help="counted requests per level")
    parser.add_argument("--references", type=int, default=60, help="references in the published niche")
    parser.add_argument("--pretrained", default="none", help="open_clip tag or checkpoint (default: random weights)")
    parser.add_argument("--window-ms", type=float, default=5.0, help="THUMBLAB_BATCH_WINDOW_MS")
    parser.add_argument("--batch-max", type=int, default=32, help="THUMBLAB_BATCH_MAX (1: no cross-request batching)")
    parser.add_argument("--precision", default="fp32", help="THUMBLAB_CLIP_PRECISION (fp32, bf16, int8, auto)")
    parser.add_argument("--size", type=size, default=(1280, 720), help="thumbnail size, WxH")
    parser.add_argument("--image", type=Path, default=None, help="a photo to serve (default: the first shared one)")
    parser.add_argument("--timeout-s", type=float, default=120.0, help="per request")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--workdir", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--image-host", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args)
        return
    result = json.dumps(drive(args), indent=2)
    print(result)
    if args.out:
        args.out.write_text(result + "\n")


if __name__ == "__main__":
    main()
