"""Tests for jaxtune.search: ask/tell searchers (grid, random, quasirandom, bayes)."""

from __future__ import annotations

import importlib.util
import math
import warnings

import numpy as np
import pytest

from jaxtune.search import (
    SEARCHERS,
    BayesSearcher,
    GridSearcher,
    QuasiRandomSearcher,
    RandomSearcher,
    config_key,
    config_to_point,
    make_searcher,
    point_to_config,
)
from jaxtune.search.basic import _HaltonStream
from jaxtune.search.bayes import _GPPosterior
from jaxtune.space import Choice, Int, Real, Space


def mixed_space() -> Space:
    return Space(
        lr=Real(1e-4, 1e-1, log=True),
        depth=Int(1, 6),
        batch=Int(16, 512, log=True),
        sched=Choice(["cosine", "linear", "constant"]),
        width=Choice([32, 64, 128], static=True),
    )


def loss_fn(c: dict) -> float:
    return (
        (math.log10(c["lr"]) + 2.5) ** 2
        + 0.05 * (c["depth"] - 3) ** 2
        + 0.1 * (math.log2(c["batch"]) - 6) ** 2
        + 0.3 * (c["sched"] != "cosine")
        + abs(c["width"] - 64) / 64
    )


FACTORIES = {
    "grid": lambda sp, seed: GridSearcher(sp, resolution=3, seed=seed),
    "random": lambda sp, seed: RandomSearcher(sp, seed=seed),
    "quasirandom": lambda sp, seed: QuasiRandomSearcher(sp, seed=seed),
    "bayes_gp": lambda sp, seed: BayesSearcher(sp, seed=seed, n_initial=8, n_candidates=256),
    "bayes_rf": lambda sp, seed: BayesSearcher(sp, seed=seed, surrogate="RF", n_initial=8,
                                               n_candidates=256),
    "bayes_et_hedge": lambda sp, seed: BayesSearcher(sp, seed=seed, surrogate="ET",
                                                     acquisition="gp_hedge", n_initial=8,
                                                     n_candidates=256),
}


def run_session(searcher, rounds=(8, 8, 6), leave_pending=True):
    """Asks/tells a few rounds (the last batch stays pending); returns all proposals."""
    proposals = []
    for i, q in enumerate(rounds):
        batch = searcher.ask(q)
        proposals.extend(batch)
        if leave_pending and i == len(rounds) - 1:
            break
        searcher.tell(batch, [loss_fn(c) for c in batch])
    return proposals


@pytest.mark.parametrize("kind", list(FACTORIES))
def test_valid_unique_typed(kind):
    space = mixed_space()
    s = FACTORIES[kind](space, 0)
    props = run_session(s)
    props += s.ask(5)  # after a pending batch
    assert len(props) == 27
    keys = [config_key(space, c) for c in props]
    assert len(set(keys)) == len(keys), "a config was proposed twice"
    for c in props:
        assert space.validate(c) == c
        assert type(c["lr"]) is float
        assert type(c["depth"]) is int and type(c["batch"]) is int
        assert type(c["width"]) is int and type(c["sched"]) is str
    assert s.last_ask_s >= 0.0
    assert len(s.pending) == 11


@pytest.mark.parametrize("kind", list(FACTORIES))
def test_deterministic_by_seed(kind):
    space = mixed_space()
    a = run_session(FACTORIES[kind](space, 3), rounds=(8, 6))
    b = run_session(FACTORIES[kind](space, 3), rounds=(8, 6))
    assert a == b
    if kind != "grid":
        assert FACTORIES[kind](space, 4).ask(8) != a[:8]


@pytest.mark.parametrize("kind", list(FACTORIES))
def test_resume_from_history(kind):
    space = mixed_space()
    history = RandomSearcher(space, seed=11).ask(20)
    losses = [loss_fn(c) for c in history]
    losses[3] = None
    losses[5] = float("nan")
    s = FACTORIES[kind](space, 0)
    s.tell(history, losses)  # never asked: fine
    assert s.n_told == 20
    new = s.ask(10)
    assert len(new) == 10
    seen = {config_key(space, c) for c in history}
    assert not seen & {config_key(space, c) for c in new}
    for c in new:
        space.validate(c)


