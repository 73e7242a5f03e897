"""The eight blood-cell classes, in BloodMNIST's index order, and the names folders use for them."""

import re

CLASS_NAMES = (
    "basophil",
    "eosinophil",
    "erythroblast",
    "ig",
    "lymphocyte",
    "monocyte",
    "neutrophil",
    "platelet",
)
NUM_CLASSES = len(CLASS_NAMES)

# Spellings met in the PBC release, MedMNIST docs and course folders, after normalisation
# (lower case, separators removed, trailing plural "s" dropped).
_ALIASES = {
    "basophil": 0, "ba": 0,
    "eosinophil": 1, "eo": 1,
    "erythroblast": 2, "erb": 2,
    "ig": 3, "immaturegranulocyte": 3, "immaturegranulocytes": 3, "granulocyte": 3,
    "lymphocyte": 4, "ly": 4,
    "monocyte": 5, "mo": 5,
    "neutrophil": 6, "ne": 6, "sne": 6, "bne": 6,
    "platelet": 7, "thrombocyte": 7, "plt": 7,
}


def _normalise(name: str) -> str:
  key = re.sub(r"[^a-z]", "", name.lower())
  if key.endswith("s") and key[:-1] in _ALIASES:
    key = key[:-1]
  return key


def class_index(folder_name: str) -> int | None:
  """Index of the class a folder name denotes, or None if it names none of them.

  Leading digits such as "0_basophil" or "3-ig" are ignored.
  """
  return _ALIASES.get(_normalise(re.sub(r"^\d+[\s_\-.]*", "", folder_name)))
