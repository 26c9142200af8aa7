"""Say what a checkpoint is without unpickling it.

A torch checkpoint is a zip (`<root>/data.pkl` + tensor blobs) or, before torch 1.6, five
pickles then raw storages (told apart as torch.load does: by the zip header at byte 0). Unpickling runs whatever the file names, so identification only *reads* the pickle's
opcode stream (`pickletools.genops`): the modules and classes it would import (GLOBAL /
STACK_GLOBAL) and the strings it holds (dict keys). That, an optional
`megadetector_info.json` inside the zip, and the md5 of known public files are enough:

- MegaDetector v5 / YOLOv5: imports `models.yolo` (the YOLOv5 repository's top-level package);
- MDv1000 / MDv6 and other ultralytics exports: imports `ultralytics.*`;
- DeepFaune: a dict with keys `args` and `state_dict`, the latter's keys `base_model.<timm key>`
  of a ViT (`base_model.patch_embed.proj.weight`, `base_model.blocks.0.attn.qkv.weight`, ...).
"""

from __future__ import annotations

import hashlib
import io
import json
import pickletools
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from trapline.models.importers.pickle_scan import (
    MAX_PICKLE_BYTES,
    ZIP_MAGIC,
    PickleRefused,
    legacy_pickles,
)

Kind = Literal["megadetector-yolov5", "megadetector-ultralytics", "deepfaune", "unknown"]

# md5 of the public MegaDetector releases (from the MegaDetector package's `known_models`
# table, MIT). DeepFaune's release files publish no checksum we could find: they are
# recognised by structure only.
KNOWN_MD5: dict[str, tuple[str, str]] = {
    "ec1d7603ec8cf642d6e0cd008ba2be8c": ("megadetector-v5a", "5a.0.0"),
    "bc235e73f53c5c95e66ea0d1b2cbf542": ("megadetector-v5b", "5b.0.0"),
    "60f8e7ec1308554df258ed1f4040bc4f": ("megadetector-v5a", "5a.0.1"),
    "f17ed6fedfac2e403606a08c89984905": ("megadetector-v5b", "5b.0.1"),
    "74474b3aec9cf1a990da38b37ddf9197": ("megadetector-v1000-redwood", "1000.0.0"),
    "1c9d1d2b3ba54931881471fdd508e6f2": ("megadetector-v1000-spruce", "1000.0.0"),
    "cab94ebd190c2278e12fb70ffd548b6d": ("megadetector-v1000-larch", "1000.0.0"),
    "3d6472c9b95ba687b59ebe255f7c576b": ("megadetector-v1000-cedar", "1000.0.0"),
    "4339a2c8af7a381f18ded7ac2a4df03e": ("megadetector-v1000-sorrel", "1000.0.0"),
}
MD_INFO = "megadetector_info.json"
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING",
               "BINSTRING", "STRING"}  # fmt: skip


class CheckpointError(ValueError):
    """The file is not a checkpoint we can read; the message names the file and the fix."""


@dataclass
class CheckpointInfo:
    path: Path
    kind: Kind
    md5: str
    reason: str  # why this kind, in words
    globals: set[tuple[str, str]] = field(default_factory=set)  # (module, name) it would import
    strings: set[str] = field(default_factory=set)
    known_name: str | None = None  # from KNOWN_MD5
    known_version: str | None = None
    metadata: dict = field(default_factory=dict)  # megadetector_info.json, if present

    @property
    def modules(self) -> set[str]:
        return {m for m, _ in self.globals}


