import numpy as np
import pytest

from wsjax.evaluate import metrics


def test_model_agrees_with_itself_perfectly():
    z = np.random.default_rng(0).normal(size=(50, 3))
    m = metrics.logit_metrics(z, z)
    assert m == pytest.approx(dict(agreement=1.0, cosine=1.0, pearson=1.0))


def test_class_permuted_copy_never_agrees():
    z = np.random.default_rng(1).normal(size=(50, 3))
    assert metrics.logit_metrics(z, np.roll(z, 1, axis=1))["agreement"] == 0.0


def test_known_cosine_and_pearson():
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    m = metrics.logit_metrics(a, np.array([[1.0, 1.0], [0.0, 3.0]]))
    assert m["cosine"] == pytest.approx((1 / np.sqrt(2) + 1.0) / 2)
    assert metrics.logit_metrics(a, 2 * a + 3)["pearson"] == pytest.approx(1.0)
    assert metrics.logit_metrics(a, -a)["pearson"] == pytest.approx(-1.0)
    assert metrics.logit_metrics(a, -a)["agreement"] == 0.0


def test_accuracy():
    assert metrics.accuracy(np.array([[0, 1], [1, 0]]), np.array([1, 1])) == 0.5
