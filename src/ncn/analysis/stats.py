"""Small statistics used by every aggregate: t-intervals over seeds and verdict rules.

Conventions: a confidence interval that cannot be computed (fewer than 2 values, or a
non-finite input) is (nan, nan), and any verdict that depends on it is "inconclusive". A claim
whose premise does not hold in a profile (another tokenizer, another budget) is "not applicable".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

SUPPORTED = "supported"
NOT_SUPPORTED = "not supported"
INCONCLUSIVE = "inconclusive"
NOT_APPLICABLE = "not applicable"
VERDICTS = (SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE, NOT_APPLICABLE)


@dataclass(frozen=True)
class Interval:
    """Mean of n values with a two-sided t confidence interval (nan when n < 2)."""

    mean: float
    low: float
    high: float
    n: int
    sd: float

    @property
    def half(self) -> float:
        return (self.high - self.low) / 2

    @property
    def defined(self) -> bool:
        return math.isfinite(self.low) and math.isfinite(self.high)

    def as_dict(self, prefix: str = "") -> dict:
        return {f"{prefix}mean": self.mean, f"{prefix}ci_low": self.low, f"{prefix}ci_high": self.high,
                f"{prefix}n": self.n, f"{prefix}sd": self.sd}


def t_interval(values, confidence: float = 0.95) -> Interval:
    """mean ± t_{(1+c)/2, n-1} · s/√n (s: sample SD, ddof 1). E.g. [1, 2, 3] → 2 ± 2.484."""
    x = np.asarray(list(values), dtype=float)
    n = len(x)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, math.nan)
    mean = float(x.mean())
    if n < 2 or not np.all(np.isfinite(x)):
        return Interval(mean, math.nan, math.nan, n, math.nan)
    sd = float(x.std(ddof=1))
    half = float(sps.t.ppf((1 + confidence) / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, sd)


def paired_differences(a: dict, b: dict) -> tuple[list, np.ndarray]:
    """a[k] - b[k] for the keys (seeds) both hold, in sorted key order."""
    keys = sorted(set(a) & set(b))
    return keys, np.array([a[k] - b[k] for k in keys], dtype=float)


def ci_verdict(low: float, high: float, threshold: float, side: str) -> str:
    """Judge "the statistic lies on `side` ("below"/"above") of threshold" from its CI.

    supported: the whole CI lies strictly on the claim's side; not supported: the whole CI lies
    on the other side (touching the threshold counts as the other side: the claim is strict);
    inconclusive: the CI straddles the threshold, or is undefined (fewer than two seeds). At this
    confidence, a straddling CI neither shows nor refutes the claim.
    """
    if not (math.isfinite(low) and math.isfinite(high)):
        return INCONCLUSIVE
    if side == "below":
        if high < threshold:
            return SUPPORTED
        return NOT_SUPPORTED if low >= threshold else INCONCLUSIVE
    if side == "above":
        if low > threshold:
            return SUPPORTED
        return NOT_SUPPORTED if high <= threshold else INCONCLUSIVE
    raise ValueError(f"side must be 'below' or 'above', not {side!r}")


def ab_verdict(low: float, high: float) -> str:
    """Direction of a paired difference (variant − baseline; lower is better) from its CI."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return INCONCLUSIVE
    if high < 0:
        return "better"
    if low > 0:
        return "worse"
    return "no significant difference"


def empirical_p_greater(x: float, controls) -> float:
    """One-sided rank p-value that x exceeds the control values: (1 + #{c ≥ x}) / (1 + n).

    Distribution-free; with n controls the smallest reachable p is 1/(n+1).
    """
    c = np.asarray(list(controls), dtype=float)
    c = c[np.isfinite(c)]
    if not math.isfinite(x) or len(c) == 0:
        return math.nan
    return float((1 + np.sum(c >= x)) / (1 + len(c)))


def one_way_anova(groups) -> tuple[float, float]:
    """F and p of a one-way ANOVA; (nan, nan) with < 2 groups or a group of < 2 values."""
    groups = [np.asarray(g, dtype=float) for g in groups]
    if len(groups) < 2 or any(len(g) < 2 for g in groups):
        return math.nan, math.nan
    within = sum(float(((g - g.mean()) ** 2).sum()) for g in groups)
    if within == 0.0:  # no seed-to-seed variation at all: F is infinite or undefined
        between = float(np.var([g.mean() for g in groups]))
        return (math.inf, 0.0) if between > 0 else (math.nan, math.nan)
    res = sps.f_oneway(*groups)
    return float(res.statistic), float(res.pvalue)


