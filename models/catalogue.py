"""The known public releases of the models Trapline imports: one place, read by `models fetch`.

Why a catalogue: `trapline models fetch NAME` and `--detector NAME` / `--classifier NAME` must
know, for each release, where its publisher serves the file, how to check that the bytes are
the publisher's, what licence the weights carry, and what the importer needs to know that the
file itself does not say (DeepFaune's class order, the trained input size). It is a Python
module rather than a JSON file so that it ships with the package without packaging rules.

Checksums. A checksum here is one the *publisher* published, never one computed by us from a
download: a file can only be trusted as "the publisher's" against the publisher's own word.
MegaDetector publishes md5 sums (the `known_models` table of its Python package,
`megadetector/detection/run_detector.py`, MIT); no sha256 was found. DeepFaune publishes no
checksum at all (its download server is a plain directory listing), so its entries have none:
`models fetch` then prints the sha256 it computed and imports only when the user passes it back
with `--sha256` after checking it against a source they trust. An md5 published before the file
was can still identify it: forging a different file with the same md5 (a second preimage) is
not feasible, only making two colliding files at once is.

Class lists. DeepFaune's class order is that of `txt_animalclasses['en']` in the release's
`classifTools.py` (the logits follow it). Sources are named per release; every release so far
keeps the French names in alphabetical order, which is how the v1.2 list was cross-checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from trapline.models.labels import DEEPFAUNE_LABELS, DETECTOR_CLASSES

Importer = Literal["megadetector", "deepfaune"]

MD_RELEASES = "https://github.com/agentmorris/MegaDetector/releases/download"
MD_MD5_SOURCE = (
    "md5 published by MegaDetector (known_models in megadetector/detection/run_detector.py)"
)
MD_LICENCE = (
    "MegaDetector repository: MIT; MegaDetector's own inference code for this architecture: {}"
)
DF_DOWNLOADS = "https://pbil.univ-lyon1.fr/software/download/deepfaune"
DF_NO_CHECKSUM = "DeepFaune publishes no checksum (plain directory listing on pbil.univ-lyon1.fr)"
DF_LICENCE = (
    "CC BY-SA 4.0 (DeepFaune README; it also says commercial use of any element of DeepFaune is "
    "forbidden: ask the authors before commercial use)"
)


@dataclass(frozen=True)
class Release:
    """One published model file and what importing it needs."""

    name: str  # what users type: `trapline models fetch NAME`, `--detector NAME`
    kind: Literal["detector", "classifier"]
    version: str  # the publisher's version; it goes into every result row
    file: str  # the publisher's file name (kept in the cache under that name)
    url: str  # the official location
    sha256: str | None  # published sha256 (hex), None if the publisher publishes none
    md5: str | None  # published md5 (hex), None if the publisher publishes none
    checksum_source: str  # where the checksum was published, or why there is none
    licence: str  # of the weights (an exported ONNX file keeps it)
    classes: tuple[str, ...]  # detector: category per class column; classifier: label per logit
    classes_source: str  # where the class list comes from
    input_size: int  # side the model was trained at and is exported at
    importer: Importer | None  # None: not importable here (see `unsupported`)
    unsupported: str = ""  # why it cannot be imported, and what to do instead

    @property
    def verified_by(self) -> str | None:
        """Which published checksum a download is checked against (None: none published)."""
        return "sha256" if self.sha256 else "md5" if self.md5 else None


def _md(name: str, version: str, file: str, md5: str, size: int, licence: str) -> Release:
    tag = "v5.0" if version.startswith("5") else "v1000.0"
    return Release(
        name=name, kind="detector", version=version, file=file, url=f"{MD_RELEASES}/{tag}/{file}",
        sha256=None, md5=md5, checksum_source=MD_MD5_SOURCE, licence=MD_LICENCE.format(licence),
        classes=DETECTOR_CLASSES, classes_source="MegaDetector categories 1 animal, 2 person, "
        "3 vehicle", input_size=size, importer="megadetector",
    )  # fmt: skip


def _df(version: str, file: str, classes: tuple[str, ...], source: str) -> Release:
    return Release(
        name=f"deepfaune-v{version}", kind="classifier", version=version, file=file,
        url=f"{DF_DOWNLOADS}/v{version}/{file}", sha256=None, md5=None,
        checksum_source=DF_NO_CHECKSUM, licence=DF_LICENCE, classes=classes,
        classes_source=source, input_size=182, importer="deepfaune",
    )  # fmt: skip


DEEPFAUNE_V1_1 = (
    "badger", "ibex", "red deer", "chamois", "cat", "goat", "roe deer", "dog", "squirrel",
    "equid", "genet", "hedgehog", "lagomorph", "wolf", "lynx", "marmot", "micromammal",
    "mouflon", "sheep", "mustelid", "bird", "bear", "nutria", "fox", "wild boar", "cow",
)  # fmt: skip
DEEPFAUNE_V1_2 = (
    "badger", "ibex", "beaver", "red deer", "chamois", "cat", "goat", "roe deer", "dog",
    "fallow deer", "squirrel", "equid", "genet", "hedgehog", "lagomorph", "wolf", "otter", "lynx",
    "marmot", "micromammal", "mouflon", "sheep", "mustelid", "bird", "bear", "nutria", "raccoon",
    "fox", "wild boar", "cow",
)  # fmt: skip
DEEPFAUNE_V1_3 = (
    "bison", "badger", "ibex", "beaver", "red deer", "chamois", "cat", "goat", "roe deer", "dog",
    "fallow deer", "squirrel", "moose", "equid", "genet", "wolverine", "hedgehog", "lagomorph",
    "wolf", "otter", "lynx", "marmot", "micromammal", "mouflon", "sheep", "mustelid", "bird",
    "bear", "nutria", "raccoon", "fox", "reindeer", "wild boar", "cow",
)  # fmt: skip
DEEPFAUNE_V1_5 = (
    "bison", "badger", "ibex", "beaver", "red deer", "golden jackal", "chamois", "cat", "goat",
    "roe deer", "dog", "raccoon dog", "fallow deer", "squirrel", "moose", "equid", "genet",
    "wolverine", "hedgehog", "lagomorph", "wolf", "otter", "lynx", "mongoose", "marmot",
    "micromammal", "mouflon", "sheep", "mustelid", "bird", "bear", "porcupine", "nutria",
    "muskrat", "raccoon", "fox", "arctic fox", "reindeer", "wild boar", "cow",
)  # fmt: skip
_DINOV2 = "vit_large_patch14_dinov2.lvd142m"

RELEASES: dict[str, Release] = {r.name: r for r in (
    # MegaDetector v5 (YOLOv5x6, 1280). The .0.1 files are the .0.0 weights re-released with
    # metadata; MegaDetector's own default is v5a.0.1.
    _md("mdv5a", "5a.0.1", "md_v5a.0.1.pt", "60f8e7ec1308554df258ed1f4040bc4f", 1280, "GPL"),
    _md("mdv5b", "5b.0.1", "md_v5b.0.1.pt", "f17ed6fedfac2e403606a08c89984905", 1280, "GPL"),
    _md("mdv5a.0.0", "5a.0.0", "md_v5a.0.0.pt", "ec1d7603ec8cf642d6e0cd008ba2be8c", 1280, "GPL"),
    _md("mdv5b.0.0", "5b.0.0", "md_v5b.0.0.pt", "bc235e73f53c5c95e66ea0d1b2cbf542", 1280, "GPL"),
    # MegaDetector v1000 (July 2025 release notes: architecture, input size, licence column).
    _md("mdv1000-redwood", "1000.0.0-redwood", "md_v1000.0.0-redwood.pt",
        "74474b3aec9cf1a990da38b37ddf9197", 1280, "GPL (YOLOv5x6)"),
    _md("mdv1000-cedar", "1000.0.0-cedar", "md_v1000.0.0-cedar.pt",
        "3d6472c9b95ba687b59ebe255f7c576b", 640, "GPL (YOLOv9c)"),
    _md("mdv1000-larch", "1000.0.0-larch", "md_v1000.0.0-larch.pt",
        "cab94ebd190c2278e12fb70ffd548b6d", 640, "AGPL (YOLO11L)"),
    _md("mdv1000-sorrel", "1000.0.0-sorrel", "md_v1000.0.0-sorrel.pt",
        "4339a2c8af7a381f18ded7ac2a4df03e", 960, "AGPL (YOLO11s)"),
    _md("mdv1000-spruce", "1000.0.0-spruce", "md_v1000.0.0-spruce.pt",
        "1c9d1d2b3ba54931881471fdd508e6f2", 640, "GPL (YOLOv5s)"),
    # DeepFaune classifiers (DINOv2 ViT-L/14, 182 px crops) ...
    _df("1.1", f"deepfaune-{_DINOV2}.pt", DEEPFAUNE_V1_1,
        "classifTools.py of v1.1 (first DINOv2 release, January 2024), 26 classes"),
    _df("1.2", f"deepfaune-{_DINOV2}.v2.pt", DEEPFAUNE_V1_2,
        "v1.2 README (30 categories: v1.1's plus beaver, fallow deer, otter, raccoon) and code "
        "loading the .v2.pt file; order = French names alphabetical, as in every release"),
    _df("1.3", f"deepfaune-{_DINOV2}.v3.pt", DEEPFAUNE_V1_3,
        "classifTools.py of v1.3 (as copied into Pytorch-Wildlife's DeepfauneClassifier), 34 "
        "classes: v1.2's plus bison, moose, reindeer, wolverine"),
    _df("1.4", f"deepfaune-{_DINOV2}.v4.pt", DEEPFAUNE_LABELS,
        "classifTools.py of v1.4, 38 classes: v1.3's plus golden jackal, raccoon dog, "
        "porcupine, muskrat"),
    # ... and v1.5, a different backbone.
    Release(
        name="deepfaune-v1.5", kind="classifier", version="1.5",
        file="deepfaune-vit_large_patch16_dinov3.lvd1689m.pt",
        url=f"{DF_DOWNLOADS}/v1.5/deepfaune-vit_large_patch16_dinov3.lvd1689m.pt",
        sha256=None, md5=None, checksum_source=DF_NO_CHECKSUM, licence=DF_LICENCE,
        classes=DEEPFAUNE_V1_5, classes_source="classifTools.py of v1.5, 40 classes: v1.4's "
        "plus mongoose, arctic fox", input_size=224, importer=None,
        unsupported="DeepFaune v1.5 is a DINOv3 ViT-L/16 (timm vit_large_patch16_dinov3, "
        "rotary position embeddings, register tokens, class-token pooling) at 224 px; the "
        "importer rebuilds DINOv2 ViTs only. Use deepfaune-v1.4, or export v1.5 with timm "
        "(global_pool='token', img_size=224) and write a sidecar with input_size 224 and its "
        "40 labels",
    ),
)}  # fmt: skip

ALIASES: dict[str, str] = {
    "megadetector": "mdv5a",  # MegaDetector's own default
    "deepfaune": "deepfaune-v1.4",  # the newest DeepFaune release the importer can rebuild
}


class UnknownRelease(KeyError):
    """A name that is neither a catalogue entry nor an alias."""

    def __str__(self) -> str:
        return str(self.args[0])


def release(name: str) -> Release:
    """The release called `name` (or an alias of it); the error lists the names there are."""
    key = ALIASES.get(name, name)
    if key not in RELEASES:
        known = ", ".join(sorted(RELEASES) + sorted(ALIASES))
        raise UnknownRelease(f"no model called {name!r} in the catalogue; known: {known}")
    return RELEASES[key]


def is_release_name(text: str) -> bool:
    return text in RELEASES or text in ALIASES


def deepfaune_by_classes(count: int) -> list[Release]:
    """The importable DeepFaune releases whose head has `count` outputs."""
    return [r for r in RELEASES.values()
            if r.importer == "deepfaune" and len(r.classes) == count]  # fmt: skip


def deepfaune_by_version(version: str) -> Release | None:
    """The DeepFaune release with this version ("1.3", "v1.3" or "1.3.0"), if known."""
    v = version.removeprefix("v")
    for r in RELEASES.values():
        if r.name.startswith("deepfaune-") and v in (r.version, r.version + ".0"):
            return r
    return None
