"""Train the demo detector and classifier on synthetic scenes and export them to ONNX.

Real MegaDetector and DeepFaune weights cannot be downloaded where Trapline is built and
tested, yet the pipeline's real pre- and post-processing (letterbox, YOLOv5 rows, NMS, square
crops, ImageNet normalisation, 38 DeepFaune logits) must be exercised end to end. So the
project trains two tiny models with exactly those input/output contracts on frames drawn by
`synthetic.py`, and ships them as `detector.onnx` / `classifier.onnx` with their sidecars.

    python -m trapline.models.demo.train --out models/demo --seed 0

runs on two CPU cores in about 8-10 minutes, most of it the detector (torch is only needed
here, in the `[train]` extra); `--det-epochs` and `--scenes` trade time for recall. Everything
is seeded (scene i of the training set is drawn from `default_rng([seed, 1, i])`), and on one
machine a rerun writes the same ONNX bytes; other CPUs or torch builds round differently and
land within a few points of the printed metrics.

Over 400 lines because it trains both demo models end to end (data, model, loop, export), which is
read once, top to bottom.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from trapline.models.demo.synthetic import (
    SPECIES,
    crop_for_classifier,
    letterbox,
    render_crop,
    render_scene,
)
from trapline.models.labels import DEEPFAUNE_LABELS, DETECTOR_CLASSES

DET_SIZE = 320
DET_STRIDE = 32
CLS_SIZE = 182
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SPECIES_INDEX = np.array([DEEPFAUNE_LABELS.index(s) for s in SPECIES])
_RESAMPLE = (Image.BILINEAR, Image.BILINEAR, Image.BICUBIC, Image.BOX, Image.NEAREST)


# --------------------------------------------------------------------------------------------
# Data (numpy only, run in worker processes).


def _scene_sample(
    args: tuple[int, int, int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One training scene: letterboxed canvas, boxes (cls, cx, cy, w, h in canvas px), crops."""
    seed, stream, i = args
    rng = np.random.default_rng([seed, stream, i])
    u = rng.random()
    kind = "blank" if u < 0.12 else "animal" if u < 0.68 else "person" if u < 0.84 else "vehicle"
    n = int(rng.choice([1, 1, 1, 2, 2, 3])) if kind in ("animal", "person") else 1
    night = rng.random() < 0.4
    width = int(rng.choice([640, 640, 640, 640, 960]))
    height = int(width * float(rng.choice([0.75, 0.75, 0.75, 0.5625, 0.667])))
    img, boxes = render_scene(rng, width, height, kind, night=night, n_objects=n)
    canvas, r, left, top = letterbox(img, DET_SIZE, _RESAMPLE[int(rng.integers(len(_RESAMPLE)))])
    rows, crops, labels = [], [], []
    for b in boxes:
        x, y, w, h = b.bbox
        rows.append([DETECTOR_CLASSES.index(b.category),
                     (x + w / 2) * width * r + left, (y + h / 2) * height * r + top,
                     w * width * r, h * height * r])  # fmt: skip
        if b.species is not None:
            d = rng.uniform(-0.07, 0.07, 4)  # a detector's box is never exact
            x0, y0 = max(0.0, x + d[0] * w), max(0.0, y + d[1] * h)
            x1, y1 = min(1.0, x + w + d[2] * w), min(1.0, y + h + d[3] * h)
            crops.append(np.asarray(crop_for_classifier(img, (x0, y0, x1 - x0, y1 - y0), CLS_SIZE)))
            labels.append(SPECIES.index(b.species))
    return (
        canvas,
        np.array(rows, dtype=np.float32).reshape(-1, 5),
        np.array(crops, dtype=np.uint8).reshape(-1, CLS_SIZE, CLS_SIZE, 3),
        np.array(labels, dtype=np.int64),
    )


