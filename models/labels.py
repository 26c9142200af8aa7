"""The DeepFaune classifier's 38 classes, in the order of its output logits.

The order is the model's contract: logit i means `DEEPFAUNE_LABELS[i]`. Scientific names and
ranks are what the Camtrap DP export writes as `scientificName`.
"""

DEEPFAUNE_LABELS: tuple[str, ...] = (
    "bison", "badger", "ibex", "beaver", "red deer", "golden jackal", "chamois", "cat", "goat",
    "roe deer", "dog", "raccoon dog", "fallow deer", "squirrel", "moose", "equid", "genet",
    "wolverine", "hedgehog", "lagomorph", "wolf", "otter", "lynx", "marmot", "micromammal",
    "mouflon", "sheep", "mustelid", "bird", "bear", "porcupine", "nutria", "muskrat", "raccoon",
    "fox", "reindeer", "wild boar", "cow",
)  # fmt: skip

SCIENTIFIC_NAMES: dict[str, str] = {
    "bison": "Bison bonasus",
    "badger": "Meles meles",
    "ibex": "Capra ibex",
    "beaver": "Castor fiber",
    "red deer": "Cervus elaphus",
    "golden jackal": "Canis aureus",
    "chamois": "Rupicapra rupicapra",
    "cat": "Felis catus",
    "goat": "Capra hircus",
    "roe deer": "Capreolus capreolus",
    "dog": "Canis familiaris",
    "raccoon dog": "Nyctereutes procyonoides",
    "fallow deer": "Dama dama",
    "squirrel": "Sciurus vulgaris",
    "moose": "Alces alces",
    "equid": "Equidae",
    "genet": "Genetta genetta",
    "wolverine": "Gulo gulo",
    "hedgehog": "Erinaceus europaeus",
    "lagomorph": "Lagomorpha",
    "wolf": "Canis lupus",
    "otter": "Lutra lutra",
    "lynx": "Lynx lynx",
    "marmot": "Marmota marmota",
    "micromammal": "Rodentia",
    "mouflon": "Ovis gmelini",
    "sheep": "Ovis aries",
    "mustelid": "Mustelidae",
    "bird": "Aves",
    "bear": "Ursus arctos",
    "porcupine": "Hystrix cristata",
    "nutria": "Myocastor coypus",
    "muskrat": "Ondatra zibethicus",
    "raccoon": "Procyon lotor",
    "fox": "Vulpes vulpes",
    "reindeer": "Rangifer tarandus",
    "wild boar": "Sus scrofa",
    "cow": "Bos taurus",
}

DETECTOR_CLASSES: tuple[str, ...] = ("animal", "person", "vehicle")
"""MegaDetector categories; its JSON numbers them "1", "2", "3" in this order."""
