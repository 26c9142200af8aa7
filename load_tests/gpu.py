"""GPU benchmark (`python -m load_tests --gpu`): what one GPU node does with MegaDetector-v5-sized work.

Needs torch and torchvision with CUDA (not part of any extra: a GPU node brings its own). It was
written without a GPU to run it on (none is lent to these machines); see docs/performance.md.

- Detector: a randomly initialised network with YOLOv5x6's shape and cost (stride-64 backbone,
  widths 80..1280, ~200 GFLOPs at 1280x1280), fp16, batched: the bare model's photos/s is the
  ideal (DESIGN.md: on a GPU node the ideal is set by the GPU).
- Pipeline: JPEG bytes from disk -> nvJPEG batch decode on the GPU
  (`torchvision.io.decode_jpeg(device="cuda")`) -> letterbox by `interpolate` on the GPU ->
  fp16 detector -> NMS on the GPU; only boxes come back to the host.
- Naive: Pillow full-size decode on the CPU, batch 1, fp32 (MegaDetector's classic loop).
Efficiency = pipeline photos/s / bare model photos/s; speed-up = pipeline / naive.
"""

from __future__ import annotations

import time
from pathlib import Path


def _model(torch):
    nn = torch.nn

    def block(c_in: int, c_out: int, stride: int) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.SiLU()
        )

    def bottlenecks(c: int, n: int) -> nn.Module:
        return nn.Sequential(
            *[nn.Sequential(block(c, c // 2, 1), nn.Conv2d(c // 2, c, 1)) for _ in range(n)]
        )

    class Detector(nn.Module):
        """YOLOv5x6-sized: stem + 6 stride-2 stages to stride 64, heads at strides 8..64."""

        def __init__(
            self, widths=(80, 160, 320, 640, 960, 1280), depths=(4, 8, 12, 4, 4), outputs=3 * 8
        ):
            super().__init__()
            self.stem = block(3, widths[0], 2)
            stages, c = [], widths[0]
            for width, depth in zip(widths[1:], depths):
                stages.append(nn.Sequential(block(c, width, 2), bottlenecks(width, depth)))
                c = width
            self.stages = nn.ModuleList(stages)
            self.heads = nn.ModuleList(nn.Conv2d(w, outputs, 1) for w in widths[2:])

        def forward(self, x):
            x = self.stem(x)
            features = []
            for stage in self.stages:
                x = stage(x)
                features.append(x)
            # (B, anchors, 8): xywh, objectness, 3 classes; like YOLOv5's flattened output
            return torch.cat(
                [
                    h(f).flatten(2).transpose(1, 2).reshape(f.shape[0], -1, 8)
                    for h, f in zip(self.heads, features[1:])
                ],
                dim=1,
            )

    return Detector()


def _nms(torch, torchvision, raw, conf: float = 0.2, iou: float = 0.45):
    """Per image: score = objectness x class, threshold, class-aware NMS, on the GPU."""
    raw = raw.float().sigmoid()
    kept = []
    for image in raw:
        scores, classes = (image[:, 5:] * image[:, 4:5]).max(dim=1)
        keep = scores >= conf
        xywh, scores, classes = image[keep, :4] * 1280, scores[keep], classes[keep]
        xyxy = torch.cat([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], dim=1)
        index = torchvision.ops.batched_nms(xyxy, scores, classes, iou)[:100]
        kept.append(
            torch.cat([xyxy[index], scores[index, None], classes[index, None].float()], 1).cpu()
        )
    return kept


def run_gpu_bench(
    paths: list[Path], batch_size: int = 16, side: int = 1280, naive_sample: int = 32
) -> dict:
    import numpy as np
    import torch
    import torchvision
    from PIL import Image
    from torchvision.io import decode_jpeg

    if not torch.cuda.is_available():
        raise RuntimeError("--gpu needs a CUDA GPU and torch/torchvision built with CUDA")
    device = torch.device("cuda")
    model = _model(torch).to(device).eval()
    half = model.half()
    canvas = torch.full((batch_size, 3, side, side), 114 / 255, device=device, dtype=torch.half)
    with torch.inference_mode():
        for _ in range(3):  # warm-up: cuDNN autotuning, allocator
            half(canvas)
        torch.cuda.synchronize()
        started, rounds = time.perf_counter(), 10
        for _ in range(rounds):
            _nms(torch, torchvision, half(canvas))
        torch.cuda.synchronize()
        bare = rounds * batch_size / (time.perf_counter() - started)

        started = time.perf_counter()
        for i in range(0, len(paths), batch_size):
            chunk = paths[i : i + batch_size]
            data = [torchvision.io.read_file(str(p)) for p in chunk]
            images = decode_jpeg(data, device=device)  # nvJPEG, batched
            canvas[: len(chunk)].fill_(114 / 255)
            for j, image in enumerate(images):
                h, w = image.shape[1:]
                scale = side / max(h, w)
                nh, nw = round(h * scale), round(w * scale)
                resized = torch.nn.functional.interpolate(
                    image[None].half() / 255, size=(nh, nw), mode="bilinear", antialias=False
                )
                top, left = (side - nh) // 2, (side - nw) // 2
                canvas[j, :, top : top + nh, left : left + nw] = resized[0]
            _nms(torch, torchvision, half(canvas[: len(chunk)]))
        torch.cuda.synchronize()
        pipeline = len(paths) / (time.perf_counter() - started)

        full = _model(torch).to(device).eval()  # fp32, batch 1
        started = time.perf_counter()
        for path in paths[:naive_sample]:
            image = Image.open(path).convert("RGB")
            scale = side / max(image.size)
            image = image.resize(
                (round(image.width * scale), round(image.height * scale)), Image.BILINEAR
            )
            x = torch.full((1, 3, side, side), 114 / 255, device=device)
            x[0, :, : image.height, : image.width] = (
                torch.from_numpy(np.asarray(image)).to(device).permute(2, 0, 1) / 255
            )
            _nms(torch, torchvision, full(x))
        torch.cuda.synchronize()
        naive = min(naive_sample, len(paths)) / (time.perf_counter() - started)
    return {
        "device": torch.cuda.get_device_name(0),
        "batch_size": batch_size,
        "input_size": side,
        "bare_model_photos_per_second": round(bare, 2),
        "pipeline_photos_per_second": round(pipeline, 2),
        "naive_photos_per_second": round(naive, 2),
        "gpu_efficiency": round(pipeline / bare, 3),
        "speedup_over_naive": round(pipeline / naive, 2),
    }