def spearman(x, y) -> tuple[float, float, int]:
    """Spearman's rho and two-sided p over the pairs where both are finite."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    n = int(ok.sum())
    if n < 3 or np.all(x[ok] == x[ok][0]) or np.all(y[ok] == y[ok][0]):
        return math.nan, math.nan, n
    res = sps.spearmanr(x[ok], y[ok])
    return float(res.statistic), float(res.pvalue), n


# -- claims (issue 12): prediction intervals, seed-blocked layer tests, partial rank correlation,
# -- the conjunction of a claim's legs -------------------------------------------------------------
def prediction_interval(values, confidence: float = 0.95) -> Interval:
    """Where ONE new observation from the same population falls: mean ± t_{(1+c)/2, n-1} · s · √(1 + 1/n)
    (s: sample SD, ddof 1). E.g. [1, 2, 3] → 2 ± 4.302653 · √(4/3) = 2 ± 4.968275; nan when n < 2."""
    x = np.asarray(list(values), dtype=float)
    iv = t_interval(x, confidence)
    if not iv.defined:
        return iv
    half = float(sps.t.ppf((1 + confidence) / 2, iv.n - 1)) * iv.sd * math.sqrt(1 + 1 / iv.n)
    return Interval(iv.mean, iv.mean - half, iv.mean + half, iv.n, iv.sd)


def blocked_anova(mat) -> tuple[float, float]:
    """F and p of the treatment (column) effect in a two-way ANOVA without replication, rows as
    blocks (seeds): F = [SS_col / (k-1)] / [SS_resid / ((k-1)(b-1))], the residual being what
    neither the row nor the column means explain. (nan, nan) with < 2 rows or columns; a residual of
    exactly 0 gives (inf, 0) when the columns differ, else (nan, nan)."""
    x = np.asarray(mat, dtype=float)
    if x.ndim != 2 or min(x.shape) < 2 or not np.all(np.isfinite(x)):
        return math.nan, math.nan
    b, k = x.shape
    grand = x.mean()
    ss_col = b * float(((x.mean(axis=0) - grand) ** 2).sum())
    resid = x - x.mean(axis=1, keepdims=True) - x.mean(axis=0, keepdims=True) + grand
    ss_res = float((resid**2).sum())
    df_col, df_res = k - 1, (k - 1) * (b - 1)
    if ss_res <= 1e-24 * max(1.0, float((x**2).sum())):
        return (math.inf, 0.0) if ss_col > 0 else (math.nan, math.nan)
    F = (ss_col / df_col) / (ss_res / df_res)
    return float(F), float(sps.f.sf(F, df_col, df_res))


def friedman(mat) -> tuple[float, float]:
    """Friedman's chi-square of the column effect with rows as blocks (ranks within each row,
    ties averaged, tie-corrected): Q = (k-1) Σ_j (R_j - b(k+1)/2)² / (Σ r² - b k (k+1)²/4),
    p = P(χ²_{k-1} > Q). (nan, nan) with < 2 rows or columns, or every row tied."""
    x = np.asarray(mat, dtype=float)
    if x.ndim != 2 or min(x.shape) < 2 or not np.all(np.isfinite(x)):
        return math.nan, math.nan
    b, k = x.shape
    r = np.vstack([sps.rankdata(row) for row in x])
    denom = float((r**2).sum()) - b * k * (k + 1) ** 2 / 4
    if denom <= 0:
        return math.nan, math.nan
    q = (k - 1) * float(((r.sum(axis=0) - b * (k + 1) / 2) ** 2).sum()) / denom
    return q, float(sps.chi2.sf(q, k - 1))


def partial_spearman(x, y, covariates) -> tuple[float, float, int]:
    """Spearman's rho of x and y with the covariates partialled out: the Pearson correlation of
    the residuals of rank(x) and rank(y) after a least-squares fit on [1, rank(c) for c in
    covariates], over the rows where all are finite; two-sided p from t with n - 2 - m df."""
    cols = [np.asarray(v, dtype=float) for v in (x, y, *covariates)]
    ok = np.all(np.isfinite(np.vstack(cols)), axis=0)
    n, m = int(ok.sum()), len(cols) - 2
    df = n - 2 - m
    if df < 1:
        return math.nan, math.nan, n
    ranks = [sps.rankdata(c[ok]) for c in cols]
    design = np.column_stack([np.ones(n), *ranks[2:]])
    res = [r - design @ np.linalg.lstsq(design, r, rcond=None)[0] for r in ranks[:2]]
    sx, sy = float(np.sqrt((res[0] ** 2).sum())), float(np.sqrt((res[1] ** 2).sum()))
    if sx <= 1e-9 * n or sy <= 1e-9 * n:  # a variable explained entirely by the covariates (or constant)
        return math.nan, math.nan, n
    rho = float(np.clip((res[0] @ res[1]) / (sx * sy), -1.0, 1.0))
    if abs(rho) == 1.0:
        return rho, 0.0, n
    t = rho * math.sqrt(df / (1 - rho**2))
    return rho, float(2 * sps.t.sf(abs(t), df)), n


def fisher_interval(rhos, confidence: float = 0.95) -> Interval:
    """Mean correlation over seeds with a t-interval on Fisher's z = atanh(rho), mapped back."""
    r = np.asarray(list(rhos), dtype=float)
    z = t_interval(np.arctanh(np.clip(r, -0.999999, 0.999999)), confidence)
    back = (lambda v: float(np.tanh(v)) if math.isfinite(v) else math.nan)
    return Interval(back(z.mean), back(z.low), back(z.high), z.n, z.sd)