@pytest.mark.parametrize("cls", [RandomSearcher, QuasiRandomSearcher, BayesSearcher])
def test_finite_space_is_exhausted(cls):
    space = Space(a=Choice(["x", "y", "z"]), b=Int(1, 2))
    s = cls(space, seed=0)
    first = s.ask(4)
    s.tell(first, [1.0, 2.0, 3.0, 4.0])
    rest = s.ask(10)
    assert len(first) == 4 and len(rest) == 2
    assert len({config_key(space, c) for c in first + rest}) == 6
    assert s.ask(3) == []


def test_tell_validates():
    space = mixed_space()
    s = RandomSearcher(space)
    c = s.ask(1)
    with pytest.raises(ValueError, match="2 losses"):
        s.tell(c, [1.0, 2.0])
    with pytest.raises(ValueError, match="lr"):
        s.tell([{**c[0], "lr": 5.0}], [1.0])
    with pytest.raises(ValueError, match="loss"):
        s.tell(c, ["bad"])
    with pytest.raises(ValueError):
        s.ask(-1)


# -- sub-space asks ------------------------------------------------------------------------
def bucket(space: Space) -> Space:
    """One static bucket, some traced dimensions narrowed."""
    return space.subspace(width=64, lr=Real(1e-4, 1e-2, log=True), depth=Int(2, 4),
                          sched=Choice(["linear", "constant"]))


@pytest.mark.parametrize("kind", list(FACTORIES))
def test_within_proposals_lie_in_subspace(kind):
    space = mixed_space()
    sub = bucket(space)
    s = FACTORIES[kind](space, 0)
    first = s.ask(8)
    s.tell(first, [loss_fn(c) for c in first])
    inside = s.ask(10, within=sub)
    pending = s.ask(5, within=sub)  # after a pending batch inside the same subspace
    s.tell(inside, [loss_fn(c) for c in inside])
    more = s.ask(6, within=sub)  # Bayes: a fitted model by now
    whole = s.ask(4)
    got = inside + pending + more
    assert len(got) == 21 and len(whole) == 4
    assert all(sub.contains(c) for c in got), [c for c in got if not sub.contains(c)]
    keys = [config_key(space, c) for c in first + got + whole]
    assert len(set(keys)) == len(keys), "a config was proposed twice"
    for c in got:
        assert space.validate(c) == c
        assert type(c["lr"]) is float and type(c["depth"]) is int and type(c["width"]) is int
    assert len(s.pending) == 5 + 6 + 4


@pytest.mark.parametrize("kind", list(FACTORIES))
def test_within_deterministic_by_seed(kind):
    space = mixed_space()

    def session(seed):
        s = FACTORIES[kind](space, seed)
        a = s.ask(8)
        s.tell(a, [loss_fn(c) for c in a])
        return a + s.ask(6, within=bucket(space)) + s.ask(3)

    assert session(5) == session(5)


@pytest.mark.parametrize("cls", [GridSearcher, RandomSearcher, QuasiRandomSearcher,
                                 BayesSearcher])
def test_within_finite_subspace_is_exhausted(cls):
    space = Space(a=Choice(["x", "y", "z"]), b=Int(1, 4), c=Choice([0.1, 0.2]))
    sub = space.subspace(a=Choice(["x", "z"]), b=Int(2, 3), c=0.2)
    s = cls(space, seed=0)
    s.tell([{"a": "x", "b": 2, "c": 0.2}, {"a": "y", "b": 1, "c": 0.1}], [1.0, 2.0])
    got = s.ask(10, within=sub)
    assert len(got) == 3 and all(sub.contains(c) for c in got)
    assert {"a": "x", "b": 2, "c": 0.2} not in got
    assert s.ask(2, within=sub) == []
    assert len(s.ask(30)) == 24 - 2 - 3  # the rest of the space is still there


def test_within_must_be_a_subspace():
    space = mixed_space()
    s = RandomSearcher(space)
    with pytest.raises(ValueError, match="hyperparameters"):
        s.ask(2, within=Space(lr=Real(1e-3, 1e-2, log=True)))
    wider = Space({**dict(space.items()), "lr": Real(1e-5, 1e-1, log=True)})
    with pytest.raises(ValueError, match=r"'lr'.*not inside"):
        s.ask(2, within=wider)
    with pytest.raises(ValueError, match="Space"):
        s.ask(2, within={"lr": 0.01})
    reordered = Space(dict(reversed(list(bucket(space).items()))))
    assert all(bucket(space).contains(c) for c in s.ask(3, within=reordered))

    class WholeSpaceOnly(RandomSearcher):  # a subclass with the one-argument hook
        def _propose(self, n):
            return super()._propose(n)

    assert len(WholeSpaceOnly(space).ask(2)) == 2
    with pytest.raises(TypeError, match="does not support ask"):
        WholeSpaceOnly(space).ask(2, within=bucket(space))


