import pytest

from bloodcell_jax.classes import CLASS_NAMES, class_index


def test_bloodmnist_order():
  assert CLASS_NAMES == ("basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte",
                         "neutrophil", "platelet")


@pytest.mark.parametrize("name, index", [
    ("basophil", 0), ("Eosinophil", 1), ("ERYTHROBLAST", 2), ("ig", 3), ("IG", 3),
    ("immature_granulocytes", 3), ("Immature Granulocytes", 3), ("lymphocytes", 4), ("monocyte", 5),
    ("neutrophil", 6), ("Neutrophils", 6), ("platelet", 7), ("platelets", 7), ("3_ig", 3), ("0-basophil", 0),
])
def test_folder_names_map_onto_classes(name, index):
  assert class_index(name) == index


@pytest.mark.parametrize("name", ["cells", "unknown", "", "ig2x"])
def test_unknown_folder_names(name):
  assert class_index(name) is None
