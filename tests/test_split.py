import numpy as np

from bloodcell_jax.data.split import stratified_split


def test_stratified_split_is_seeded_disjoint_and_proportional():
  labels = np.repeat(np.arange(8), [10, 30, 20, 25, 9, 11, 40, 5])
  train, val = stratified_split(labels, 0.2, seed=3)
  again_train, again_val = stratified_split(labels, 0.2, seed=3)
  np.testing.assert_array_equal(train, again_train)
  np.testing.assert_array_equal(val, again_val)
  assert set(train).isdisjoint(val) and len(train) + len(val) == len(labels)
  val_counts = np.bincount(labels[val], minlength=8)
  np.testing.assert_array_equal(val_counts, [2, 6, 4, 5, 2, 2, 8, 1])
  other_train, _ = stratified_split(labels, 0.2, seed=4)
  assert not np.array_equal(train, other_train)


def test_tiny_classes_keep_one_example_on_each_side():
  labels = np.array([0, 0, 1, 1, 1, 1, 1, 1, 1, 1])
  train, val = stratified_split(labels, 0.1, seed=0)
  assert (labels[val] == 0).sum() == 1 and (labels[train] == 0).sum() == 1