def test_grid_within_filters_the_product_in_grid_order():
    space = Space(opt=Choice(["adam", "sgd"]), depth=Int(1, 3), lr=Real(1e-3, 1e-1, log=True))
    s = GridSearcher(space, resolution=3)
    sub = space.subspace(opt="sgd", lr=Real(1e-2, 1e-1, log=True))
    got = s.ask(10, within=sub)
    full = [c for c in GridSearcher(space, resolution=3).ask(100) if sub.contains(c)]
    assert got == full and len(got) == 3 * 2
    # the whole-space order is not consumed by the sub-space ask; taken points are skipped
    rest = s.ask(100)
    assert rest[0] == {"opt": "adam", "depth": 1, "lr": 1e-3} and len(rest) == 18 - 6
    assert s.ask(1, within=space.subspace(opt="adam")) == []


def test_random_within_samples_the_subspace_uniformly():
    space = Space(lr=Real(1e-5, 1e-1, log=True), k=Int(1, 100))
    sub = space.subspace(lr=Real(1e-4, 1e-2, log=True), k=Int(10, 13))
    got = RandomSearcher(space, seed=0).ask(2000, within=sub)
    lr = np.log10([c["lr"] for c in got])
    assert lr.min() >= -4 and lr.max() <= -2
    assert np.mean(lr < -3) == pytest.approx(0.5, abs=0.04)  # log-uniform in the sub-interval
    counts = np.bincount([c["k"] for c in got])[10:14] / len(got)
    np.testing.assert_allclose(counts, 0.25, atol=0.04)


def test_halton_without_scrambling_is_the_radical_inverse():
    h = _HaltonStream(2, seed=0)
    h.perms = [np.tile(np.arange(b), (len(p), 1)) for b, p in zip(h.bases, h.perms)]
    pts = h.block(5)
    np.testing.assert_allclose(pts[:, 0], [0, 1 / 2, 1 / 4, 3 / 4, 1 / 8])
    np.testing.assert_allclose(pts[:, 1], [0, 1 / 3, 2 / 3, 1 / 9, 4 / 9])


@pytest.mark.parametrize("seed", [0, 7])
def test_scrambled_halton_keeps_one_point_per_elementary_interval(seed):
    h = _HaltonStream(4, seed=seed)
    assert h.bases == [2, 3, 5, 7]
    pts = h.block(343)
    assert pts.min() >= 0.0 and pts.max() < 1.0
    for j, n in enumerate((256, 243, 125, 343)):  # b**k points of dimension j
        cells = np.floor(pts[:n, j] * n).astype(int)
        assert sorted(cells.tolist()) == list(range(n))
    again = _HaltonStream(4, seed=seed)
    np.testing.assert_array_equal(np.vstack([again.block(100), again.block(243)]), pts)
    assert not np.allclose(_HaltonStream(4, seed=seed + 1).block(8), pts[:8])


def test_quasirandom_within_maps_halton_through_the_subspace():
    space = Space(x=Real(0.0, 1.0), lr=Real(1e-4, 1e-1, log=True))
    sub = space.subspace(x=Real(0.5, 0.75), lr=Real(1e-3, 1e-2, log=True))
    s = QuasiRandomSearcher(space, seed=7)
    units = _HaltonStream(2, seed=7).block(12)
    assert s.ask(4) == [space.from_unit(u) for u in units[:4]]
    assert s.ask(8, within=sub) == [sub.from_unit(u) for u in units[4:]]


