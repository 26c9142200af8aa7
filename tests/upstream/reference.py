"""The upstream side of tests/integration/test_upstream_fidelity.py: runs in .venv-upstream only.

Never imported by Trapline or by the main test venv: it imports the upstream code bases
(`yolov5` 7.0.14, `megadetector` 10.0.28, `ultralytics` 8.4.190, `timm` 1.0.31, torch 2.14.1),
installed by scripts/setup_upstream.sh. One command per call, arguments as one JSON object:

    .venv-upstream/bin/python tests/upstream/reference.py COMMAND '{"key": ...}'

Commands save checkpoints the way each upstream trainer saves them, and answer raw outputs
(.npy) or end-to-end detections / logits (JSON on stdout, last line) with each upstream's own
inference code. Weights are random but seeded and spread (He-normal convolutions, random BN
statistics), so outputs depend on the image and comparisons are not vacuous.
"""

from __future__ import annotations

import json
import os
import sys
from copy import deepcopy
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")  # ultralytics: no network probes
os.environ.setdefault("YOLO_VERBOSE", "False")

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


def _spread(model: torch.nn.Module, seed: int, head_gain: float = 1.0) -> None:
    """Seeded He-normal convolutions and random BN statistics (in place)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d) and m.weight.requires_grad:
                std = (2 / m.weight[0].numel()) ** 0.5
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * std)
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


# ------------------------------------------------------------------------------------------
# YOLOv5 (MegaDetector v5's code): train.py's checkpoint, strip_optimizer's release file


def yolov5_save(a: dict) -> dict:
    """A model built from a YOLOv5 yaml, saved as yolov5 train.py saves last.pt (lines
    `ckpt = {'epoch': ..., 'ema': deepcopy(ema.ema).half(), ...}`), and its strip_optimizer copy
    (what MegaDetector's released files are). The EMA differs from the model, as after training."""
    _yolov5_torch_load_compat()
    import yaml
    from yolov5 import __version__
    from yolov5.models.yolo import DetectionModel
    from yolov5.train import parse_opt
    from yolov5.utils.general import strip_optimizer
    from yolov5.utils.metrics import fitness
    from yolov5.utils.torch_utils import ModelEMA, de_parallel, smart_optimizer

    root = Path(sys.modules["yolov5"].__file__).parent / "models"
    cfg = yaml.safe_load(next(root.rglob(a["cfg"])).read_text())
    cfg.update(nc=3, depth_multiple=a["depth"], width_multiple=a["width"])
    torch.manual_seed(a["seed"])
    model = DetectionModel(cfg, ch=3, nc=3)
    _spread(model, a["seed"])
    with torch.no_grad():  # objectness and class scores spread over (0, 1), as after training
        for conv in model.model[-1].m:  # rows: per anchor (cx, cy, w, h, objectness, classes)
            conv.weight.view(model.model[-1].na, -1, *conv.weight.shape[1:])[:, 4:].mul_(
                a.get("head_gain", 1.0)
            )
            conv.bias.view(model.model[-1].na, -1)[:, 4].fill_(a.get("obj_bias", 0.0))
            conv.bias.view(model.model[-1].na, -1)[:, 5:].fill_(a.get("cls_bias", 0.0))
    model.nc, model.names = 3, {0: "animal", 1: "person", 2: "vehicle"}  # train.py: from data
    model.hyp = {"lr0": 0.01}
    ema = ModelEMA(model, updates=a.get("ema_updates", 5000))
    with torch.no_grad():  # one more "training step": the EMA now lags behind the model
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ema.update(model)
    optimizer = smart_optimizer(model, "SGD", 0.01, 0.937, 5e-4)
    opt = parse_opt(known=True)
    best_fitness = fitness(np.array([[0.1, 0.2, 0.3, 0.4, 1.0, 1.0, 1.0]]))  # a numpy array
    ckpt = {
        "epoch": 0,
        "best_fitness": best_fitness,
        "model": deepcopy(de_parallel(model)).half(),
        "ema": deepcopy(ema.ema).half(),
        "updates": ema.updates,
        "optimizer": optimizer.state_dict(),
        "opt": vars(opt),
        "date": "2026-01-01T00:00:00",
        "yolov5pip_version": __version__,
    }
    out = Path(a["out"])
    out.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, out / "last.pt")
    strip_optimizer(out / "last.pt", out / "release.pt")
    return {"last": str(out / "last.pt"), "release": str(out / "release.pt")}


