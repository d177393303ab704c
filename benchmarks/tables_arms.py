"""Compare the stored `tables.py` arms: how far each is from issue 23's target, and how far any is.

Reads every benchmarks/results/tables*.json run on the full protocol (the same sets and five
seeds as results/tables.json) and prints, from their figures alone (nothing is rerun):

- per arm: the means over the sets of accuracy at 0.5, ROC AUC and log loss, and the verdict
  counts (>= the best baseline's mean, >= that mean + its sd) that `tables.py` prints;
- per set and metric: the best baseline's mean ± sd, the figure the +1 sd target needs, the best
  of all arms (an oracle that picks an arm per set after seeing the test scores: an upper bound
  on what choosing among these arms could give, not a result), and the paired difference,
  today's defaults minus the best baseline, seed by seed (mean ± sd over seeds);
- the same +1 sd test applied between the baselines: on how many sets and metrics the best
  baseline is >= the second best's mean + its sd. That is how often the target's margin
  separates two methods scikit-learn users pick between.

    .venv/bin/python benchmarks/tables_arms.py     # writes results/tables_arms.json
"""

from __future__ import annotations

import json
import statistics

from _results import RESULTS, captured, write_result
from tables import baselines_ranked, judged, mean_sd, seed_figures

DEFAULTS = "tables"  # results/tables.json: today's defaults


def arms() -> dict[str, dict[str, list[dict]]]:
    """Every stored arm on the defaults' sets and seeds, by label (the file name's tail)."""
    reference = json.loads((RESULTS / f"{DEFAULTS}.json").read_text())["figures"]
    found = {}
    for path in sorted(RESULTS.glob("tables*.json")):
        figures = json.loads(path.read_text())["figures"]
        if "results" not in figures:
            continue  # this script's own output
        same = (figures["seeds"] == reference["seeds"]
                and set(figures["results"]) == set(reference["results"]))
        if same:
            found[path.stem] = figures["results"]
    return found


def values(runs: list[dict], method: str, metric: str) -> list[float]:
    """One method's figure per seed, as the verdict reads it."""
    return seed_figures(runs, metric)[method]


def ranked(runs: list[dict], metric: str) -> list[str]:
    """The baselines, best mean first."""
    return baselines_ranked(seed_figures(runs, metric))


def arm_line(label: str, results: dict[str, list[dict]]) -> tuple[str, dict]:
    """Means over the sets and the verdict counts of one arm."""
    means = {m: statistics.mean(statistics.mean(values(runs, "pipeline", m))
                                for runs in results.values())
             for m in ("accuracy", "roc_auc", "log_loss")}
    counts = {}
    for metric in ("accuracy", "roc_auc"):
        said = [judged(statistics.mean(values(runs, "pipeline", metric)),
                       values(runs, ranked(runs, metric)[0], metric))
                for runs in results.values()]
        counts[metric] = (len(said) - said.count("BELOW best"), said.count(">=best+1sd"))
    line = (f"{label:34} acc {means['accuracy']:.4f} auc {means['roc_auc']:.4f} "
            f"logloss {means['log_loss']:.4f}   acc >=best {counts['accuracy'][0]:2d} "
            f"+1sd {counts['accuracy'][1]}   auc >=best {counts['roc_auc'][0]:2d} "
            f"+1sd {counts['roc_auc'][1]}")
    return line, {"means": means, "at_best": {m: c[0] for m, c in counts.items()},
                  "plus_sd": {m: c[1] for m, c in counts.items()}}


def main() -> None:
    """Print and store the comparison."""
    found = arms()
    defaults = found[DEFAULTS]
    figures: dict = {"arms": {}, "sets": {}}
    with captured() as printed:
        print(f"{len(found)} arms on {len(defaults)} sets x 5 seeds (11 sets each)")
        for label, results in found.items():
            line, figures["arms"][label] = arm_line(label, results)
            print(line)
        print("\nset / metric: best baseline mean ± sd, needed for +1 sd; best arm (oracle); "
              "defaults - best baseline, paired by seed; best baseline vs second +1 sd")
        separated = 0
        for name, runs in defaults.items():
            for metric in ("accuracy", "roc_auc"):
                first, second = ranked(runs, metric)[:2]
                mean, sd = mean_sd(values(runs, first, metric))
                oracle = max(found, key=lambda a: statistics.mean(
                    values(found[a][name], "pipeline", metric)))
                top = statistics.mean(values(found[oracle][name], "pipeline", metric))
                diff = mean_sd([o - b for o, b in zip(values(runs, "pipeline", metric),
                                                      values(runs, first, metric), strict=True)])
                mean2, sd2 = mean_sd(values(runs, second, metric))
                apart = mean >= mean2 + sd2
                separated += apart
                figures["sets"][f"{name}/{metric}"] = {
                    "best": first, "mean": mean, "sd": sd, "oracle_arm": oracle,
                    "oracle": top, "paired_diff": diff, "second": second,
                    "best_clears_second_plus_sd": apart}
                print(f"{name:16} {metric:8} {first:6} {mean:.4f} ± {sd:.4f} need {mean + sd:.4f}"
                      f"; oracle {top:.4f} ({oracle}){' >=+1sd' if top >= mean + sd else ''}"
                      f"; paired {diff[0]:+.4f} ± {diff[1]:.4f}; {first} vs {second}+1sd: "
                      f"{'yes' if apart else 'no'}")
        cells = figures["sets"].values()
        level = sum(v["oracle"] >= v["mean"] for v in cells)
        reached = sum(v["oracle"] >= v["mean"] + v["sd"] for v in cells)
        print(f"\nthe oracle over {len(found)} arms reaches the best baseline's mean on {level} "
              f"and its mean + sd on {reached} of {len(cells)} sets x metrics; the best "
              f"baseline clears the second best's mean + sd on {separated} of {len(cells)}")
        figures["oracle_at_best"], figures["oracle_plus_sd"] = level, reached
        figures["baselines_separated"] = separated
    write_result("tables_arms", figures, printed.getvalue())


if __name__ == "__main__":
    main()
