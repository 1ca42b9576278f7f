"""Throughput of ``POST /api/predict`` on a real server against calling ``Predictor.predict`` directly, same run.

    .venv/bin/python bench/bench_app_predict.py [--images 8] [--repeats 3] [--clients 4] [--size 512]

The model is the default architecture (``maskrcnn_resnet18_fpn``) at the preset ``instaseg train``
picks on this machine ("gpu" with CUDA, else "cpu"), with random weights: a trained model costs the
same per image, and the point is the server's overhead over the model at the size users run it.
With ``--score-threshold 0`` (the default) every response carries ``max_detections`` (100)
full-size masks, the most the server has to encode and send per image.

The images are synthetic shape PNGs (``instaseg synth``). The predictor is timed on decoded
arrays, alone and from ``--clients`` threads (the better of the two is the baseline); the servers
are timed from ``--clients`` concurrent HTTP clients, each sending the PNG files: ``instaseg serve``
(a subprocess, as users start it) and ``instaseg app`` (a subprocess on a project with the model as
its current version, SQLite). Prints a markdown table; the ratio is server images/s over the
baseline's (goal >= 0.9).
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch

from instaseg.app.db.schema import ModelVersion
from instaseg.app.server import open_project
from instaseg.app.settings import AppSettings
from instaseg.core import io
from instaseg.data.synth import make_synthetic
from instaseg.engine.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, save_checkpoint
from instaseg.engine.predictor import load
from instaseg.models import DEFAULT_MODEL, MODELS
from instaseg.models.registry import default_preset, resolve_config

CLASSES = ["circle", "square", "triangle"]


def write_model(path: Path, preset: str) -> Path:
    torch.manual_seed(0)
    kwargs = resolve_config(DEFAULT_MODEL, preset)
    model = MODELS[DEFAULT_MODEL].builder(num_classes=len(CLASSES), **kwargs)
    config = {"model": DEFAULT_MODEL, "preset": preset, "kwargs": kwargs, "class_names": CLASSES}
    checkpoint = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "config": config}
    return save_checkpoint(path, {**checkpoint, "model": model.state_dict()})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(command: list[str], url: str, health: str) -> subprocess.Popen:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"{' '.join(command)} exited: {process.stderr.read() if process.stderr else ''}")
        try:
            if httpx.get(f"{url}{health}", timeout=5).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.3)
    process.kill()
    sys.exit(f"{' '.join(command)} did not answer in time")


def timed(work: Callable[[int], object], count: int, threads: int) -> tuple[float, list]:
    """Seconds to run ``work(0..count-1)`` from ``threads`` threads, and the results in order."""
    with ThreadPoolExecutor(threads) as pool:
        start = time.perf_counter()
        results = list(pool.map(work, range(count)))
        return time.perf_counter() - start, results


def time_server(url: str, files: list[Path], args: argparse.Namespace) -> tuple[float, list[dict]]:
    """Seconds for ``--repeats`` rounds over ``files`` from ``--clients`` clients; one parsed answer per file."""
    uploads = [path.read_bytes() for path in files]
    params = {"score_threshold": args.score_threshold, "max_detections": args.max_detections}
    clients = [httpx.Client(base_url=url, timeout=600) for _ in range(args.clients)]

    def post(index: int, parse: bool = False) -> dict | None:
        client = clients[index % args.clients]
        response = client.post(
            "/api/predict", files={"image": ("image.png", uploads[index % len(uploads)])}, params=params
        )
        if response.status_code != 200:
            sys.exit(f"POST /api/predict answered {response.status_code}: {response.text[:300]}")
        return response.json() if parse else None

    post(0)  # the project loads its model on the first request
    seconds, _ = timed(post, len(uploads) * args.repeats, args.clients)
    answers = [post(i, parse=True) for i in range(len(uploads))]
    for client in clients:
        client.close()
    return seconds, answers


def check_answers(answers: list[dict], direct: list, where: str) -> None:
    """The server found what the predictor did (the same scores, in the same order)."""
    for index, (answer, found) in enumerate(zip(answers, direct, strict=True)):
        scores = [instance["score"] for instance in answer["instances"]]
        if scores != [float(s) for s in found.scores]:
            sys.exit(f"{where} answered image {index} differently from Predictor.predict")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8, help="distinct images")
    parser.add_argument("--repeats", type=int, default=3, help="rounds over the images")
    parser.add_argument("--clients", type=int, default=4, help="concurrent HTTP clients (and predictor threads)")
    parser.add_argument("--size", type=int, default=512, help="image width and height")
    parser.add_argument("--score-threshold", type=float, default=0.0)
    parser.add_argument("--max-detections", type=int, default=100)
    args = parser.parse_args()
    preset = default_preset()
    count = args.images * args.repeats

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        make_synthetic(root / "synth", num_train=0, num_val=args.images, size=args.size)
        files = sorted((root / "synth" / "val").glob("*.png"))
        model = write_model(root / "project" / "models" / "model.pt", preset)

        predictor = load(model)
        pixels = [io.read_image(path) for path in files]
        direct: Callable[[int], object] = lambda i: predictor.predict(  # noqa: E731
            pixels[i % len(pixels)], score_threshold=args.score_threshold, max_detections=args.max_detections
        )
        direct(0)
        alone_s, found = timed(direct, count, 1)
        together_s, _ = timed(direct, count, args.clients)
        found = found[: len(files)]
        instances = sum(len(f.boxes) for f in found) / len(found)

        port = free_port()
        serve_url = f"http://127.0.0.1:{port}"
        serve_command = [sys.executable, "-m", "instaseg", "serve", str(model), "--port", str(port)]
        server = start_server([*serve_command, "--per-minute", str(10**6)], serve_url, "/api/health")
        try:
            serve_s, answers = time_server(serve_url, files, args)
        finally:
            server.terminate()
            server.wait()
        check_answers(answers, found, "instaseg serve")

        project = root / "project"
        db = open_project(AppSettings(project_dir=project), image_root=root / "synth" / "val")
        with db.write() as session:
            session.add(ModelVersion(name="bench", architecture=DEFAULT_MODEL, path="models/model.pt", current=True))
        db.close()
        port = free_port()
        app_url = f"http://127.0.0.1:{port}"
        app_command = [sys.executable, "-m", "instaseg", "app", str(project), "--port", str(port), "--workers", "0"]
        server = start_server(app_command, app_url, "/api/health")
        try:
            app_s, answers = time_server(app_url, files, args)
        finally:
            server.terminate()
            server.wait()
        check_answers(answers, found, "instaseg app")

    baseline = count / min(alone_s, together_s)
    rows = [
        ("`Predictor.predict` on decoded images, 1 thread", alone_s, None),
        (f"`Predictor.predict` on decoded images, {args.clients} threads", together_s, None),
        (f"POST /api/predict, `instaseg serve`, {args.clients} clients", serve_s, count / serve_s / baseline),
        (f"POST /api/predict, `instaseg app` (SQLite), {args.clients} clients", app_s, count / app_s / baseline),
    ]
    print(
        f"{count} predictions ({args.images} {args.size}x{args.size} PNGs x {args.repeats}) of {DEFAULT_MODEL}, "
        f"preset {preset!r}, random weights, score_threshold {args.score_threshold}: {instances:.0f} instances "
        f"per image. {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{torch.get_num_threads()} torch threads, {'CUDA' if torch.cuda.is_available() else 'CPU only'}; "
        f"load average {os.getloadavg()[0]:.1f} at the end (other processes share the CPUs when it exceeds their count)."
    )
    print()
    print("| path | time | images/s | vs the faster direct call (goal >= 0.9) |")
    print("|---|---|---|---|")
    for name, seconds, ratio in rows:
        print(f"| {name} | {seconds:.1f} s | {count / seconds:.2f} | {'' if ratio is None else f'**{ratio:.2f}**'} |")
    print()
    print(f"Command: .venv/bin/python bench/bench_app_predict.py {' '.join(sys.argv[1:])}".rstrip())


if __name__ == "__main__":
    main()
