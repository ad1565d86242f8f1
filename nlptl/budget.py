"""The label-budget planner: what would more labels buy? (issue 28)

From a learning curve (scores of classifiers trained on growing label subsets, over seeds: `nlptl
finetune --n-labels ... --seeds ...`), fit the inverse power law that learning curves follow in
practice, score(n) = a - b * n^-c (Figueroa et al., 2012, "Predicting sample size required for
classification performance"; a: the asymptote, what unlimited labels would reach), and extrapolate
to 2x and 4x the largest count. The uncertainty comes from a bootstrap over seeds: each refit draws,
for every label count, the seeds' scores with replacement. With four or more counts the fit is also
checked against the curve itself: fitted without the largest count, it predicts that count, and the
error is reported beside the plan (the numbers any user can weigh the plan by).
"""

from __future__ import annotations

import math
import random
import statistics

FACTORS = (2, 4)  # the budgets planned for: twice and four times the largest label count
BOOTSTRAPS = 200
MIN_COUNTS = 3  # three parameters
GROWING = ("accuracy", "f1_macro", "f1_micro")  # scores at most 1 that rise with labels: what the law fits


def _law(n, a, b, c):
    return a - b * n ** (-c)


def fit(points: list[tuple[int, float]], bounded: bool = True) -> tuple[float, float, float] | None:
    """(a, b, c) of score = a - b n^-c by least squares over every (n, score) point; None when it fails.
    `bounded`: the score is at most 1 (accuracy, F1), so is the asymptote."""
    import numpy as np
    from scipy.optimize import curve_fit

    n = np.array([p[0] for p in points], dtype=float)
    y = np.array([p[1] for p in points], dtype=float)
    top = 1.0 if bounded else np.inf
    spread = max(float(y.max() - y.min()), 1e-3)
    start = (min(float(y.max()) + spread / 2, top if bounded else float(y.max()) + spread),
             spread * float(n.min()) ** 0.5, 0.5)
    try:
        params, _ = curve_fit(_law, n, y, p0=start, bounds=([float(y.min()) - 1, 0.0, 0.01], [top, np.inf, 3.0]),
                              maxfev=20000)
    except (RuntimeError, ValueError):
        return None
    return tuple(float(p) for p in params)


def _by_count(runs: list[dict], key: str) -> dict[int, list[float]]:
    out: dict[int, list[float]] = {}
    for r in runs:
        if r.get(key) is not None and not (isinstance(r[key], float) and math.isnan(r[key])):
            out.setdefault(int(r["n_train"]), []).append(float(r[key]))
    return dict(sorted(out.items()))


def plan(runs: list[dict], key: str = "accuracy", factors=FACTORS, seed: int = 0, bounded: bool = True) -> dict:
    """The plan for one model's curve (`runs`: one dict per trained point with `n_train` and `key`).
    {"ok": False, "why": ...} when the curve cannot carry a fit."""
    counts = _by_count(runs, key)
    if len(counts) < MIN_COUNTS:
        return {"ok": False, "why": f"{len(counts)} label count(s); the fit needs {MIN_COUNTS} or more "
                                    "(--n-labels with three or more values)"}
    means = {n: statistics.fmean(ys) for n, ys in counts.items()}
    smallest, largest = min(means), max(means)
    if means[largest] <= means[smallest]:  # flat or falling: nothing to extrapolate (a rate too high, chance)
        return {"ok": False, "why": f"the curve does not rise with labels ({key} {means[smallest]:.3f} at {smallest}, "
                                    f"{means[largest]:.3f} at {largest}); check the runs before buying labels"}
    points = [(n, y) for n, ys in counts.items() for y in ys]
    params = fit(points, bounded)
    if params is None:
        return {"ok": False, "why": "the inverse power law did not converge on this curve"}
    now = means[largest]
    targets = [largest * f for f in factors]
    rng = random.Random(seed)
    draws: list[list[float]] = []
    for _ in range(BOOTSTRAPS):
        sample = [(n, rng.choice(ys)) for n, ys in counts.items() for _ in ys]
        p = fit(sample, bounded)
        if p is not None:
            draws.append([_law(t, *p) - _law(largest, *p) for t in targets])
    predictions = []
    for i, (f, t) in enumerate(zip(factors, targets, strict=True)):
        gain = _law(t, *params) - _law(largest, *params)
        sd = statistics.stdev(d[i] for d in draws) if len(draws) > 1 else None
        predictions.append({"factor": f, "n_labels": t, "expected": now + gain, "gain": gain, "sd": sd})
    out = {"ok": True, "n_labels": largest, "score": now, "metric": key, "asymptote": params[0],
           "fit": {"a": params[0], "b": params[1], "c": params[2], "points": len(points), "counts": list(counts)},
           "bootstraps": len(draws), "predictions": predictions}
    if len(counts) > MIN_COUNTS:
        out["backtest"] = backtest(runs, key, bounded)
    return out


def backtest(runs: list[dict], key: str = "accuracy", bounded: bool = True) -> dict | None:
    """Fit without the largest label count, predict it: the extrapolation's error on this very curve."""
    counts = _by_count(runs, key)
    largest = max(counts)
    held = [(n, y) for n, ys in counts.items() if n != largest for y in ys]
    params = fit(held, bounded)
    if params is None:
        return None
    predicted, measured = _law(largest, *params), statistics.fmean(counts[largest])
    return {"held_out_n": largest, "fitted_on": sorted(n for n in counts if n != largest), "predicted": predicted,
            "measured": measured, "error": predicted - measured}


def sentence(name: str, p: dict) -> str:
    """The plan in one line: "+1.8 points at 2x labels (1000) ± 0.6; ..."."""
    if not p["ok"]:
        return f"label budget for {name}: no plan ({p['why']})"
    parts = [f"{100 * q['gain']:+.1f} points at {q['factor']}x labels ({q['n_labels']})"
             + (f" ± {100 * q['sd']:.1f}" if q["sd"] is not None else "") for q in p["predictions"]]
    check = p.get("backtest")
    tail = (f"; fitted without {check['held_out_n']} labels it predicted {100 * check['predicted']:.1f}, "
            f"measured {100 * check['measured']:.1f}" if check else "")
    return (f"label budget for {name} ({p['metric']} {100 * p['score']:.1f} at {p['n_labels']} labels): "
            + "; ".join(parts) + f" (inverse power law; asymptote {100 * p['asymptote']:.1f}{tail})")