def test_bayes_within_draws_candidates_from_the_subspace():
    space = Space(x=Real(0.0, 1.0), y=Real(0.0, 1.0), opt=Choice(["a", "b", "c"]))
    f = lambda c: 10 * ((c["x"] - 0.3) ** 2 + (c["y"] - 0.7) ** 2) + (c["opt"] == "c")
    sub = space.subspace(x=Real(0.0, 0.5), opt=Choice(["b", "c"]))
    s = BayesSearcher(space, seed=0, n_initial=8, n_candidates=512)
    _, pts = s._candidates(sub)
    cands = [space.from_point(p) for p in pts]
    assert all(sub.contains(c) for c in cands)
    assert np.mean([c["x"] < 0.25 for c in cands]) == pytest.approx(0.5, abs=0.07)
    assert {c["opt"] for c in cands} == {"b", "c"}
    for seed in (0, 1, 2):
        s = BayesSearcher(space, seed=seed, n_initial=10, n_candidates=1024)
        first = RandomSearcher(space, seed=seed).ask(20)
        s.tell(first, [f(c) for c in first])
        batch = s.ask(10, within=sub)
        assert s.last_select_s > 0  # the model chose them
        assert all(sub.contains(c) for c in batch)
        rand = RandomSearcher(space, seed=seed).ask(10, within=sub)
        dist = lambda cs: np.median([math.hypot(c["x"] - 0.3, c["y"] - 0.7) for c in cs])
        assert dist(batch) < 0.5 * dist(rand), (seed, dist(batch), dist(rand))
        assert sum(c["opt"] == "b" for c in batch) > 5


# -- grid --------------------------------------------------------------------------------
def test_grid_enumerates_product_then_ends():
    space = Space(opt=Choice(["adam", "sgd"]), depth=Int(1, 3),
                  lr=Real(1e-3, 1e-1, log=True))
    s = GridSearcher(space, resolution=3)
    got = []
    while batch := s.ask(4):
        got.extend(batch)
        s.tell(batch, [0.0] * len(batch))
    assert len(got) == s.size == 2 * 3 * 3
    assert got[0] == {"opt": "adam", "depth": 1, "lr": 1e-3}
    assert got[-1] == {"opt": "sgd", "depth": 3, "lr": 1e-1}
    assert [c["lr"] for c in got[:3]] == pytest.approx([1e-3, 1e-2, 1e-1])
    expected = {(o, d, r) for o in ("adam", "sgd") for d in (1, 2, 3) for r in (0, 1, 2)}
    assert {(c["opt"], c["depth"], round(math.log10(c["lr"])) + 3) for c in got} == expected
    assert s.ask(1) == []


def test_grid_skips_told_and_pending():
    space = Space(a=Choice([1, 2, 3]), b=Choice(["u", "v"]))
    s = GridSearcher(space)
    s.tell([{"a": 1, "b": "v"}], [0.5])
    first = s.ask(2)
    assert first == [{"a": 1, "b": "u"}, {"a": 2, "b": "u"}]
    assert len(s.ask(10)) == 3


def test_grid_refuses_unenumerable():
    with pytest.raises(ValueError, match=r"Real hyperparameter 'lr'.*resolution=N"):
        GridSearcher(Space(lr=Real(1e-4, 1e-1, log=True), a=Choice([1, 2])))
    with pytest.raises(ValueError, match=r"Int hyperparameter 'width'"):
        GridSearcher(Space(width=Int(1, 1000)))
    big = Space(**{f"x{i}": Real(0.0, 1.0) for i in range(7)})
    with pytest.raises(ValueError, match="more than the limit"):
        GridSearcher(big, resolution=10)
    s = GridSearcher(Space(width=Int(8, 4096, log=True)), resolution=5)
    assert [c["width"] for c in s.ask(10)] == [8, 38, 181, 861, 4096]


# -- factory and argument checks -----------------------------------------------------------
def test_make_searcher():
    space = mixed_space()
    for name in SEARCHERS:
        if name == "optuna:gp" and importlib.util.find_spec("torch") is None:
            continue  # Optuna's GPSampler needs torch (see test_optuna_searcher.py)
        kw = {"resolution": 2} if name == "grid" else {}
        assert make_searcher(name, space, seed=1, **kw).space is space
    assert isinstance(make_searcher("Bayes", space, surrogate="ET"), BayesSearcher)
    with pytest.raises(ValueError, match=r"'grid', 'random', 'quasirandom', 'bayes'"):
        make_searcher("tpe", space)


def test_bayes_argument_checks():
    space = mixed_space()
    with pytest.raises(ValueError, match=r"GBRT.*'GP', 'RF' or 'ET'"):
        BayesSearcher(space, surrogate="GBRT")
    with pytest.raises(ValueError, match="acquisition"):
        BayesSearcher(space, acquisition="UCB")
    with pytest.raises(ValueError, match="surrogate"):
        BayesSearcher(space, surrogate="TPE")
    with pytest.raises(TypeError):  # maximising is the study's job, not the searcher's
        BayesSearcher(space, maximize=True)
    with pytest.raises(ValueError, match="seed"):
        BayesSearcher(space, seed=1.5)


