"""DeepFaune classifier checkpoint -> ONNX at 182 + sidecar for the pipeline.

The checkpoint is `{'args': {...}, 'state_dict': {'base_model.<timm key>': tensor}}`. Only
tensors and plain containers are in it, so once the user trusts it torch's `weights_only`
loader reads it (the allow-list loader is the fallback for an `args` holding other types).
The graph takes `input` (B, 3, 182, 182) float32, ImageNet-normalised, and answers `logits`
(B, 38) in DeepFaune's label order.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch

from trapline.models.contracts import IMAGENET_MEAN, IMAGENET_STD, load_classifier_spec
from trapline.models.importers.checkpoint_loader import load_trusted
from trapline.models.importers.identify import CheckpointError, identify
from trapline.models.importers.megadetector import ImportOptions, ImportResult, require_trust
from trapline.models.importers.onnx_export import check_parity, export_onnx
from trapline.models.importers.vit import (
    KEY_PREFIX,
    DinoV2ViT,
    config_from_state_dict,
    resample_pos_embed,
)
from trapline.models.labels import DEEPFAUNE_LABELS

DEEPFAUNE_SIZE = 182  # DeepFaune's crop side (13 x 13 patches of 14)


def import_deepfaune(
    path: Path,
    out: Path,
    options: ImportOptions,
    *,
    heads: int | None = None,
    labels: tuple[str, ...] | None = None,
) -> ImportResult:
    info = identify(path)
    if info.kind != "deepfaune":
        fix = (
            f"trapline models import megadetector {path}"
            if info.kind.startswith("megadetector")
            else "pass the DeepFaune .pt file (a dict of args and a base_model.* state_dict)"
        )
        raise CheckpointError(f"{path}: not a DeepFaune checkpoint ({info.reason}); {fix}")
    require_trust(info, options.trust, "deepfaune")
    ckpt = _load(path)
    state = {k[len(KEY_PREFIX) :]: v.float() for k, v in ckpt["state_dict"].items()
             if k.startswith(KEY_PREFIX) and not k.endswith("mask_token")}  # fmt: skip
    others = [k for k in ckpt["state_dict"] if not k.startswith(KEY_PREFIX)]
    if others:
        raise CheckpointError(f"{path}: state_dict keys outside {KEY_PREFIX}*: {others[:5]}")
    config = config_from_state_dict(state, heads)
    if config["dim"] % config["heads"]:
        raise CheckpointError(
            f"{path}: width {config['dim']} is not divisible by {config['heads']} heads"
        )
    names = labels or (DEEPFAUNE_LABELS if config["num_classes"] == len(DEEPFAUNE_LABELS) else None)
    if names is None or len(names) != config["num_classes"]:
        raise CheckpointError(
            f"{path}: the head has {config['num_classes']} outputs; pass --labels with one "
            "label per logit (DeepFaune's 38 are the default)"
        )
    side = options.img_size or DEEPFAUNE_SIZE
    grid = side // config["patch"]
    if side % config["patch"]:
        raise CheckpointError(
            f"{path}: input size {side} is not a multiple of the patch {config['patch']}"
        )

    arch = {
        k: config[k]
        for k in ("patch", "dim", "depth", "heads", "hidden", "num_classes", "layer_scale")
    }
    reference = DinoV2ViT(config["trained_grid"] * config["patch"], **arch).eval()
    _load_state(reference, state, path)
    model = DinoV2ViT(side, **arch).eval()
    resampled = dict(state, pos_embed=resample_pos_embed(state["pos_embed"], (grid, grid)))
    _load_state(model, resampled, path)

    export_onnx(model, out, "input", "logits", side)
    parity = check_parity(
        reference.forward_dynamic, out, side, samples=options.samples, batch=options.batch,
        tolerance=options.tolerance, layout=None,
    )  # fmt: skip
    if parity.max_abs_diff > options.tolerance:
        raise CheckpointError(
            f"{out}: ONNX logits differ from the dynamic-size torch model by "
            f"{parity.max_abs_diff:.3g} (> {options.tolerance}); the export is not trustworthy"
        )
    sidecar = {
        "name": options.name or "deepfaune",
        "version": options.version or str(_args(ckpt).get("version", "0")),
        "input_size": side,
        "labels": list(names),
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "architecture": {**arch, "trained_grid": config["trained_grid"], "grid": grid},
        "source": {"file": path.name, "md5": info.md5, "identified_as": info.kind,
                   "why": info.reason, "args": _args(ckpt)},
        "parity": parity.as_dict(),
        "imported_by": "trapline models import deepfaune",
        "licence": "DeepFaune weights: CC BY-SA 4.0",
    }  # fmt: skip
    out.with_suffix(".json").write_text(json.dumps(sidecar, indent=2, default=str) + "\n")
    load_classifier_spec(out)
    return ImportResult(out, sidecar, parity, info)


def _load(path: Path) -> dict:
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # `args` holds a type weights_only refuses
        ckpt = load_trusted(path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(f"{path}: expected a dict with a 'state_dict' dict")
    return ckpt


def _args(ckpt: dict) -> dict:
    args = ckpt.get("args")
    args = vars(args) if hasattr(args, "__dict__") else args
    return (
        {str(k): v for k, v in args.items() if isinstance(v, (str, int, float, bool))}
        if isinstance(args, dict)
        else {}
    )


def _load_state(model: DinoV2ViT, state: dict, path: Path) -> None:
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # a tensor of another shape
        raise CheckpointError(f"{path}: weights do not fit a DINOv2 ViT: {error}") from None
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{path}: not a DINOv2 ViT state_dict: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