def md5sum(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def scan_pickle(data: bytes) -> tuple[set[tuple[str, str]], set[str]]:
    """(module, name) pairs a pickle would import, and the strings in it; nothing is executed.

    STACK_GLOBAL takes its two names from the stack, where they were pushed as strings or
    fetched from the memo; a small emulation of those two is enough to recover them.
    """
    found: set[tuple[str, str]] = set()
    strings: set[str] = set()
    recent: list[str | None] = []
    memo: dict[int, str | None] = {}
    stream = io.BytesIO(data)
    while stream.tell() < len(data):
        try:
            ops = list(pickletools.genops(stream))
        except Exception as error:  # a truncated or foreign file
            raise CheckpointError(f"not a readable pickle stream: {error}") from None
        for op, arg, _ in ops:
            name = op.name
            if name in _STRING_OPS:
                value = arg.decode("latin-1") if isinstance(arg, bytes) else str(arg)
                strings.add(value)
                recent.append(value)
            elif name == "MEMOIZE":
                memo[len(memo)] = recent[-1] if recent else None
            elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
                memo[int(arg)] = recent[-1] if recent else None
            elif name in ("BINGET", "LONG_BINGET", "GET"):
                recent.append(memo.get(int(arg)))
            elif name == "GLOBAL":
                module, _, attr = str(arg).partition(" ")
                found.add((module, attr))
            elif name == "STACK_GLOBAL":
                if len(recent) >= 2 and recent[-2] is not None and recent[-1] is not None:
                    found.add((recent[-2], recent[-1]))  # type: ignore[arg-type]
            else:
                recent.append(None)
            recent = recent[-4:]
        if not ops:
            break
    return found, strings


def identify(path: Path) -> CheckpointInfo:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    md5 = md5sum(path)
    metadata: dict = {}
    with path.open("rb") as f:
        head = f.read(4)
    if head == ZIP_MAGIC:  # torch's own test: a zip is what starts with a local header
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
            if not pickles:
                raise CheckpointError(
                    f"{path}: a zip without data.pkl is not a torch checkpoint "
                    "(pass the .pt file that torch.save wrote)"
                )
            if archive.getinfo(pickles[0]).file_size > MAX_PICKLE_BYTES:
                raise CheckpointError(
                    f"{path}: {pickles[0]} unpacks to more than {MAX_PICKLE_BYTES:,} bytes "
                    "(tensors are stored beside the pickle; this is no torch checkpoint)"
                )
            data = archive.read(pickles[0])
            info = [n for n in names if n.endswith("/" + MD_INFO) or n == MD_INFO]
            if info:
                try:
                    metadata = json.loads(archive.read(info[0]))
                except ValueError:
                    metadata = {}
    else:  # torch < 1.6: five pickles, then raw storages
        try:
            data = b"".join(chunk for _, chunk in legacy_pickles(path.read_bytes()))
        except PickleRefused as error:
            raise CheckpointError(f"{path}: {error} (is it a torch .pt checkpoint?)") from None
    try:
        found, strings = scan_pickle(data)
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error} (is it a torch .pt checkpoint?)") from None
    known = KNOWN_MD5.get(md5)
    kind, reason = _classify(found, strings, metadata, known)
    return CheckpointInfo(path, kind, md5, reason, found, strings,
                          known[0] if known else None, known[1] if known else None, metadata)  # fmt: skip


def _classify(
    found: set[tuple[str, str]], strings: set[str], metadata: dict, known: tuple | None
) -> tuple[Kind, str]:
    modules = {m for m, _ in found}
    model_type = str(metadata.get("model_type", "")).lower()
    if known and "v5" in known[0]:
        return "megadetector-yolov5", f"md5 of the public {known[0]} {known[1]} release"
    if model_type == "yolov5" or any(m in ("models.yolo", "yolov5.models.yolo") for m in modules):
        return "megadetector-yolov5", "pickle imports the YOLOv5 repository's models.yolo"
    if model_type == "ultralytics" or any(m.startswith("ultralytics.") for m in modules):
        return "megadetector-ultralytics", "pickle imports ultralytics.* (MDv1000/MDv6 layout)"
    vit_keys = {
        "base_model.patch_embed.proj.weight",
        "base_model.cls_token",
        "base_model.pos_embed",
    }
    if {"args", "state_dict"} <= strings and vit_keys <= strings:
        return "deepfaune", "dict of args + state_dict with base_model.* ViT keys"
    if known:
        return "megadetector-ultralytics", f"md5 of the public {known[0]} release"
    return "unknown", "no YOLOv5, ultralytics or DeepFaune structure found"
