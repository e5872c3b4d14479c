"""
The numbers behind the README's sentences: paired differences between variants, and how
many real words a model's samples hold.

Paired: runs of one seed share their initial weights and their batches, so the
difference between two encodings is measured seed by seed, and its spread over seeds is
what decides a ranking. For n seeds with differences d_1..d_n the table gives the mean,
the 95% confidence interval mean ± t(0.975, n-1) · sd / sqrt(n), and in how many seeds
the sign agrees with the mean's. Where the interval contains 0 the data do not rank the two.
"""

import math
import re
import statistics


def t_quantile(p, df):
    """The p-quantile of Student's t distribution with df degrees of freedom (p > 0.5),
    by bisection on its CDF, which is integrated from the density with Simpson's rule."""
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)

    def cdf(x, n=2000):  # P(T <= x) for x >= 0: 1/2 plus the density's integral over [0, x]
        h = x / n
        f = [c * (1 + (i * h) ** 2 / df) ** (-(df + 1) / 2) for i in range(n + 1)]
        return 0.5 + h / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))

    lo, hi = 0.0, 1.0
    while cdf(hi) < p:
        hi *= 2
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def mean_std(values, fmt="{:.4f}"):
    """"mean ± std" over seeds in `fmt` (the value alone for one seed), as every table here writes it."""
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}"


def paired(a, b):
    """Per-seed differences a - b (dicts seed -> value, seeds in both), their mean, 95%
    confidence interval (None with one seed) and how many have the mean's sign."""
    seeds = sorted(a.keys() & b.keys())
    d = [a[s] - b[s] for s in seeds]
    mean = statistics.mean(d)
    ci = None
    if len(d) > 1:
        half = t_quantile(0.975, len(d) - 1) * statistics.stdev(d) / math.sqrt(len(d))
        ci = (mean - half, mean + half)
    agree = sum(1 for x in d if x * mean > 0)  # a difference of exactly 0 agrees with neither sign
    return {"seeds": seeds, "diffs": d, "mean": mean, "ci": ci, "agree": agree}


def verdict(result):
    """'lower', 'higher' or 'undecided' for the first of the pair, from the interval."""
    ci = result["ci"]
    if ci is None or ci[0] <= 0 <= ci[1]:
        return "undecided"
    return "lower" if ci[1] < 0 else "higher"


def paired_table(values, pairs, labels):
    """Markdown table of paired differences of final losses. values: {variant: {"val"|"test":
    {seed: value}}}; pairs: [(a, b)]; labels: {variant: label}. The verdict is given for both
    splits: val is the split every choice (best checkpoint, learning rate) was made on, test
    is held out from all of them."""
    lines = ["| a − b (final loss, per seed) | val: per seed | val: mean [95% CI] | val: same sign "
             "| test: mean [95% CI] | test: same sign | verdict: val / test |",
             "|---|---|---|---:|---|---:|---|"]
    for a, b in pairs:
        v, t = paired(values[a]["val"], values[b]["val"]), paired(values[a]["test"], values[b]["test"])
        lines.append(f"| {labels[a]} − {labels[b]} | {', '.join(f'{x:+.4f}' for x in v['diffs'])} "
                     f"| {mean_ci(v)} | {v['agree']}/{len(v['diffs'])} | {mean_ci(t)} | {t['agree']}/{len(t['diffs'])} "
                     f"| {VERDICTS[verdict(v)]} / {VERDICTS[verdict(t)]} |")
    return "\n".join(lines)


def mean_ci(result):
    ci = result["ci"]
    return f"{result['mean']:+.4f} " + ("(1 seed)" if ci is None else f"[{ci[0]:+.4f}, {ci[1]:+.4f}]")


VERDICTS = {"lower": "a lower", "higher": "a higher", "undecided": "not decided"}


# --- overfitting ----------------------------------------------------------------------

IMPROVING = 3  # a run is still improving when one of its last this many evaluations set a new best val loss


def still_improving(val):
    """Whether a run's val losses (one per evaluation) reached a new best in one of the last IMPROVING."""
    return len(val) > IMPROVING and min(val[-IMPROVING:]) < min(val[:-IMPROVING])


# A turn: the val curve ends at least TURN_NATS above its lowest point, each point the mean of
# TURN_WINDOW consecutive evaluations, and the rise also exceeds TURN_SIGMAS times one
# evaluation's noise: a conservative heuristic, not a test (the difference of two such means
# has sd about 0.63σ before the choice of the lowest one adds to it).
TURN_NATS, TURN_SIGMAS, TURN_WINDOW = 0.02, 3, 5


def turn(val):
    """Whether a val curve (losses at evenly spaced evaluations) has turned up by its end, read
    on the means of each TURN_WINDOW consecutive evaluations, from their lowest to their last,
    so one lucky or unlucky evaluation neither makes nor hides a turn. The rise is 0 when the
    last mean is the lowest: still falling, or turned only within its last evaluations. The
    noise σ is the evaluation-to-evaluation wobble over the second half: for a straight trend
    plus independent noise of sd σ, successive differences have sd σ√2 around their mean (a
    bend in the curve inflates it, which errs towards "no turn"). With fewer than
    2 · TURN_WINDOW evaluations there is no noise estimate and no verdict."""
    best = min(range(len(val)), key=val.__getitem__)
    means = [statistics.mean(val[i:i + TURN_WINDOW]) for i in range(max(1, len(val) - TURN_WINDOW + 1))]
    half = val[len(val) // 2:]
    noise = None
    if len(val) >= 2 * TURN_WINDOW:
        noise = statistics.stdev([b - a for a, b in zip(half, half[1:])]) / math.sqrt(2)
    rise = means[-1] - min(means)
    turned = noise is not None and rise >= TURN_NATS and rise > TURN_SIGMAS * noise
    return {"best": best, "lowest_mean": min(means), "last_mean": means[-1], "rise": rise, "noise": noise,
            "turned": turned}


# --- samples ------------------------------------------------------------------------

WORD = re.compile(r"[A-Za-z']+")


def words(text):
    """Lower-cased words: maximal runs of letters and apostrophes."""
    return [w.lower() for w in WORD.findall(text)]


def real_word_shares(samples, vocabulary, long=5):
    """Share of all generated words (every occurrence counts) that occur in `vocabulary`, and
    the same among words of at least `long` letters (apostrophes do not count as letters);
    None where there are no such words."""
    ws = [w for text in samples for w in words(text)]
    longs = [w for w in ws if len(w) - w.count("'") >= long]
    share = lambda xs: sum(w in vocabulary for w in xs) / len(xs) if xs else None  # noqa: E731
    return {"words": len(ws), "real": share(ws), "long_words": len(longs), "real_long": share(longs)}