def _crop_sample(args: tuple[int, int, int]) -> tuple[np.ndarray, int, bool]:
    seed, stream, i = args
    rng = np.random.default_rng([seed, stream, i])
    sp = i % len(SPECIES)
    night = (i // len(SPECIES)) % 2 == 1
    return np.asarray(render_crop(rng, SPECIES[sp], CLS_SIZE, night=night)), sp, night


def _eval_scene(args: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Held-out single-object scene (or blank) at a camera-like size, letterboxed like the pipeline."""
    seed, stream, i = args
    rng = np.random.default_rng([seed, stream, i])
    kinds = ("blank", "animal", "animal", "animal", "animal", "animal", "person", "vehicle")
    kind = kinds[i % len(kinds)]
    night = (i // len(kinds)) % 2 == 1
    width, height = ((640, 480), (640, 360), (1280, 960), (640, 480))[(i // 2) % 4]
    img, boxes = render_scene(rng, width, height, kind, night=night)
    canvas, r, left, top = letterbox(img, DET_SIZE)
    rows = [[DETECTOR_CLASSES.index(b.category),
             (b.bbox[0] + b.bbox[2] / 2) * width * r + left, (b.bbox[1] + b.bbox[3] / 2) * height * r + top,
             b.bbox[2] * width * r, b.bbox[3] * height * r] for b in boxes]  # fmt: skip
    return canvas, np.array(rows, dtype=np.float32).reshape(-1, 5)


def _build_targets(rows: np.ndarray, flip: bool) -> np.ndarray:
    """Per grid cell: [positive, cls one-hot x3, cx, cy, w, h] for one image.

    As in YOLOv5, the cell holding a box's centre and its two nearest neighbours (left or
    right, up or down) predict the box; several rows per object are fine, NMS merges them.
    """
    g = DET_SIZE // DET_STRIDE
    t = np.zeros((g * g, 8), dtype=np.float32)
    order = np.argsort(-(rows[:, 3] * rows[:, 4])) if len(rows) else []
    for k in order:  # small boxes last, so they win a shared cell
        c, cx, cy, w, h = rows[k]
        if flip:
            cx = DET_SIZE - cx
        gx, gy = cx / DET_STRIDE, cy / DET_STRIDE
        gi, gj = min(int(gx), g - 1), min(int(gy), g - 1)
        cells = [
            (gi, gj),
            (gi - 1 if gx % 1 < 0.5 else gi + 1, gj),
            (gi, gj - 1 if gy % 1 < 0.5 else gj + 1),
        ]
        for ci, cj in cells:
            if 0 <= ci < g and 0 <= cj < g:
                row = t[cj * g + ci]
                row[:] = 0.0
                row[0] = 1.0
                row[1 + int(c)] = 1.0
                row[4:] = (cx, cy, w, h)
    return t


def _pool_map(fn, jobs: list, workers: int) -> list:
    if workers <= 1:
        return [fn(j) for j in jobs]
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ctx.Pool(workers) as pool:
        return pool.map(fn, jobs, chunksize=16)


# --------------------------------------------------------------------------------------------
# Models (torch).


def _conv(torch_nn, cin: int, cout: int, stride: int = 1, k: int = 3, pad: int | None = None):
    pad = (k // 2 if k % 2 else 0) if pad is None else pad
    return torch_nn.Sequential(
        torch_nn.Conv2d(cin, cout, k, stride, pad, bias=False),
        torch_nn.BatchNorm2d(cout),
        torch_nn.ReLU(inplace=True),
    )


def make_detector():
    import torch
    from torch import nn

    class SPPF(nn.Module):
        """YOLOv5's spatial pyramid pooling: context from the whole frame for big objects."""

        def __init__(self, c: int, c_out: int) -> None:
            super().__init__()
            self.reduce = _conv(nn, c, c // 2, k=1)
            self.pool = nn.MaxPool2d(5, 1, 2)
            self.out = _conv(nn, c * 2, c_out, k=1)

        def forward(self, x):
            x = self.reduce(x)
            y1 = self.pool(x)
            y2 = self.pool(y1)
            return self.out(torch.cat([x, y1, y2, self.pool(y2)], 1))

    class DemoDetector(nn.Module):
        """Stride-32 anchor-free YOLOv5-style grid; decodes to YOLOv5 rows inside the graph.

        Row of cell (i, j): cx = (i + 2 sigmoid - 0.5) * 32, likewise cy; w = sigmoid * 320,
        h = sigmoid * 320; then sigmoid objectness and sigmoid class scores.
        """

        def __init__(self) -> None:
            super().__init__()
            # Plain 3x3 conv stack down to stride 32 (160, 80, 40, 20, 10 px maps); the full
            # resolution early layers matter: cheaper patchify stems lost 4-8 points of recall.
            # SPPF adds whole-frame context for big objects.
            chans = [(3, 16, 2), (16, 32, 2), (32, 48, 2), (48, 48, 1), (48, 96, 2), (96, 96, 1),
                     (96, 128, 2), (128, 128, 1)]  # fmt: skip
            self.backbone = nn.Sequential(
                *[_conv(nn, a, b, s) for a, b, s in chans], SPPF(128, 128), _conv(nn, 128, 128)
            )
            self.head = nn.Conv2d(128, 5 + len(DETECTOR_CLASSES), 1)
            g = DET_SIZE // DET_STRIDE
            ys, xs = torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij")
            self.register_buffer("grid", torch.stack([xs, ys], -1).reshape(1, g * g, 2).float())
            with torch.no_grad():  # start with low objectness, as YOLOv5 does
                self.head.bias[4] = -4.0
                self.head.bias[5:] = -2.0

        def raw(self, x):
            f = self.head(self.backbone(x))  # B, 8, g, g
            return f.flatten(2).transpose(1, 2)  # B, g*g, 8

        def decode(self, r):
            p = torch.sigmoid(r)
            xy = (p[..., 0:2] * 2.0 - 0.5 + self.grid) * DET_STRIDE
            wh = p[..., 2:4] * DET_SIZE
            return torch.cat([xy, wh, p[..., 4:]], dim=-1)

        def forward(self, x):
            return self.decode(self.raw(x))

    return DemoDetector()


def make_classifier():
    import torch
    from torch import nn

    class DemoClassifier(nn.Module):
        """Small CNN, 38 DeepFaune logits (only the demo species are ever targets)."""

        def __init__(self) -> None:
            super().__init__()
            chans = [(24, 48, 2), (48, 48, 1), (48, 96, 2), (96, 96, 1), (96, 160, 2)]
            self.features = nn.Sequential(
                _conv(nn, 3, 24, 4, k=4), *[_conv(nn, a, b, s) for a, b, s in chans]
            )
            self.fc = nn.Linear(160, len(DEEPFAUNE_LABELS))

        def forward(self, x):
            return self.fc(torch.mean(self.features(x), dim=(2, 3)))

    return DemoClassifier()


def _giou(a, b):
    """GIoU of (cx, cy, w, h) boxes, elementwise."""
    import torch

    a0, a1 = a[:, :2] - a[:, 2:] / 2, a[:, :2] + a[:, 2:] / 2
    b0, b1 = b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2
    inter = (torch.minimum(a1, b1) - torch.maximum(a0, b0)).clamp(min=0).prod(1)
    union = a[:, 2:].prod(1) + b[:, 2:].prod(1) - inter + 1e-7
    hull = (torch.maximum(a1, b1) - torch.minimum(a0, b0)).prod(1) + 1e-7
    iou = inter / union
    return iou - (hull - union) / hull


def _batch(images, idx: np.ndarray, gen: np.random.Generator, lo: float, hi: float):
    """uint8 NCHW images -> float [0, 1] with random horizontal flips and exposure."""
    import torch

    x = images[torch.from_numpy(idx)]
    flip = gen.random(len(idx)) < 0.5
    if flip.any():
        f = torch.from_numpy(np.flatnonzero(flip))
        x[f] = x[f].flip(3)
    gain = torch.from_numpy((gen.uniform(lo, hi, (len(idx), 1, 1, 1)) / 255.0).astype(np.float32))
    return x.float().mul_(gain).clamp_(0.0, 1.0), flip


def train_detector(images: np.ndarray, targets: np.ndarray, epochs: int, seed: int, log) -> object:
    """images: N x 320 x 320 x 3 uint8; targets: N x 2 (plain, flipped) x cells x 8."""
    import torch
    import torch.nn.functional as F

    images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()

    torch.manual_seed(seed)
    model = make_detector()
    bs = 32
    steps = epochs * (len(images) // bs)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.15)
    gen = np.random.default_rng([seed, 99])
    model.train()
    step, t0 = 0, time.time()
    for ep in range(epochs):
        order = gen.permutation(len(images))
        tot = 0.0
        for b in range(len(images) // bs):
            idx = np.sort(order[b * bs : (b + 1) * bs])
            x, flip = _batch(images, idx, gen, 0.75, 1.25)
            t = torch.from_numpy(targets[idx, flip.astype(int)])  # bs, cells, 8
            r = model.raw(x)
            pos = t[..., 0] > 0
            l_obj = F.binary_cross_entropy_with_logits(r[..., 4], t[..., 0], reduction="mean") * 4.0
            if pos.any():
                pred = model.decode(r)[pos]
                l_box = (1.0 - _giou(pred[:, :4], t[pos][:, 4:8])).mean() * 2.0
                l_cls = F.binary_cross_entropy_with_logits(r[pos][:, 5:], t[pos][:, 1:4])
            else:
                l_box = l_cls = r.sum() * 0.0
            loss = l_obj + l_box + l_cls
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            tot += loss.item()
        log(
            f"detector epoch {ep + 1}/{epochs} loss {tot / (len(images) // bs):.4f} ({time.time() - t0:.0f} s)"
        )
    model.eval()
    return model


def train_classifier(crops: np.ndarray, labels: np.ndarray, epochs: int, seed: int, log) -> object:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    model = make_classifier()
    bs = 64
    steps = epochs * (len(crops) // bs)
    opt = torch.optim.AdamW(model.parameters(), lr=4e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=4e-3, total_steps=steps, pct_start=0.15)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    target_idx = torch.from_numpy(SPECIES_INDEX)
    crops = torch.from_numpy(crops).permute(0, 3, 1, 2).contiguous()
    gen = np.random.default_rng([seed, 98])
    model.train()
    t0 = time.time()
    for ep in range(epochs):
        order = gen.permutation(len(crops))
        tot, correct = 0.0, 0
        for b in range(len(crops) // bs):
            idx = np.sort(order[b * bs : (b + 1) * bs])
            x, _ = _batch(crops, idx, gen, 0.75, 1.25)
            gray = np.flatnonzero(gen.random(bs) < 0.15)  # day crops seen in grey too
            if len(gray):
                g = torch.from_numpy(gray)
                x[g] = x[g].mean(1, keepdim=True).expand(-1, 3, -1, -1)
            y = target_idx[torch.from_numpy(labels[idx])]
            logits = model((x - mean) / std)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item()
            correct += int((logits.argmax(1) == y).sum())
        n = (len(crops) // bs) * bs
        log(f"classifier epoch {ep + 1}/{epochs} loss {tot / (len(crops) // bs):.4f} "
            f"train acc {correct / n:.3f} ({time.time() - t0:.0f} s)")  # fmt: skip
    model.eval()
    return model


# --------------------------------------------------------------------------------------------
# Evaluation (numpy, on the exported ONNX models, as the pipeline would run them).


def _nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    order = np.argsort(-scores)
    keep: list[int] = []
    while len(order):
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        xx0 = np.maximum(boxes[i, 0], boxes[rest, 0])
        yy0 = np.maximum(boxes[i, 1], boxes[rest, 1])
        xx1 = np.minimum(boxes[i, 2], boxes[rest, 2])
        yy1 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.clip(xx1 - xx0, 0, None) * np.clip(yy1 - yy0, 0, None)
        area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
        ov = inter / (area(boxes[i]) + area(boxes[rest]) - inter + 1e-9)
        order = rest[ov <= iou]
    return keep


def _iou_xyxy(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter + 1e-9)


def detections(
    output: np.ndarray, conf: float = 0.3, iou: float = 0.45
) -> list[tuple[int, float, np.ndarray]]:
    """YOLOv5 rows of one image -> [(class, score, xyxy canvas px)] after per-class NMS."""
    cls = output[:, 5:].argmax(1)
    score = output[:, 4] * output[np.arange(len(output)), 5 + cls]
    keep = score >= conf
    xyxy = np.concatenate(
        [output[:, :2] - output[:, 2:4] / 2, output[:, :2] + output[:, 2:4] / 2], 1
    )
    out = []
    for c in np.unique(cls[keep]):
        m = np.where(keep & (cls == c))[0]
        for k in _nms(xyxy[m], score[m], iou):
            out.append((int(c), float(score[m[k]]), xyxy[m[k]]))
    return out


def evaluate_detector(
    session, images: np.ndarray, gts: list[np.ndarray], conf: float = 0.3
) -> dict:
    tp = fp = n_gt = 0
    found = np.zeros(len(DETECTOR_CLASSES))
    total = np.zeros(len(DETECTOR_CLASSES))
    for s in range(0, len(images), 32):
        x = images[s : s + 32].transpose(0, 3, 1, 2).astype(np.float32) / 255.0
        out = session.run(["output"], {"images": x})[0]
        for o, gt in zip(out, gts[s : s + 32]):
            dets = detections(o, conf)
            gxy = np.concatenate([gt[:, 1:3] - gt[:, 3:5] / 2, gt[:, 1:3] + gt[:, 3:5] / 2], 1)
            n_gt += len(gt)
            np.add.at(total, gt[:, 0].astype(int), 1)
            matched = set()
            for c, _, box in sorted(dets, key=lambda d: -d[1]):
                best, bj = 0.0, -1
                for j in range(len(gt)):
                    if j not in matched and int(gt[j, 0]) == c:
                        v = _iou_xyxy(box, gxy[j])
                        if v > best:
                            best, bj = v, j
                if best >= 0.5:
                    matched.add(bj)
                    tp += 1
                    found[c] += 1
                else:
                    fp += 1
    per = {c: float(found[i] / max(1, total[i])) for i, c in enumerate(DETECTOR_CLASSES)}
    return {"recall": tp / max(1, n_gt), "precision": tp / max(1, tp + fp), "gt": n_gt, "tp": tp, "fp": fp,
            "per_class_recall": per}  # fmt: skip


def evaluate_classifier(session, crops: np.ndarray, labels: np.ndarray, night: np.ndarray) -> dict:
    mean = np.array(MEAN, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.array(STD, dtype=np.float32).reshape(1, 3, 1, 1)
    preds = []
    for s in range(0, len(crops), 64):
        x = (crops[s : s + 64].transpose(0, 3, 1, 2).astype(np.float32) / 255.0 - mean) / std
        preds.append(session.run(["logits"], {"input": x})[0].argmax(1))
    pred = np.concatenate(preds)
    ok = pred == SPECIES_INDEX[labels]
    per = {sp: float(ok[labels == i].mean()) for i, sp in enumerate(SPECIES)}
    return {
        "accuracy": float(ok.mean()),
        "day": float(ok[~night].mean()),
        "night": float(ok[night].mean()),
        "per_species": per,
    }


# --------------------------------------------------------------------------------------------


def export(model, path: Path, input_name: str, output_name: str, shape: tuple[int, ...]) -> None:
    """ONNX opset 17 with a dynamic batch axis; every other output axis is written as static."""
    import onnx
    import torch

    dummy = torch.zeros(1, *shape)
    with torch.no_grad():
        out_shape = tuple(model(dummy).shape[1:])
    kwargs = dict(
        input_names=[input_name],
        output_names=[output_name],
        dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
        opset_version=17,
        do_constant_folding=True,
    )
    try:
        torch.onnx.export(model, (dummy,), str(path), dynamo=False, **kwargs)
    except TypeError:  # torch without the dynamo switch
        torch.onnx.export(model, (dummy,), str(path), **kwargs)
    graph = onnx.load(str(path))
    for dim, size in zip(graph.graph.output[0].type.tensor_type.shape.dim[1:], out_shape):
        dim.ClearField("dim_param")
        dim.dim_value = int(size)
    onnx.checker.check_model(graph)
    onnx.save(graph, str(path))


def detector_sidecar() -> dict:
    return {
        "name": "trapline-demo-detector",
        "version": "1",
        "input_size": DET_SIZE,
        "layout": "yolov5",
        "classes": list(DETECTOR_CLASSES),
        "stride": DET_STRIDE,
        "note": "demo model trained on synthetic scenes; not MegaDetector",
    }


def classifier_sidecar() -> dict:
    return {
        "name": "trapline-demo-classifier",
        "version": "1",
        "input_size": CLS_SIZE,
        "labels": list(DEEPFAUNE_LABELS),
        "mean": list(MEAN),
        "std": list(STD),
        "trained_labels": list(SPECIES),
        "note": "demo model trained on synthetic crops; not DeepFaune",
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).parent, help="folder for the .onnx/.json files"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scenes", type=int, default=2000, help="training scenes (detector + crops)")
    ap.add_argument("--crops", type=int, default=1200, help="extra classifier crops")
    ap.add_argument("--det-epochs", type=int, default=10)
    ap.add_argument("--cls-epochs", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2, help="processes drawing the synthetic data")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = ap.parse_args(argv)
    t_start = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t_start:6.1f} s] {msg}", flush=True)

    # Draw all data first, before torch starts its thread pools (the workers fork).
    res = _pool_map(_scene_sample, [(args.seed, 1, i) for i in range(args.scenes)], args.workers)
    images = np.stack([r[0] for r in res])
    targets = np.stack(
        [np.stack([_build_targets(r[1], False), _build_targets(r[1], True)]) for r in res]
    )
    extra = _pool_map(_crop_sample, [(args.seed, 4, i) for i in range(args.crops)], args.workers)
    crops = np.concatenate([r[2] for r in res] + [np.stack([e[0] for e in extra])])
    labels = np.concatenate([r[3] for r in res] + [np.array([e[1] for e in extra])])
    del res, extra
    log(f"{len(images)} training scenes, {len(crops)} animal crops "
        f"(per species {np.bincount(labels, minlength=len(SPECIES)).tolist()})")  # fmt: skip
    ev = _pool_map(_eval_scene, [(args.seed, 2, i) for i in range(320)], args.workers)
    ev_images, ev_gts = np.stack([e[0] for e in ev]), [e[1] for e in ev]
    evc = _pool_map(_crop_sample, [(args.seed, 3, i) for i in range(400)], args.workers)
    ev_crops = np.stack([e[0] for e in evc])
    ev_labels = np.array([e[1] for e in evc])
    ev_night = np.array([e[2] for e in evc])
    log(f"{len(ev_images)} held-out scenes, {len(ev_crops)} held-out crops")

    import onnxruntime as ort
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)

    det = train_detector(images, targets, args.det_epochs, args.seed, log)
    del images, targets
    det_path = args.out / "detector.onnx"
    export(det, det_path, "images", "output", (3, DET_SIZE, DET_SIZE))
    (args.out / "detector.json").write_text(json.dumps(detector_sidecar(), indent=2) + "\n")

    cls = train_classifier(crops, labels, args.cls_epochs, args.seed, log)
    cls_path = args.out / "classifier.onnx"
    export(cls, cls_path, "input", "logits", (3, CLS_SIZE, CLS_SIZE))
    (args.out / "classifier.json").write_text(json.dumps(classifier_sidecar(), indent=2) + "\n")
    t_train = time.time() - t_start

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    dsess = ort.InferenceSession(str(det_path), opts, providers=["CPUExecutionProvider"])
    csess = ort.InferenceSession(str(cls_path), opts, providers=["CPUExecutionProvider"])
    dm = evaluate_detector(dsess, ev_images, ev_gts, conf=0.3)
    cm = evaluate_classifier(csess, ev_crops, ev_labels, ev_night)
    log(f"detector  (held-out, {dm['gt']} objects in {len(ev_images)} single-object/blank scenes, conf 0.3, "
        f"IoU 0.5): recall {dm['recall']:.3f} precision {dm['precision']:.3f} (tp {dm['tp']}, fp {dm['fp']}); "
        + ", ".join(f"{k} recall {v:.2f}" for k, v in dm["per_class_recall"].items()))  # fmt: skip
    log(f"classifier (held-out {len(ev_crops)} crops): top-1 {cm['accuracy']:.3f} "
        f"(day {cm['day']:.3f}, night {cm['night']:.3f}); "
        + ", ".join(f"{k} {v:.2f}" for k, v in cm["per_species"].items()))  # fmt: skip
    for p in (det_path, cls_path):
        log(f"{p.name}: {p.stat().st_size / 1e6:.2f} MB")
    log(f"done in {time.time() - t_start:.0f} s (training + export {t_train:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