def _yolov5_torch_load_compat() -> None:
    # yolov5 7.0.14 calls torch.load() without weights_only; torch >= 2.6 defaults it to True.
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"


def yolov5_raw(a: dict) -> dict:
    """YOLOv5's own loader (models/experimental.py attempt_load: 'ema' over 'model', float,
    fused) on float inputs; or `which` = 'model' for the checkpoint's non-EMA weights."""
    _yolov5_torch_load_compat()
    from yolov5.models.experimental import attempt_load

    x = torch.from_numpy(np.load(a["inputs"]))
    if a.get("which") == "model":
        ckpt = torch.load(a["ckpt"], map_location="cpu")
        model = ckpt["model"].float().fuse().eval()
    else:
        model = attempt_load(a["ckpt"], device="cpu", fuse=True)
    with torch.no_grad():
        y = model(x)[0]
    np.save(a["out"], y.float().numpy())
    return {"shape": list(y.shape)}


def megadetector_detect(a: dict) -> dict:
    """MegaDetector's own inference (megadetector.detection.pytorch_detector.PTDetector,
    default 'classic' mode: YOLOv5 letterbox auto=True at stride 64, its class-aware NMS at
    IoU 0.45, boxes scaled back, rounded, truncated to 4 digits) on each photo."""
    _yolov5_torch_load_compat()
    from megadetector.detection.pytorch_detector import PTDetector
    from megadetector.visualization.visualization_utils import load_image

    detector = PTDetector(a["ckpt"], {"force_cpu": True})
    out = {}
    for path in a["photos"]:
        result = detector.generate_detections_one_image(
            load_image(path), path, detection_threshold=a["threshold"]
        )
        out[path] = result["detections"]
    return out


# ------------------------------------------------------------------------------------------
# ultralytics (MDv1000 / MDv6): the trainer's last.pt


def ultralytics_save(a: dict) -> dict:
    """A DetectionModel built from an ultralytics yaml, saved by BaseTrainer.save_model itself
    (the method that writes weights/last.pt), on a trainer holding only what it reads."""
    from ultralytics.cfg import get_cfg
    from ultralytics.models.yolo.detect import DetectionTrainer
    from ultralytics.nn.tasks import DetectionModel, yaml_model_load
    from ultralytics.utils.torch_utils import ModelEMA

    torch.manual_seed(a["seed"])
    cfg = a["cfg"]
    if "width" in a:  # a yaml without scales (YOLOv9-c), made narrower the yaml's own way
        cfg = yaml_model_load(cfg)
        cfg.update(depth_multiple=a["depth"], width_multiple=a["width"])
    model = DetectionModel(cfg, ch=3, nc=3, verbose=False)
    _spread(model, a["seed"])
    head = model.model[-1]
    model.half().float()  # calibrate the weights the fp16 checkpoint will hold
    with torch.no_grad():
        _calibrate_classes(model, [level[-1] for level in head.cv3], a["calibrate"])
    model.names = {0: "animal", 1: "person", 2: "vehicle"}  # the trainer sets data['names']
    out = Path(a["out"])

    class Trainer(DetectionTrainer):
        def __init__(self):  # only the state save_model reads; no dataset, no training
            self.args = get_cfg(overrides={"model": a["cfg"], "data": "mdv1000.yaml"})
            model.args = self.args
            self.model = model
            self.ema = ModelEMA(model)
            self.ema.update(model)
            self.optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.937)
            self.scaler = torch.amp.GradScaler("cuda", enabled=False)
            self.epoch, self.best_fitness, self.fitness = 0, 0.5, 0.5
            self.stopper = type("Stopper", (), {"best_fitness": 0.5, "best_epoch": 0})()
            self.metrics = {"metrics/mAP50-95(B)": 0.5}
            self.save_dir = out
            self.wdir = out / "weights"
            self.last, self.best = self.wdir / "last.pt", self.wdir / "best.pt"
            self.csv = out / "results.csv"
            self.save_period = -1

    trainer = Trainer()
    trainer.save_model()
    return {"last": str(trainer.last)}


