"""comparisons/accuracy_ceiling.py: the over-dispersion test of the detection counts (negative binomial
against Poisson) is exact and tells the two apart on simulated counts; the frame-Jaccard decision
threshold it uses is where keeping a category starts to pay (brute force)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import gammaln
from scipy.stats import nbinom

from conftest import comparison_script


@pytest.fixture(scope="module")
def mod():
    return comparison_script("accuracy_ceiling")


def test_negbin_loglik_is_scipys_negative_binomial(mod):
    """At the fitted (a, r) the log likelihood is scipy's negative binomial (n = a, p = b / (b + e)) plus the
    ``log n! - n log e`` that both models leave out: exact to float rounding."""
    rng = np.random.default_rng(0)
    e = rng.integers(5, 20, size=200).astype(float)
    n = rng.poisson(rng.gamma(2.0, 0.1 / 2.0, size=200) * e).astype(float)
    fit = mod.negbin_fit(n, e)
    a, r = fit["a"], fit["r"]
    b = a / r
    ref = (nbinom.logpmf(n, a, b / (b + e)) + gammaln(n + 1) - n * np.log(e)).sum()
    assert fit["loglik"] == pytest.approx(ref, abs=1e-8)
    # the Poisson limit is nested: the negative binomial never fits worse (optimiser tolerance 1e-6)
    assert fit["gain"] >= -1e-6
    assert fit["poisson_r"] == pytest.approx(n.sum() / e.sum(), rel=1e-12)


def test_negbin_tells_poisson_from_over_dispersed_counts(mod):
    """2000 simulated objects with 12 visible frames each. Poisson counts (r = 0.05, the ground-truth bowl rate
    of the RetinaNet file): the fit finds no over-dispersion worth the name (a gain under 4 nats: under the
Poisson null, 2 x gain follows the 50:50 mixture of 0 and chi2(1), which exceeds 8 with probability 0.0023). Gamma-Poisson
    counts with a = 0.5 (half of the objects almost never detected): a within 0.3-0.8 (the sampling spread
    of a at this size is about 0.1) and a gain of hundreds of nats."""
    rng = np.random.default_rng(1)
    e = np.full(2000, 12.0)
    pois = mod.negbin_fit(rng.poisson(0.05 * e).astype(float), e)
    assert pois["gain"] < 4.0
    assert pois["r"] == pytest.approx(0.05, rel=0.15)           # 1200 frames x 0.05: about 10% sampling error
    over = mod.negbin_fit(rng.poisson(rng.gamma(0.5, 0.3 / 0.5, size=2000) * e).astype(float), e)
    assert 0.3 < over["a"] < 0.8
    assert over["gain"] > 100
    assert over["r"] == pytest.approx(0.3, rel=0.15)


def test_jaccard_threshold_is_where_keeping_pays(mod):
    """Brute force over small frames: with the other categories at intersection I and union U, predicting one
    more category of probability pi raises the expected Jaccard exactly when pi exceeds the threshold."""
    for inter, union in ((1, 1), (1, 2), (2, 3), (0, 2), (3, 4)):
        pi0 = mod.jaccard_threshold(inter, union)
        for pi in (pi0 - 0.01, pi0 + 0.01):
            if not 0 <= pi <= 1:
                continue
            keep = pi * (inter + 1) / (union + 1) + (1 - pi) * inter / (union + 1)
            drop = pi * inter / (union + 1) + (1 - pi) * inter / union
            assert (keep > drop) == (pi > pi0), (inter, union, pi)
    assert mod.jaccard_threshold(1, 1) == 0.5           # a perfect frame: keep only the more likely than not
    assert mod.jaccard_threshold(0, 2) == 0.0           # nothing right: anything helps