def test_skopt_point_roundtrip():
    space = Space(a=Choice([3, 2.5, "x", False]), n=Int(2, 9, log=True), r=Real(0.1, 10, log=True))
    for c in [{"a": 3, "n": 2, "r": 0.1}, {"a": False, "n": 9, "r": 10.0},
              {"a": "x", "n": 5, "r": 1.0}, {"a": 2.5, "n": 3, "r": 3.3}]:
        back = point_to_config(space, config_to_point(space, c))
        assert back == c and [type(v) for v in back.values()] == [type(v) for v in c.values()]


# -- diverged policy ----------------------------------------------------------------------
def test_diverged_penalty_and_exclude():
    space = Space(x=Real(0.0, 1.0))
    cs = [{"x": v} for v in (0.1, 0.2, 0.3, 0.4, 0.5)]
    s = BayesSearcher(space)
    s.tell(cs[:1], [None])  # no finite loss yet: held back
    configs, y = s.observations()
    assert configs == [] and y.size == 0
    s.tell(cs[1:], [1.0, float("nan"), 3.0, float("inf")])
    configs, y = s.observations()
    assert [c["x"] for c in configs] == [0.1, 0.2, 0.3, 0.4, 0.5]
    np.testing.assert_array_equal(y, [3.0, 1.0, 3.0, 3.0, 3.0])
    assert s.n_finite == 2

    e = BayesSearcher(space, diverged="exclude")
    e.tell(cs, [None, 1.0, np.nan, 3.0, np.inf])
    configs, y = e.observations()
    assert [c["x"] for c in configs] == [0.2, 0.4]
    np.testing.assert_array_equal(y, [1.0, 3.0])
    assert all(config_key(space, c) in e._seen for c in cs)  # never re-proposed
    with pytest.raises(ValueError, match="diverged"):
        BayesSearcher(space, diverged="ignore")


def test_bayes_penalty_reaches_surrogate_finite():
    space = Space(x=Real(0.0, 1.0), y=Real(0.0, 1.0))
    s = BayesSearcher(space, n_initial=4, n_candidates=128, seed=2)
    batch = s.ask(10)
    s.tell(batch, [None if i % 3 == 0 else float(i) for i in range(10)])
    est = s.fit()
    assert est is not None and np.all(np.isfinite(est.y_train_))
    assert len(est.X_train_) == 10
    assert len(s.ask(6)) == 6


# -- Bayes: kriging-believer math ----------------------------------------------------------
def _fitted_gp(seed=0, n=20):
    space = Space(a=Real(0.0, 1.0), b=Real(0.0, 1.0), c=Real(0.0, 1.0))
    s = BayesSearcher(space, seed=seed, n_initial=5, n_candidates=64)
    rng = np.random.default_rng(seed)
    cs = space.sample(n, seed=seed)
    ys = [math.sin(3 * c["a"]) + (c["b"] - 0.5) ** 2 + 0.3 * c["c"] + 0.05 * rng.normal()
          for c in cs]
    s.tell(cs, ys)
    est = s.fit()
    assert est is s.fit()  # cached: one fit per batch
    return est, rng.random((40, 3))


