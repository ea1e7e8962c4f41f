"""Probes from a representation to a property: ridge (alpha by grouped CV), logistic regression
(C by grouped CV), a small MLP (JAX, full batch, every CV fold trained at once under vmap) and
gradient-boosted trees (scikit-learn's histogram GBM at its defaults: the strongest probe of
weight statistics in Unterthiner et al. 2020).

Every choice (alpha, C, the target's transform, which probe) is made by cross-validation over
groups (class sets) of the train rows only; test rows are scored once, at the end.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import stats


def r2(y, pred):
    return float(1.0 - ((y - pred) ** 2).sum() / max(((y - y.mean()) ** 2).sum(), 1e-30))


def kendall_tau(y, pred):
    return float(stats.kendalltau(y, pred).statistic)


def group_folds(groups, num_folds, seed):
    """[num_folds] boolean validation masks over rows: whole groups per fold, shuffled by `seed`."""
    unique = np.unique(groups)
    fold_of = dict(zip(unique, np.random.default_rng(seed).permutation(len(unique)) % num_folds))
    fold = np.array([fold_of[g] for g in groups])
    return [fold == f for f in range(min(num_folds, len(unique)))]


class Standardiser:
    def __init__(self, x):
        self.mean, std = x.mean(0), x.std(0)
        self.std = np.where(std > 1e-8, std, 1.0)

    def __call__(self, x):
        return (x - self.mean) / self.std


def transforms(y, names):
    """{name: (forward, inverse)} of those `names` that apply to train targets y. The log is
    shifted so a target with zeros (step 0) has one; inverses clip to y's range, so a probe
    extrapolating through exp() cannot blow up on a held-out row."""
    lo, hi = float(y.min()), float(y.max())
    out = {}
    for name in names:
        if name == "identity":
            out[name] = (lambda v: v, lambda v: np.clip(v, lo, hi))
        elif name == "log" and lo >= 0:
            shift = 0.0 if lo > 0 else float(y[y > 0].min()) if (y > 0).any() else 1.0
            out[name] = (lambda v, s=shift: np.log(v + s),
                         lambda v, s=shift: np.clip(np.exp(np.minimum(v, np.log(hi + s))) - s, lo, hi))
    return out


def ridge_path(x, y, alphas):
    """Coefficients [A, F] and intercepts [A] of ridge on standardised x for every alpha (one SVD)."""
    xm, ym = x.mean(0), y.mean()
    u, s, vt = np.linalg.svd(x - xm, full_matrices=False)
    uty = u.T @ (y - ym)
    coef = np.stack([vt.T @ (s / (s ** 2 + a) * uty) for a in alphas])
    return coef, ym - coef @ xm


def fit_ridge(x, y, train, folds, config):
    """(predict(x) -> y, cv score, settings): ridge on standardised x, the target transform and
    alpha chosen by grouped CV R² on the original scale."""
    best = None
    for name, (fwd, inv) in transforms(y[train], config.transforms).items():
        cv = np.zeros((len(config.alphas), train.sum()))
        xt, yt = x[train], fwd(y[train])
        for val in folds:
            std = Standardiser(xt[~val])
            coef, icpt = ridge_path(std(xt[~val]), yt[~val], config.alphas)
            cv[:, val] = coef @ std(xt[val]).T + icpt[:, None]
        scores = [r2(y[train], inv(p)) for p in cv]
        a = int(np.argmax(scores))
        if best is None or scores[a] > best[0]:
            best = (scores[a], name, config.alphas[a])
    score, name, alpha = best
    fwd, inv = transforms(y[train], [name])[name]
    std = Standardiser(x[train])
    coef, icpt = ridge_path(std(x[train]), fwd(y[train]), [alpha])
    return (lambda z: inv(std(z) @ coef[0] + icpt[0])), score, dict(transform=name, alpha=alpha)


def fit_logistic(x, y, train, folds, config):
    """(predict, cv accuracy, settings): multinomial logistic regression, C by grouped CV."""
    from sklearn.linear_model import LogisticRegression
    xt, yt = x[train], y[train]
    scores = []
    for c in config.inverse_regularisation:
        hits = 0
        for val in folds:
            std = Standardiser(xt[~val])
            model = LogisticRegression(C=c, max_iter=1000).fit(std(xt[~val]), yt[~val])
            hits += (model.predict(std(xt[val])) == yt[val]).sum()
        scores.append(hits / len(yt))
    c = config.inverse_regularisation[int(np.argmax(scores))]
    std = Standardiser(xt)
    model = LogisticRegression(C=c, max_iter=1000).fit(std(xt), yt)
    return (lambda z: model.predict(std(z))), float(max(scores)), dict(C=c)


class MLP(nn.Module):
    hidden: tuple
    outputs: int

    @nn.compact
    def __call__(self, x):
        for h in self.hidden:
            x = nn.gelu(nn.Dense(h)(x))
        return nn.Dense(self.outputs)(x)


@functools.partial(jax.jit, static_argnames=("module", "steps", "learning_rate", "weight_decay", "classify"))
def _fit_mlps(module, x, y, weights, keys, *, steps, learning_rate, weight_decay, classify):
    """One MLP per row of weights [F, N] (a row's zero weights leave those examples out), all
    trained together under vmap, full batch, AdamW; returns the stacked parameters."""
    tx = optax.adamw(learning_rate, weight_decay=weight_decay)

    def fit(w, key):
        params = module.init(key, x[:1])["params"]

        def loss(p):
            out = module.apply({"params": p}, x)
            per = (optax.softmax_cross_entropy_with_integer_labels(out, y) if classify
                   else (out[:, 0] - y) ** 2)
            return (per * w).sum() / w.sum()

        def step(carry, _):
            p, opt = carry
            updates, opt = tx.update(jax.grad(loss)(p), opt, p)
            return (optax.apply_updates(p, updates), opt), None

        (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
        return params

    return jax.vmap(fit)(weights, keys)


def fit_mlp(x, y, train, folds, config, key, transform=None, num_classes=0):
    """(predict, cv score, settings): the MLP on standardised x (and, for regression, the
    standardised target after `transform`, the one the ridge chose); the CV folds and the final
    fit trained in one vmapped call on the train rows. Scores: R² on the original scale, or accuracy."""
    classify = num_classes > 0
    std = Standardiser(x[train])
    xs = jnp.asarray(std(x[train]), jnp.float32)
    if classify:
        yt, inv = jnp.asarray(y[train], jnp.int32), None
    else:
        fwd, inv = transforms(y[train], [transform])[transform]
        t = fwd(y[train])
        mu, sd = t.mean(), max(t.std(), 1e-8)
        yt = jnp.asarray((t - mu) / sd, jnp.float32)
    weights = np.stack([~val for val in folds] + [np.ones(len(xs), bool)]).astype(np.float32)
    module = MLP(tuple(config.hidden), num_classes if classify else 1)
    params = _fit_mlps(module, xs, yt, jnp.asarray(weights), jax.random.split(key, len(weights)),
                       steps=int(config.steps), learning_rate=float(config.learning_rate),
                       weight_decay=float(config.weight_decay), classify=classify)
    out = np.asarray(jax.vmap(lambda p: module.apply({"params": p}, xs))(params))  # [F+1, n, outputs]
    decode = (lambda o: o.argmax(-1)) if classify else (lambda o: inv(o[..., 0] * sd + mu))
    cv = np.empty(len(xs), y.dtype if classify else np.float64)
    for f, val in enumerate(folds):
        cv[val] = decode(out[f][val])
    score = float((cv == y[train]).mean()) if classify else r2(y[train], cv)
    final = jax.tree_util.tree_map(lambda p: p[-1], params)
    predict = lambda z: decode(np.asarray(module.apply({"params": final}, jnp.asarray(std(z), jnp.float32))))  # noqa: E731
    return predict, score, dict(transform=transform) if not classify else {}


def fit_gbm(x, y, train, folds, config, transform=None, classify=False):
    """(predict, cv score, settings): histogram gradient-boosted trees on x (no scaling needed),
    for regression on the target after `transform` (the one the ridge chose). Scores as fit_mlp."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    xt = x[train]
    if classify:
        yt, inv = y[train], (lambda v: v)
        make = lambda: HistGradientBoostingClassifier(**config, random_state=0)  # noqa: E731
    else:
        fwd, inv = transforms(y[train], [transform])[transform]
        yt = fwd(y[train])
        make = lambda: HistGradientBoostingRegressor(**config, random_state=0)  # noqa: E731
    cv = np.empty(len(xt), y.dtype if classify else np.float64)
    for val in folds:
        cv[val] = inv(make().fit(xt[~val], yt[~val]).predict(xt[val]))
    score = float((cv == y[train]).mean()) if classify else r2(y[train], cv)
    model = make().fit(xt, yt)
    return (lambda z: inv(model.predict(z))), score, {} if classify else dict(transform=transform)
