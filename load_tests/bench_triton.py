"""Detector throughput through Triton vs in-process ONNX Runtime, measured in one run.

    python -m load_tests.bench_triton                       # demo detector, CPU, ~1-2 min
    python -m load_tests.bench_triton --model md5-random --fp16 --device cuda   # GPU machine

Both paths start from the same letterboxed uint8 batches and end at the same boxes:
- Triton: the real local tritonserver (`services/devstack/triton.py`) serving the repository
  `models/triton_repository.py` builds (uint8 NHWC over loopback gRPC, /255 and NMS inside the
  graph), then `models/yolo.postprocess` on the <= 100 rows per image it answers;
- ONNX Runtime: `models/onnx_backend.OnnxDetector` in this process (float32 /255 conversion,
  the bare model), then `postprocess` on every raw row.
Calls alternate between the two so drift on a shared machine hits both alike; the figures are
median seconds per call, images/s, and Triton/ORT ratios per batch size. Bytes per image are the
request payload (uint8 NHWC) against what a float32 NCHW request would be, and the answer after
server-side NMS against the raw output. Writes `load_tests/out/bench_triton.json`.

`--model md5-random` builds a MegaDetector-v5-sized network (YOLOv5x6, 3 classes, random
weights; needs the `[import]` extra) and exports it at 1280; `--fp16` exports it with fp16
weights and arithmetic (float32 in and out); `--device cuda` asks ONNX Runtime for its CUDA
provider in-process and builds the repository with KIND_GPU instances, which on the local
tritonserver needs `onnxruntime-gpu` in `.venv-triton`. Not run here: this machine has no GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from trapline.models.contracts import load_detector_spec
from trapline.models.onnx_backend import OnnxDetector
from trapline.models.triton_backend import TritonDetector
from trapline.models.triton_repository import RepositoryOptions, build_repository
from trapline.models.yolo import postprocess
from trapline.pipelines.letterbox import Letterbox
from trapline.services.devstack.triton import start_triton, triton_install
from trapline.services.settings import DEMO_MODELS

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ROOT.parent / "shared" / "camtrap-dp-1.0.2"
OUT = Path(__file__).resolve().parent / "out" / "bench_triton.json"
CONF, IOU = 0.2, 0.45  # MegaDetector's typical threshold; its NMS IoU


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("demo", "md5-random"), default="demo")
    ap.add_argument("--fp16", action="store_true", help="md5-random: fp16 weights and arithmetic")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--images", type=int, default=192, help="images per batch size and path")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads, both paths")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    t0 = time.time()
    work = Path(tempfile.mkdtemp(prefix="trapline-bench-triton-"))

    detector_path = DEMO_MODELS / "detector.onnx"
    if args.model == "md5-random":
        detector_path = _md5_random(work / "md5_random.onnx", args.fp16)
    spec = load_detector_spec(detector_path)
    repo = build_repository(
        detector_path, DEMO_MODELS / "classifier.onnx", work / "repo", backend="python",
        gpu=args.device == "cuda", python_site_packages=triton_install().site_packages,
        options=RepositoryOptions(max_batch_size=max(args.batches), threads=args.threads,
                                  preferred_batch_sizes=tuple(sorted(set(args.batches)))),
    )  # fmt: skip
    local = OnnxDetector(detector_path, threads=args.threads)
    if args.device == "cuda":
        _check_cuda(local)
    canvases = _canvases(spec.input_size, max(args.batches))
    rows = []
    with start_triton(repo) as server, TritonDetector(server.grpc_url) as remote:
        for b in args.batches:
            batch = canvases[:b]
            calls = max(3, args.images // b)
            for fn in (local.detect, remote.detect):  # warm-up: allocations, first-batch costs
                fn(batch)
            times: dict[str, list[float]] = {"ort": [], "triton": []}
            answer_bytes = 0
            for _ in range(calls):
                for name, fn in (("ort", local.detect), ("triton", remote.detect)):
                    start = time.perf_counter()
                    raw = fn(batch)
                    postprocess(raw, spec.layout, CONF, IOU)
                    times[name].append(time.perf_counter() - start)
                    if name == "triton":
                        answer_bytes = raw.nbytes // b
            ort_s, triton_s = statistics.median(times["ort"]), statistics.median(times["triton"])
            rows.append({
                "batch": b, "calls": calls,
                "ort_s_per_call": round(ort_s, 5), "triton_s_per_call": round(triton_s, 5),
                "ort_images_per_s": round(b / ort_s, 1), "triton_images_per_s": round(b / triton_s, 1),
                "triton_over_ort_throughput": round(ort_s / triton_s, 3),
                "triton_answer_bytes_per_image": int(answer_bytes),
            })  # fmt: skip
    side = spec.input_size
    n_raw = local.detect(canvases[:1]).shape[1]
    result = {
        "model": args.model, "detector": spec.name, "input_size": side, "fp16": args.fp16,
        "device": args.device, "threads": args.threads,
        "ort_providers": local._model.session.get_providers(),
        "bytes_per_image": {
            "request_uint8_nhwc": side * side * 3, "request_float32_nchw": side * side * 3 * 4,
            "answer_after_server_nms": rows[-1]["triton_answer_bytes_per_image"],
            "answer_raw_float32": int(n_raw * (4 + len(spec.classes) + (spec.layout == "yolov5")) * 4),
        },
        "rows": rows,
        "wall_s": round(time.time() - t0, 1),
        "note": "median per call over alternating calls; both paths include postprocess (NMS)",
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    _print(result)
    print(f"wrote {args.out}")
    return 0


def _canvases(side: int, n: int) -> np.ndarray:
    """Letterboxed real camera-trap photos when shared/ has them (repeated), else seeded noise."""
    out = np.random.default_rng(0).integers(0, 256, (n, side, side, 3), dtype=np.uint8)
    photos = sorted(PHOTOS.glob("*.JPG"))
    for i in range(n if photos else 0):
        with Image.open(photos[i % len(photos)]) as image:
            image.draft("RGB", (side * 2, side * 2))
            image = image.convert("RGB")
            Letterbox.fit(image.width, image.height, side).draw(image, out[i])
    return out


def _md5_random(path: Path, fp16: bool) -> Path:
    """YOLOv5x6 at 1280 with random weights: MegaDetector v5's cost without its weights."""
    try:
        import torch

        from trapline.models.importers.onnx_export import export_onnx
        from trapline.models.importers.yolov5_arch import YOLOV5X6, build_yolov5
    except ImportError as error:
        sys.exit(f"--model md5-random needs the [import] extra (torch): {error}")

    class Exported(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.model = build_yolov5(YOLOV5X6)
            if fp16:
                self.model.half()

        def forward(self, x):
            dtype = torch.float16 if fp16 else torch.float32
            return self.model(x.to(dtype))[0].float()

    module = Exported().eval()
    export_onnx(module, path, "images", "output", 1280)
    path.with_suffix(".json").write_text(json.dumps({
        "name": "md5-random-" + ("fp16" if fp16 else "fp32"), "version": "0", "input_size": 1280,
        "layout": "yolov5", "classes": ["animal", "person", "vehicle"], "stride": 64,
    }))  # fmt: skip
    return path


def _check_cuda(local: OnnxDetector) -> None:
    """OnnxDetector asks for every provider onnxruntime has, CUDA first when it is there."""
    providers = local._model.session.get_providers()
    if "CUDAExecutionProvider" not in providers:
        sys.exit(f"--device cuda: ONNX Runtime runs on {providers}; install onnxruntime-gpu")


def _print(result: dict) -> None:
    by = result["bytes_per_image"]
    print(f"\ndetector {result['detector']} at {result['input_size']} ({result['device']}, "
          f"{'fp16' if result['fp16'] else 'fp32'}, {result['threads']} ORT thread(s) each side)")  # fmt: skip
    print(
        f"{'batch':>5} {'ORT img/s':>10} {'Triton img/s':>13} {'Triton/ORT':>11} {'ORT ms/call':>12} {'Triton ms/call':>15}"
    )
    for r in result["rows"]:
        print(f"{r['batch']:>5} {r['ort_images_per_s']:>10.1f} {r['triton_images_per_s']:>13.1f} "
              f"{r['triton_over_ort_throughput']:>11.2f} {r['ort_s_per_call'] * 1e3:>12.1f} "
              f"{r['triton_s_per_call'] * 1e3:>15.1f}")  # fmt: skip
    print(f"request per image: uint8 NHWC {by['request_uint8_nhwc']:,} B vs float32 "
          f"{by['request_float32_nchw']:,} B (x{by['request_float32_nchw'] / by['request_uint8_nhwc']:.0f}); "
          f"answer: {by['answer_after_server_nms']:,} B after server NMS vs {by['answer_raw_float32']:,} B raw; "
          f"run {result['wall_s']} s")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
