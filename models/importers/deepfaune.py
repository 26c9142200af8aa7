"""DeepFaune classifier checkpoint -> ONNX at 182 + sidecar for the pipeline.

The checkpoint is `{'args': {...}, 'state_dict': {'base_model.<timm key>': tensor}}`. Only
tensors and plain containers are in it, so once the user trusts it torch's `weights_only`
loader reads it (the allow-list loader is the fallback for an `args` holding other types).
The graph takes `input` (B, 3, 182, 182) float32, ImageNet-normalised, and answers `logits`
(B, C) in the release's label order.

DeepFaune releases differ in their class list (v1.1: 26, v1.2: 30, v1.3: 34, v1.4: 38) and the
file does not name its classes, only their count (`args['num_classes']`, the head's rows). The
labels therefore come from `--labels`, else the release named by `--release`, else the one
release whose head has that many outputs (`models/catalogue.py`); a head that matches no known
release is refused, since guessed labels would be wrong species in every row.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch

from trapline.models import catalogue
from trapline.models.catalogue import RELEASES, Release, deepfaune_by_classes, deepfaune_by_version
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

DEEPFAUNE_SIZE = 182  # DeepFaune's crop side (13 x 13 patches of 14)


def import_deepfaune(
    path: Path,
    out: Path,
    options: ImportOptions,
    *,
    heads: int | None = None,
    labels: tuple[str, ...] | None = None,
    release: str | None = None,
) -> ImportResult:
    info = identify(path)
    if any("dinov3" in s for s in info.strings):  # DeepFaune v1.5's backbone, by its timm name
        raise CheckpointError(f"{path}: {catalogue.release('deepfaune-v1.5').unsupported}")
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
    names, known, why = pick_labels(path, config["num_classes"], labels, release)
    side = options.img_size or (known.input_size if known else DEEPFAUNE_SIZE)
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
        "version": options.version or (known.version if known else None)
        or str(_args(ckpt).get("version", "0")),
        "input_size": side,
        "labels": list(names),
        "release": known.name if known else None,
        "labels_from": why,
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


def pick_labels(
    path: Path, count: int, labels: tuple[str, ...] | None, release: str | None
) -> tuple[tuple[str, ...], Release | None, str]:
    """Labels for a head of `count` outputs: (labels, the release they are from, why)."""
    known = None
    if release:
        known = deepfaune_by_version(release)
        if known is None:
            raise CheckpointError(f"{path}: no DeepFaune release {release!r} in the catalogue; "
                                  f"known: {_known_heads()}")  # fmt: skip
        if known.importer is None:
            raise CheckpointError(f"{path}: {known.unsupported}")
    if labels is not None:
        if len(labels) != count:
            raise CheckpointError(f"{path}: the head has {count} outputs but --labels gives "
                                  f"{len(labels)}; pass one label per logit, in logit order")  # fmt: skip
        return labels, known, "--labels"
    if known is not None:
        if len(known.classes) != count:
            raise CheckpointError(
                f"{path}: the head has {count} outputs but DeepFaune v{known.version} has "
                f"{len(known.classes)} classes; is this the v{known.version} file? Known heads: "
                f"{_known_heads()}; or pass --labels"
            )
        return known.classes, known, f"--release {known.version}"
    matches = deepfaune_by_classes(count)
    if len(matches) == 1:
        return (
            matches[0].classes,
            matches[0],
            f"head size {count} = DeepFaune v{matches[0].version}",
        )
    which = " or ".join(f"v{r.version}" for r in matches) or "no known release"
    raise CheckpointError(
        f"{path}: the head has {count} outputs, which fits {which} ({_known_heads()}); pass "
        "--release VERSION, or --labels FILE.json with one label per logit"
    )


def _known_heads() -> str:
    """What each importable release's head holds: "v1.1: 26, v1.2: 30, ... classes"."""
    found = [r for r in RELEASES.values() if r.importer == "deepfaune"]
    return ", ".join(f"v{r.version}: {len(r.classes)}" for r in found) + " classes"


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