def _calibrate_classes(model, convs, photos: list[str], top: float = 0.002) -> None:
    """Scale the class convolutions so their logits have std 2 on `photos` (640 wide), and bias
    them so about `top` of the (cell, class) scores exceed 0.3: a few hundred boxes, spread
    over (0, 1), whatever the architecture (random heads answer all ~0 or all ~1, and how
    much depends on the photo, hence calibrating on the photos the test runs)."""
    from PIL import Image

    images = []
    for photo in photos:
        image = Image.open(photo).convert("RGB")
        image = image.resize((640, round(640 * image.height / image.width / 32) * 32))
        images.append(np.asarray(image))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    seen = []
    hooks = [c.register_forward_hook(lambda m, i, o: seen.append(o.flatten())) for c in convs]
    for conv in convs:
        conv.bias.zero_()
    model.eval()
    model(x)
    for hook in hooks:
        hook.remove()
    logits = torch.cat(seen)
    scale = 2.0 / float(logits.std())
    bias = float(torch.logit(torch.tensor(0.3))) - float(torch.quantile(logits * scale, 1 - top))
    for conv in convs:
        conv.weight.mul_(scale)
        conv.bias.fill_(bias)


def _ultralytics_model(path: str) -> torch.nn.Module:
    from ultralytics.nn.tasks import load_checkpoint

    model, _ = load_checkpoint(path, device="cpu", fuse=True)
    return model.float().eval()


def ultralytics_raw(a: dict) -> dict:
    """ultralytics' own loader (nn/tasks.py load_checkpoint: 'ema' or 'model', float, fused)."""
    model = _ultralytics_model(a["ckpt"])
    x = torch.from_numpy(np.load(a["inputs"]))
    with torch.no_grad():
        y = model(x)
    y = y[0] if isinstance(y, (list, tuple)) else y
    np.save(a["out"], y.float().numpy())
    return {"shape": list(y.shape)}


def ultralytics_detect(a: dict) -> dict:
    """ultralytics' predictor (YOLO(...).predict: LetterBox auto=True at the model's stride,
    its NMS, scale_boxes), boxes as MegaDetector's relative [x_min, y_min, width, height]."""
    from ultralytics import YOLO

    model = YOLO(a["ckpt"], task="detect")
    out = {}
    for path in a["photos"]:
        (result,) = model.predict(
            path, imgsz=a["imgsz"], conf=a["threshold"], iou=0.45, device="cpu",
            verbose=False, save=False, max_det=300,
        )  # fmt: skip
        h, w = result.orig_shape
        rows = []
        for xyxy, conf, cls in zip(
            result.boxes.xyxy.tolist(), result.boxes.conf.tolist(), result.boxes.cls.tolist()
        ):
            x1, y1, x2, y2 = xyxy
            rows.append(
                {"category": str(int(cls) + 1), "conf": conf,
                 "bbox": [x1 / w, y1 / h, (x2 - x1) / w, (y2 - y1) / h]}
            )  # fmt: skip
        out[path] = rows
    return out


# ------------------------------------------------------------------------------------------
# timm (DeepFaune's ViT)


def _deepfaune_model(backbone: str, num_classes: int) -> torch.nn.Module:
    """DeepFaune's classifTools.py `Model`: `self.base_model = timm.create_model(BACKBONE,
    pretrained=False, num_classes=..., dynamic_img_size=True)`."""
    import timm

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.base_model = timm.create_model(
                backbone, pretrained=False, num_classes=num_classes, dynamic_img_size=True
            )

        def forward(self, x):
            return self.base_model(x)

    return Model()


