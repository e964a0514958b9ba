"""Scaling laws of a compute ladder (numpy/scipy only): loss against compute, loss against parameters and data,
the compute multiplier of one activation against another, and a bootstrap over seeds.

- ``PowerLaw``: ``L(C) = E + A * C**-alpha``, fitted by variable projection: for a given ``alpha`` the law is linear
  in ``(E, A)``, solved in closed form (``E >= 0``, ``A >= 0``), and ``alpha`` is searched on a log grid and refined
  by a bounded scalar search. Compute is scaled by a reference (the data's geometric mean) so nothing overflows.
  ``at_bound`` marks an alpha at an end of ``ALPHA_RANGE``: the data did not pin it down.
- ``Chinchilla``: ``L(N, D) = E + A * N**-alpha + B * D**-beta`` (Hoffmann et al. 2022, approach 3: Huber loss, delta
  1e-3, on log losses, from a grid of starting points).
- ``compute_multiplier``: the compute the baseline would need to reach a loss (its law inverted), divided by the
  compute that reached it. Infinite when the loss is below the baseline's fitted floor ``E``.
- ``trend``: least-squares slope of log(multiplier) against log(compute).
- ``bootstrap_cells``: a bootstrap over seeds: each cell's seed residuals (scaled to unbiased variance, widened to t
  quantiles), pooled over an activation's cells, drawn paired across the activations of a rung and budget (runs of
  one seed see the same data order). With 2-3 seeds per cell the plain percentile bootstrap is far too narrow. Its
  random streams are keyed by cell and source, so a run added to one activation leaves the others' draws.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import optimize, stats

ALPHA_RANGE = (1e-3, 3.0)


class FitError(ValueError):
    """The optimiser stopped without converging (scipy's ``least_squares`` reported no success)."""


# ---- L(C) = E + A C^-alpha --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PowerLaw:
    """``L(C) = E + a * (C / c_ref) ** -alpha``; ``A = a * c_ref ** alpha`` in the usual form. ``at_bound``: the
    fit's alpha lies within one grid step (2%) of an end of ``ALPHA_RANGE``, so the bound, not the data, set it."""

    E: float
    a: float
    alpha: float
    c_ref: float
    at_bound: bool = False

    @property
    def A(self) -> float:
        return self.a * self.c_ref**self.alpha

    def __call__(self, compute):
        return self.E + self.a * (np.asarray(compute, dtype=float) / self.c_ref) ** -self.alpha

    def inverse(self, loss):
        """The compute at which the law reaches ``loss``; inf at or below the floor ``E`` (never reached)."""
        loss = np.asarray(loss, dtype=float)
        excess = loss - self.E
        with np.errstate(divide="ignore", invalid="ignore"):
            compute = self.c_ref * (excess / self.a) ** (-1.0 / self.alpha)
        return np.where((excess > 0) & (self.a > 0), compute, np.inf)

    def to_dict(self) -> dict:
        return {"E": self.E, "A": self.A, "alpha": self.alpha, "alpha_at_bound": self.at_bound,
                "form": "L(C) = E + A * C^-alpha"}


def _linear_fit(x: np.ndarray, y: np.ndarray, alphas: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each alpha: least-squares E >= 0, a >= 0 of y = E + a exp(-alpha x); returns (sse, E, a) per alpha."""
    z = np.exp(-np.outer(alphas, x))  # (alphas, points)
    zm, ym = z.mean(1), y.mean()
    szz = ((z - zm[:, None]) ** 2).sum(1)
    szy = ((z - zm[:, None]) * (y - ym)).sum(1)
    a = np.where(szz > 0, szy / np.where(szz > 0, szz, 1.0), 0.0)
    E = ym - a * zm
    # the constrained solutions where the free one leaves the region: E = 0 (a free) or a = 0 (E = mean)
    a_e0 = np.clip((z * y).sum(1) / (z * z).sum(1), 0.0, None)
    bad = E < 0
    a, E = np.where(bad, a_e0, a), np.where(bad, 0.0, E)
    neg = a < 0
    a, E = np.where(neg, 0.0, a), np.where(neg, max(ym, 0.0), E)
    sse = ((E[:, None] + a[:, None] * z - y) ** 2).sum(1)
    return sse, E, a


def fit_power_law(compute, loss) -> PowerLaw:
    """Least squares of ``L(C) = E + A C^-alpha`` (E >= 0, A >= 0, alpha in ALPHA_RANGE); needs >= 3 distinct
    computes (3 parameters: at 2 computes any alpha fits as well as another once E and A follow it). With 3 computes
    the law passes through their means: no residual is left to judge the fit."""
    c, y = np.asarray(compute, dtype=float), np.asarray(loss, dtype=float)
    if np.unique(c).size < 3:
        raise ValueError(f"a power law L(C) needs >= 3 distinct computes (3 parameters), got {np.unique(c).size} "
                         f"in {c.size} points")
    c_ref = float(np.exp(np.log(c).mean()))
    x = np.log(c / c_ref)
    grid = np.geomspace(*ALPHA_RANGE, 400)
    sse, _, _ = _linear_fit(x, y, grid)
    i = int(np.argmin(sse))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]
    best = optimize.minimize_scalar(lambda al: _linear_fit(x, y, np.array([al]))[0][0], bounds=(lo, hi),
                                    method="bounded", options={"xatol": 1e-10})
    alpha = float(best.x) if best.fun <= sse[i] else float(grid[i])
    _, E, a = _linear_fit(x, y, np.array([alpha]))
    return PowerLaw(E=float(E[0]), a=float(a[0]), alpha=alpha, c_ref=c_ref,
                    at_bound=bool(alpha <= grid[1] or alpha >= grid[-2]))


# ---- L(N, D) = E + A N^-alpha + B D^-beta -----------------------------------------------------------------------
CHINCHILLA_E_FLOOR = math.exp(-10)  # the fit's search range: E >= exp(-10), exponents in [0, 3]
CHINCHILLA_EXPONENT_MAX = 3.0


@dataclass(frozen=True)
class Chinchilla:
    E: float
    A: float
    alpha: float
    B: float
    beta: float

    def __call__(self, params, tokens):
        n, d = np.asarray(params, dtype=float), np.asarray(tokens, dtype=float)
        return self.E + self.A * n**-self.alpha + self.B * d**-self.beta

    def at_bounds(self) -> list[str]:
        """The parameters the fit pushed to an end of its search range: E under 0.01 (the floor exp(-10) is where
        the optimiser heads; no text loss has a floor near 0 nats) or an exponent within 1e-3 of 0 or 3. There the
        data did not determine the law, and its extrapolation follows the bound, not the data."""
        out = ["E"] if self.E < 0.01 else []
        return out + [k for k in ("alpha", "beta") if not 1e-3 < getattr(self, k) < CHINCHILLA_EXPONENT_MAX - 1e-3]

    def to_dict(self) -> dict:
        return {**asdict(self), "form": "L(N, D) = E + A * N^-alpha + B * D^-beta", "at_bounds": self.at_bounds()}


def fit_chinchilla(params, tokens, loss, start: Chinchilla | None = None) -> Chinchilla:
    """Hoffmann et al. (2022) approach 3: minimise the Huber loss (delta 1e-3) of log L_hat - log L, with
    ``L_hat = exp(e) + exp(a - alpha log N) + exp(b - beta log D)`` (so E, A, B > 0), from a grid of 8 starts, or from
    ``start`` alone (a bootstrap replicate starting at the full data's fit). log N and log D are centred on their
    means in the parametrisation (a and alpha would otherwise be almost collinear).

    Needs >= 6 points (5 parameters) at >= 3 distinct N and >= 3 distinct D (at 2, E and that term's coefficient and
    exponent are not separable), and tokens per parameter D/N spanning at least a factor 2 (two budget lines or more):
    on one D/N line log N and log D are collinear and the law is not identified (alpha and beta trade off). Raises
    ``FitError`` when no start converges."""
    n, d, y = (np.asarray(v, dtype=float) for v in (params, tokens, loss))
    ratio = np.log(d / n)
    span = float(np.ptp(ratio)) if ratio.size else 0.0
    if y.size < 6 or np.unique(n).size < 3 or np.unique(d).size < 3 or span < math.log(2) - 1e-9:
        got = f", D/N from {np.exp(ratio.min()):.3g} to {np.exp(ratio.max()):.3g}" if ratio.size else ""
        raise ValueError(f"L(N, D) needs >= 6 points at >= 3 distinct N and >= 3 distinct D, with tokens per parameter "
                         f"D/N spanning a factor >= 2 (two or more budget lines; on one D/N line N and D are "
                         f"collinear); got {y.size} points, {np.unique(n).size} N, {np.unique(d).size} D{got}")
    mn, md = np.log(n).mean(), np.log(d).mean()
    ln_n, ln_d, ln_y = np.log(n) - mn, np.log(d) - md, np.log(y)

    def terms(p):
        e, a, alpha, b, beta = p
        return np.stack([np.full_like(ln_n, e), a - alpha * ln_n, b - beta * ln_d])

    def residuals(p):
        return np.logaddexp.reduce(terms(p), axis=0) - ln_y

    def jacobian(p):
        t = terms(p)
        w = np.exp(t - np.logaddexp.reduce(t, axis=0))  # each term's share of L_hat
        return np.stack([w[0], w[1], -w[1] * ln_n, w[2], -w[2] * ln_d], axis=1)

    if start is not None:  # a = ln A - alpha * mean ln N in the centred parametrisation
        starts = [[math.log(start.E), math.log(start.A) - start.alpha * mn, start.alpha,
                   math.log(start.B) - start.beta * md, start.beta]]
    else:
        starts = []
        for floor in (0.5, 0.9):  # E as a share of the lowest loss; the rest split between the two terms
            rest = math.log(max(y.min() * (1 - floor) / 2, 1e-3))
            for alpha0 in (0.2, 0.5):
                for beta0 in (0.2, 0.5):
                    starts.append([math.log(y.min() * floor), rest, alpha0, rest, beta0])
    lb = np.array([math.log(CHINCHILLA_E_FLOOR), -50, 0.0, -50, 0.0])
    ub = np.array([10, 50, CHINCHILLA_EXPONENT_MAX, 50, CHINCHILLA_EXPONENT_MAX])
    # each start clipped into the (closed) bounds: one rebuilt from a fit through exp/log can land an ulp outside.
    # max_nfev 4x scipy's default (500): ~1% of bootstrap refits on a flat valley need 510-550 evaluations
    fits = [optimize.least_squares(residuals, np.clip(p0, lb, ub), jac=jacobian, loss="huber", f_scale=1e-3,
                                   x_scale="jac", bounds=(lb, ub), max_nfev=2000) for p0 in starts]

    def law(fit):
        e, a, alpha, b, beta = fit.x
        return Chinchilla(E=float(np.exp(e)), A=float(np.exp(a + alpha * mn)), alpha=float(alpha),
                          B=float(np.exp(b + beta * md)), beta=float(beta))

    converged = [fit for fit in fits if fit.success]
    if converged:
        return law(min(converged, key=lambda fit: fit.cost))
    # out of evaluations while crawling along a flat valley into a bound (E -> 0, an exponent -> 0 or 3): the data
    # do not determine the law there; the best such fit is returned with at_bounds() naming the parameters
    crawling = [law(fit) for fit in sorted(fits, key=lambda fit: fit.cost) if fit.status == 0]
    if crawling and crawling[0].at_bounds():
        return crawling[0]
    raise FitError(f"L(N, D): least_squares did not converge from any of {len(fits)} start(s): {fits[0].message}")


# ---- multiplier and its trend -----------------------------------------------------------------------------------
def compute_multiplier(baseline: PowerLaw, loss, compute):
    """``baseline.inverse(loss) / compute``: > 1 when ``loss`` was reached with less compute than the baseline needs."""
    return baseline.inverse(loss) / np.asarray(compute, dtype=float)


def trend(compute, multiplier) -> float:
    """Least-squares slope of ln(multiplier) on ln(compute): the multiplier grows by a factor e^slope per e-fold of
    compute (x 10^slope per decade). nan when a multiplier is not finite and positive, or the computes hold fewer
    than 2 distinct values (no slope)."""
    c, m = np.asarray(compute, dtype=float), np.asarray(multiplier, dtype=float)
    if c.shape != m.shape:
        raise ValueError(f"trend: {c.size} computes but {m.size} multipliers")
    if np.unique(c).size < 2 or not np.all(np.isfinite(m)) or np.any(m <= 0):
        return math.nan
    x, y = np.log(c), np.log(m)
    x = x - x.mean()
    return float((x * (y - y.mean())).sum() / (x * x).sum())


# ---- intervals ---------------------------------------------------------------------------------------------------
def percentile_interval(samples, level: float = 0.95) -> tuple[float, float]:
    """Equal-tailed interval of bootstrap samples (no interpolation, so infinite samples stay inf); nan samples are
    dropped. (nan, nan) when none is left."""
    s = np.asarray(samples, dtype=float)
    s = s[~np.isnan(s)]
    if s.size == 0:
        return math.nan, math.nan
    tail = (1 - level) / 2
    lo, hi = np.quantile(s, [tail, 1 - tail], method="inverted_cdf")
    return float(lo), float(hi)


def bootstrap_p_value(samples, null: float = 0.0) -> float:
    """Two-sided p-value of ``null`` by inverting the percentile interval: 2 x the smaller share of bootstrap
    samples on either side of it (at least 1 / n), 1 at most; nan samples are dropped."""
    s = np.asarray(samples, dtype=float)
    s = s[~np.isnan(s)]
    if s.size == 0:
        return math.nan
    share = min((s <= null).mean(), (s >= null).mean())
    return float(min(1.0, max(2 * share, 1.0 / s.size)))


def _stream(seed: int, *key) -> np.random.Generator:
    """A random stream named by ``key`` (any repr-able values) under ``seed``: the same key gives the same stream
    whatever else the data holds."""
    digest = int.from_bytes(hashlib.blake2b(repr(key).encode(), digest_size=8).digest(), "little")
    return np.random.default_rng(np.random.SeedSequence([seed, digest]))


def _consistent_draws(seed: int, group, sources: list, draws: int, replicates: int) -> np.ndarray:
    """``(draws, replicates)`` indices into ``sources``, uniform with replacement, by consistent sampling: every
    (group, source, draw) has its own stream of uniform keys and a draw picks the source with the smallest key. A
    source that joins the pool (another activation's new seed) takes over a draw only where its key is the smallest
    (about 1 in len(sources)); every other draw stays as it was."""
    keys = np.stack([np.stack([_stream(seed, "source", group, src, j).random(replicates) for src in sources])
                     for j in range(draws)])  # (draws, sources, replicates)
    return keys.argmin(axis=1)


def bootstrap_cells(cells: dict, seed: int, replicates: int, pooled: bool = True):
    """Yield ``replicates`` resampled versions of ``cells``: ``{(group, activation): {seed: loss}}`` ->
    ``{(group, activation): mean loss}``. A group is a rung and budget; a cell's seeds saw the same data order as the
    other activations' runs of those seeds in its group.

    ``pooled`` (default): a residual bootstrap over seeds. A run's residual is its loss minus its cell's mean, scaled
    by sqrt(n / (n - 1)) (n: the cell's seeds) so that its variance is the seed variance; a replicate gives each cell
    its mean plus the mean of n residuals drawn from all of that activation's cells (its seed noise pooled over rungs
    and budgets: 2-3 seeds per cell alone leave a percentile interval far too narrow), widened by
    t(0.975, df) / z(0.975) with df the pooled degrees of freedom (runs minus cells), so that the percentile interval
    of a mean has the width of its t interval. Pairing: in each group, the n draws are (group, seed) sources shared
    by all its activations, so runs of one seed stay paired; an activation lacking a source draws from its own
    residuals instead.

    Not pooled: seed labels resampled within each group (the same labels for all its activations), each cell's
    deviation from its mean scaled by sqrt(n / (n - 1)); a cell of one seed never moves.

    Randomness is keyed, not sequential: source draws come from per-(group, source) streams (``_consistent_draws``),
    an activation's own draws from a fixed per-(group, activation) block of indices, all under ``seed``. So a run
    added to one activation leaves another activation's replicates as they were, except those in which a new
    (group, seed) source wins a draw (and, if the run enlarges its group's largest cell and so adds a draw there,
    that group's replicates that took a fill where the extra draw now serves); with one shared stream, every later
    draw of every cell would shift and a p-value of ~0.01 could move by its Monte Carlo error although none of its
    runs changed."""
    groups: dict = {}
    for (group, act), by_seed in cells.items():
        groups.setdefault(group, {})[act] = by_seed
    means = {key: float(np.mean(list(v.values()))) for key, v in cells.items()}
    residual = {}  # (group, act, seed) -> scaled residual
    for (group, act), by_seed in cells.items():
        n = len(by_seed)
        if n > 1:
            for s, loss in by_seed.items():
                residual[(group, act, s)] = (loss - means[(group, act)]) * math.sqrt(n / (n - 1))
    own: dict = {}
    for (group, act, s), r in residual.items():
        own.setdefault(act, []).append(r)
    if pooled:  # t with the pooled degrees of freedom over the normal quantile (df: runs - cells with >= 2 seeds)
        for act, values in own.items():
            df = len(values) - sum(1 for (g, a), v in cells.items() if a == act and len(v) > 1)
            widen = stats.t.ppf(0.975, df) / stats.norm.ppf(0.975)
            for key in [k for k in residual if k[1] == act]:
                residual[key] *= widen
            own[act] = [r * widen for r in values]
    own = {act: np.array(v) for act, v in own.items()}
    sources = sorted({(g, s) for (g, _, s) in residual})
    candidates, index = {}, {}  # per group: what a draw can pick, and (draws, replicates) indices into it
    for group, acts in groups.items():
        if pooled:
            candidates[group] = sources
            size = max(len(v) for v in acts.values())
            index[group] = (_consistent_draws(seed, group, sources, size, replicates) if sources
                            else np.zeros((0, replicates), dtype=int))
        else:
            candidates[group] = [(group, s) for s in sorted({s for v in acts.values() for s in v})]
            index[group] = _stream(seed, "labels", group).integers(
                len(candidates[group]), size=(len(candidates[group]), replicates))
    # an activation's own draws (pooled: fills from its residuals; not pooled: the labels of a cell that has none
    # of the drawn ones): a fixed (replicates, n) block per cell, of which a replicate uses the first few it needs
    fills = {key: _stream(seed, "own", *key).integers(len(own[key[1]]) if pooled else len(by_seed),
                                                      size=(replicates, len(by_seed)))
             for key, by_seed in cells.items() if key[1] in own}
    for rep in range(replicates):
        out = {}
        for group, acts in groups.items():
            drawn = [candidates[group][i] for i in index[group][:, rep]]
            for act, by_seed in acts.items():
                n, key = len(by_seed), (group, act)
                if n < 2 and not pooled or act not in own:
                    out[key] = means[key]
                    continue
                picked = [residual[(g, act, s)] for g, s in drawn if (g, act, s) in residual][:n]
                if pooled:
                    picked += list(own[act][fills[key][rep, :n - len(picked)]])
                elif not picked:
                    labels = sorted(by_seed)
                    picked = [residual[(group, act, labels[i])] for i in fills[key][rep]]
                out[key] = means[key] + float(np.mean(picked))
        yield out