def all_of(*verdicts: str) -> str:
    """The verdict of a claim that needs every one of its legs: refuted when one leg is, not
    applicable when one leg is, supported when all are, else inconclusive."""
    if NOT_SUPPORTED in verdicts:
        return NOT_SUPPORTED
    if NOT_APPLICABLE in verdicts:
        return NOT_APPLICABLE
    return SUPPORTED if verdicts and all(v == SUPPORTED for v in verdicts) else INCONCLUSIVE


def nan_to_none(obj):
    """JSON-friendly copy: nan/inf floats become None (JSON has no NaN), numpy scalars plain."""
    if isinstance(obj, dict):
        return {str(k): nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [nan_to_none(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


# ------------------------------------------------------------------------------------------------
# the A/B family: paired t-tests, Holm's step-down correction, and the minimum detectable effect


def paired_t_p(differences) -> float:
    """Two-sided p of the one-sample t-test of mean(differences) = 0 (paired by seed); nan with
    fewer than 2 finite values; 0 or 1 when every difference is the same nonzero or zero value."""
    d = np.asarray(list(differences), dtype=float)
    if len(d) < 2 or not np.all(np.isfinite(d)):
        return math.nan
    sd = float(d.std(ddof=1))
    if sd == 0.0:
        return 1.0 if float(d.mean()) == 0.0 else 0.0
    t = float(d.mean()) / (sd / math.sqrt(len(d)))
    return float(2 * sps.t.sf(abs(t), len(d) - 1))


def holm(pvalues) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error control), in the input order: with the
    m defined p sorted ascending, p_adj(i) = max_{j <= i} min(1, (m - j + 1) p(j)). Undefined (nan)
    p-values stay nan and do not count in m. E.g. [0.01, 0.04, 0.03] -> [0.03, 0.06, 0.06]."""
    p = np.asarray(list(pvalues), dtype=float)
    out = np.full(len(p), math.nan)
    idx = [i for i in np.argsort(p, kind="stable") if math.isfinite(p[i])]
    m, running = len(idx), 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * float(p[i])))
        out[i] = running
    return out.tolist()


def holm_verdict(mean: float, p_adj: float, alpha: float) -> str:
    """Direction of a paired difference (a − b; lower loss is better) after Holm's correction:
    "better"/"worse" when the adjusted p is below alpha, "no significant difference" otherwise,
    "inconclusive" when the test is undefined (fewer than 2 pairs)."""
    if not (math.isfinite(mean) and math.isfinite(p_adj)):
        return INCONCLUSIVE
    if p_adj < alpha:
        return "better" if mean < 0 else "worse"
    return "no significant difference"


def paired_power(effect: float, sd: float, n: int, alpha: float) -> float:
    """Power of the two-sided paired t-test at level alpha to detect a true mean difference
    `effect` with n pairs whose differences have SD `sd` (noncentral t)."""
    df = n - 1
    crit = float(sps.t.ppf(1 - alpha / 2, df))
    nc = abs(effect) / (sd / math.sqrt(n))
    upper = float(sps.nct.sf(crit, df, nc))
    lower = float(sps.nct.cdf(-crit, df, nc))  # the wrong-sign tail, tiny for nc > 0 (scipy may give nan)
    return upper + (lower if math.isfinite(lower) else 0.0)


def mde_paired(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The minimum detectable effect: the smallest |mean difference| that a two-sided paired t-test
    at level alpha detects with probability `power`, for n pairs at the measured SD of their
    differences. nan with fewer than 2 pairs or an undefined SD; 0 when the SD is 0.
    E.g. sd 1, n 5, alpha 0.05, power 0.8 -> 1.68 (the normal approximation says 1.25)."""
    if n < 2 or sd is None or not math.isfinite(sd):
        return math.nan
    if sd == 0.0:
        return 0.0
    from scipy.optimize import brentq

    hi = sd
    while paired_power(hi, sd, n, alpha) < power:
        hi *= 2
    return float(brentq(lambda e: paired_power(e, sd, n, alpha) - power, 0.0, hi, xtol=1e-12 * sd))