def deepfaune_save(a: dict) -> dict:
    """DeepFaune's checkpoint: `torch.save({'args': {...}, 'state_dict': model.state_dict()})`
    of the wrapper above, so keys read `base_model.<timm key>`."""
    torch.manual_seed(a["seed"])
    model = _deepfaune_model(a["backbone"], a["num_classes"])
    g = torch.Generator().manual_seed(a["seed"])
    with torch.no_grad():  # trained DINOv2 layer scales are far from their 1e-5 init
        for name, p in model.named_parameters():
            if name.endswith(".gamma"):
                p.copy_(torch.rand(p.shape, generator=g) * 0.5 + 0.25)
            elif name.startswith("base_model.head.weight"):
                p.normal_(0, 0.5, generator=g)
    args = {"backbone": a["backbone"], "num_classes": a["num_classes"], "img_size": 182}
    torch.save({"args": args, "state_dict": model.state_dict()}, a["out"])
    return {"out": a["out"]}


def _load_deepfaune(path: str) -> torch.nn.Module:
    params = torch.load(path, map_location="cpu", weights_only=True)
    model = _deepfaune_model(params["args"]["backbone"], params["args"]["num_classes"])
    model.load_state_dict(params["state_dict"])
    return model.eval()


def deepfaune_raw(a: dict) -> dict:
    """timm's forward with dynamic_img_size (the 37 x 37 table resampled per call) on
    already-normalised (B, 3, 182, 182) inputs."""
    model = _load_deepfaune(a["ckpt"])
    with torch.no_grad():
        y = model(torch.from_numpy(np.load(a["inputs"])))
    np.save(a["out"], y.numpy())
    return {"shape": list(y.shape)}


def deepfaune_classify(a: dict) -> dict:
    """DeepFaune on MegaDetector boxes: detectTools.py `convertJSONboxToBox` + `cropSquareCVtoPIL`
    (transcribed: DeepFaune is not on PyPI) on the photo read by cv2, then classifTools.py's
    transforms (Resize((182, 182), BICUBIC), ToTensor, Normalize(ImageNet)) and the model."""
    import cv2
    from PIL import Image
    from torchvision import transforms

    model = _load_deepfaune(a["ckpt"])
    transform = transforms.Compose([
        transforms.Resize((182, 182), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ])  # fmt: skip
    out = {}
    for path, boxes in a["boxes"].items():
        image = cv2.imread(path)
        height, width = image.shape[:2]
        crops = []
        for bbox in boxes:
            xmin, ymin = int(bbox[0] * width), int(bbox[1] * height)
            xmax, ymax = xmin + int(bbox[2] * width), ymin + int(bbox[3] * height)
            x1, y1, x2, y2 = xmin, ymin, xmax, ymax
            xsize, ysize = x2 - x1, y2 - y1
            if xsize > ysize:
                y1, y2 = y1 - int((xsize - ysize) / 2), y2 + int((xsize - ysize) / 2)
            if ysize > xsize:
                x1, x2 = x1 - int((ysize - xsize) / 2), x2 + int((ysize - xsize) / 2)
            crop = image[
                max(0, int(y1)) : min(int(y2), height), max(0, int(x1)) : min(int(x2), width)
            ]
            crops.append(transform(Image.fromarray(cv2.cvtColor(crop, cv2.COLOR_BGR2RGB))))
        if not crops:
            out[path] = []
            continue
        with torch.no_grad():
            out[path] = model(torch.stack(crops)).tolist()
    return out


COMMANDS = {f.__name__: f for f in (
    yolov5_save, yolov5_raw, megadetector_detect, ultralytics_save, ultralytics_raw,
    ultralytics_detect, deepfaune_save, deepfaune_raw, deepfaune_classify,
)}  # fmt: skip

if __name__ == "__main__":
    answer = COMMANDS[sys.argv[1]](json.loads(sys.argv[2]))
    sys.stdout.write("\n" + json.dumps(answer) + "\n")