def test_kb_first_pick_matches_gp_predict():
    est, Z = _fitted_gp()
    post = _GPPosterior(est, Z, capacity=1)
    mu, std = est.predict(Z, return_std=True)
    np.testing.assert_allclose(post.mean, mu, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(post.std, std, rtol=1e-6, atol=1e-9)


def test_kb_rank_one_updates_match_refit_with_fixed_kernel():
    from sklearn.gaussian_process import GaussianProcessRegressor

    est, Z = _fitted_gp(seed=1)
    assert est.noise_ is not None and est.noise_ > 0
    post = _GPPosterior(est, Z, capacity=2)
    mu0 = post.mean.copy()
    scale, offset = post.scale, post.offset
    latent_kernel = est.kernel_.k1  # skopt's kernel_ = k1 + WhiteKernel(0) after fitting
    X, y = est.X_train_, est.y_train_  # y in normalised units
    picks = [7, 23]
    for j, s in enumerate(picks, start=1):
        post.condition(s)
        Xa = np.vstack([X, Z[picks[:j]]])
        ya = np.concatenate([y, (mu0[picks[:j]] - offset) / scale])  # fantasy = mean
        ref = GaussianProcessRegressor(kernel=latent_kernel, alpha=est.noise_ + est.alpha,
                                       optimizer=None, normalize_y=False).fit(Xa, ya)
        m_ref, s_ref = ref.predict(Z, return_std=True)
        np.testing.assert_allclose(m_ref * scale + offset, mu0, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(s_ref * scale, post.std, rtol=1e-5, atol=1e-7)
    assert post.std[7] < est.predict(Z[7:8], return_std=True)[1][0]


def test_acquisitions_match_scipy_norm():
    from scipy.stats import norm

    from jaxtune.search.bayes import _acquisition

    rng = np.random.default_rng(0)
    mu, std = rng.normal(size=200), np.abs(rng.normal(size=200))
    std[:10] = 0.0
    imp = 0.3 - 0.01 - mu
    z = np.divide(imp, std, out=np.zeros_like(mu), where=std > 0)
    ei = np.where(std > 0, imp * norm.cdf(z) + std * norm.pdf(z), np.maximum(imp, 0.0))
    pi = np.where(std > 0, norm.cdf(z), (imp > 0).astype(float))
    np.testing.assert_allclose(_acquisition("EI", mu, std, 0.3, 0.01, 2.0), ei, rtol=1e-12)
    np.testing.assert_allclose(_acquisition("PI", mu, std, 0.3, 0.01, 2.0), pi, rtol=1e-12)
    np.testing.assert_allclose(_acquisition("LCB", mu, std, 0.3, 0.01, 2.0), -(mu - 2.0 * std))


def _two_fits(warm_start, gp_restarts=0):
    """A GP fitted on 30 observations, then refitted after 20 more."""
    space = mixed_space()
    hist = RandomSearcher(space, seed=3).ask(50)
    s = BayesSearcher(space, seed=0, n_candidates=256, warm_start=warm_start,
                      gp_restarts=gp_restarts)
    s.tell(hist[:30], [loss_fn(c) for c in hist[:30]])
    first = s.fit()
    assert not s.last_fit_warm
    s.tell(hist[30:], [loss_fn(c) for c in hist[30:]])
    return first, s.fit(), s


def test_bayes_warm_start_begins_at_previous_kernel():
    first, second, s = _two_fits(warm_start=True)
    assert s.last_fit_warm
    start = second.kernel.theta  # where L-BFGS started
    np.testing.assert_allclose(start[:-1], first.kernel_.k1.theta)  # amplitude, lengths
    assert start[-1] == pytest.approx(math.log(first.noise_))  # the fitted noise, restored
    _, cold, c = _two_fits(warm_start=False)
    assert not c.last_fit_warm
    np.testing.assert_array_equal(cold.kernel.theta[:-1], 0.0)  # skopt's initial kernel
    # the same optimum (this problem has one), within L-BFGS's tolerance
    assert second.log_marginal_likelihood_value_ == pytest.approx(
        cold.log_marginal_likelihood_value_, rel=1e-4)
    _, restarted, r = _two_fits(warm_start=True, gp_restarts=2)
    assert r.last_fit_warm and restarted.n_restarts_optimizer == 2
    assert restarted.log_marginal_likelihood_value_ >= second.log_marginal_likelihood_value_ - 1e-6
    probe = RandomSearcher(mixed_space(), seed=9).ask(5)
    mu, std = s.predict(probe, return_std=True)
    ref_mu, ref_std = second.predict(s._transform(probe), return_std=True)
    np.testing.assert_array_equal(mu, ref_mu)
    np.testing.assert_array_equal(std, ref_std)
    np.testing.assert_array_equal(s.predict(probe), ref_mu)
    with pytest.raises(ValueError, match="no surrogate yet"):
        BayesSearcher(mixed_space()).predict(probe)
    # forests have no kernel: nothing to warm-start
    f = BayesSearcher(mixed_space(), surrogate="ET", n_initial=8)
    hist = RandomSearcher(mixed_space(), seed=3).ask(20)
    f.tell(hist[:10], [loss_fn(c) for c in hist[:10]])
    f.fit()
    f.tell(hist[10:], [loss_fn(c) for c in hist[10:]])
    f.fit()
    assert not f.last_fit_warm


def test_bayes_ask16_after_30_observations():
    space = mixed_space()
    hist = RandomSearcher(space, seed=5).ask(30)
    s = BayesSearcher(space, seed=0, n_candidates=512)
    s.tell(hist, [loss_fn(c) for c in hist])
    batch = s.ask(16)
    keys = {config_key(space, c) for c in batch}
    assert len(batch) == 16 and len(keys) == 16
    assert not keys & {config_key(space, c) for c in hist}
    assert s.last_ask_s > 0 and s.last_fit_s > 0
    nxt = s.ask(4)  # no refit; the first batch is pending: fantasised, not repeated
    assert len(nxt) == 4 and not keys & {config_key(space, c) for c in nxt}


def test_gp_hedge_gains_update_on_tell():
    space = Space(x=Real(0.0, 1.0), y=Real(0.0, 1.0))
    f = lambda c: (c["x"] - 0.3) ** 2 + (c["y"] - 0.7) ** 2
    s = BayesSearcher(space, acquisition="gp_hedge", n_initial=6, n_candidates=256, seed=0)
    b = s.ask(6)
    s.tell(b, [f(c) for c in b])
    b = s.ask(4)
    np.testing.assert_array_equal(s.gains, 0.0)
    s.tell(b, [f(c) for c in b])
    s.ask(4)
    assert np.all(s.gains != 0.0)


def test_gp_hedge_gains_follow_the_documented_rule():
    """gains[k] -= mean(refitted surrogate's prediction at acquisition k's nominations),
    over all picks since the previous tell (several asks included)."""
    space = Space(x=Real(0.0, 1.0), y=Real(0.0, 1.0), opt=Choice(["a", "b"]))
    f = lambda c: (c["x"] - 0.3) ** 2 + (c["y"] - 0.7) ** 2 + 0.2 * (c["opt"] == "b")
    s = BayesSearcher(space, acquisition="gp_hedge", n_initial=6, n_candidates=256, seed=1)
    b = s.ask(8)
    s.tell(b, [f(c) for c in b])
    for round_ in range(3):
        batch = s.ask(3) + s.ask(2)  # two asks before one tell: their nominations pool
        nominations = [np.vstack(p) for p in s._hedge_props]
        assert [len(p) for p in nominations] == [5, 5, 5]  # EI, PI and LCB each nominate
        before = s.gains.copy()
        s.tell(batch, [f(c) for c in batch])
        est = s.fit()  # the refit applies the update, with the new surrogate
        expected = before - [float(np.mean(est.predict(p))) for p in nominations]
        np.testing.assert_allclose(s.gains, expected, rtol=1e-12, atol=1e-15)
        assert not np.array_equal(s.gains, before), round_
        assert s.fit() is est and np.array_equal(s.gains, expected)  # applied once


def _median_distance_second_batch(searcher, n_first, opt=(0.3, 0.7)):
    f = lambda c: 10.0 * ((c["x"] - opt[0]) ** 2 + (c["y"] - opt[1]) ** 2)
    first = searcher.ask(n_first)
    searcher.tell(first, [f(c) for c in first])
    second = searcher.ask(10)
    return float(np.median([math.hypot(c["x"] - opt[0], c["y"] - opt[1]) for c in second]))


@pytest.mark.parametrize(("surrogate", "acquisition", "n_first", "factor"), [
    ("GP", "EI", 10, 0.5),
    ("GP", "LCB", 10, 0.5),
    ("ET", "EI", 30, 1.0),  # forests need more data and spread their batches more
])
def test_bayes_concentrates_near_minimum(surrogate, acquisition, n_first, factor):
    space = Space(x=Real(0.0, 1.0), y=Real(0.0, 1.0))
    for seed in (0, 1, 2):
        bayes = BayesSearcher(space, seed=seed, surrogate=surrogate, acquisition=acquisition,
                              n_initial=n_first, n_candidates=1024)
        d_bayes = _median_distance_second_batch(bayes, n_first)
        d_random = _median_distance_second_batch(RandomSearcher(space, seed=seed), n_first)
        assert d_bayes < factor * d_random, (seed, d_bayes, d_random)


def test_bayes_hedge_and_rf_run_on_mixed_space():
    space = mixed_space()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no sklearn/skopt warnings leak out
        for kw in ({"surrogate": "RF", "acquisition": "gp_hedge"},
                   {"surrogate": "ET", "acquisition": "LCB"},
                   {"surrogate": "RF", "acquisition": "PI"}):
            s = BayesSearcher(space, seed=0, n_initial=8, n_candidates=256, **kw)
            props = run_session(s, rounds=(8, 8, 8), leave_pending=False)
            assert len({config_key(space, c) for c in props}) == 24


def test_docstring_examples():
    import doctest

    import jaxtune.search
    import jaxtune.search.basic
    import jaxtune.search.bayes

    runner = doctest.DocTestRunner(verbose=False)
    for module in (jaxtune.search, jaxtune.search.basic, jaxtune.search.bayes):
        for t in doctest.DocTestFinder().find(module):
            runner.run(t)
    result = runner.summarize(verbose=False)
    assert result.failed == 0 and result.attempted > 15


@pytest.mark.parametrize("name", ["grid", "random", "quasirandom", "bayes"])
def test_configurations_added_as_pending_are_never_proposed(name):
    """A resumed study trains its interrupted trials again: they are pending in the fresh
    searcher, which must not propose them (its deterministic stream would)."""
    space = Space(lr=Choice([0.1, 0.2, 0.3, 0.4]), opt=Choice(["a", "b"]))
    first = make_searcher(name, space, seed=3).ask(3)
    again = make_searcher(name, space, seed=3)
    again.add_pending(first)
    assert again.pending == first
    proposed = again.ask(5)
    keys = {space.key(c) for c in first}
    assert len(proposed) == 5 and not keys & {space.key(c) for c in proposed}
    again.tell(first, [0.5, 0.4, 0.3])
    assert again.pending == proposed


def test_bayes_defaults_fit_from_scratch_with_local_candidates():
    """The default refits the kernel from skopt's initial kernel every time (a warm start
    searched worse on the searcher suite) and draws a quarter of its candidates around
    the best observations."""
    _, second, _ = _two_fits(warm_start=False)
    d = BayesSearcher(mixed_space(), seed=0, n_candidates=256)
    assert d.warm_start is False and d.local_candidates == 0.25
    hist = RandomSearcher(mixed_space(), seed=3).ask(50)
    d.tell(hist[:30], [loss_fn(c) for c in hist[:30]])
    d.fit()
    d.tell(hist[30:], [loss_fn(c) for c in hist[30:]])
    refit = d.fit()
    assert not d.last_fit_warm
    np.testing.assert_array_equal(refit.kernel.theta, second.kernel.theta)  # scratch start
    assert refit.log_marginal_likelihood_value_ == second.log_marginal_likelihood_value_
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="local_candidates"):
            BayesSearcher(mixed_space(), local_candidates=bad)


def test_bayes_local_candidates_lie_near_the_best_observations():
    space = Space(a=Real(0.0, 1.0), b=Real(1e-4, 1.0, log=True), n=Int(0, 20),
                  c=Choice(["x", "y", "z"]))
    hist = RandomSearcher(space, seed=1).ask(24)
    target = np.array([0.3, 0.6, 0.5, 0.5])
    losses = [float(np.sum((space.to_unit(c) - target) ** 2)) for c in hist]
    best = [space.to_unit(hist[i]) for i in np.argsort(losses)[:4]]

    def nearest(configs, sp):
        U = np.array([sp.to_unit(c) for c in configs])
        return np.min([np.max(np.abs(U - b), axis=1) for b in best], axis=0)

    near, far = [], []
    for frac, out in ((1.0, near), (0.0, far)):
        s = BayesSearcher(space, seed=0, n_candidates=400, local_candidates=frac)
        s.tell(hist, losses)
        s.fit()
        _, pts = s._candidates(space)
        out.extend(nearest([space.from_point(p) for p in pts], space))
    assert np.median(near) < 0.12 < np.median(far)
    # inside a subspace: every local candidate is in it, around the observations in it
    sub = space.subspace(c="y", a=Real(0.0, 0.5))
    s = BayesSearcher(space, seed=0, n_candidates=300, local_candidates=1.0)
    s.tell(hist, losses)
    s.fit()
    local = s._local_configs(sub, np.random.RandomState(0))
    assert len(local) == 300 and all(sub.contains(c) for c in local)
    batch = s.ask(5, within=sub)
    assert len(batch) == 5 and all(sub.contains(c) for c in batch)
