"""Power of `ncn bench model --processes N --steps R` for causal/none at s, 2 threads, from the tenth
session's 18 processes (20 rounds each): simulate N process medians ~ Normal(median, sd_R) and count how often
the bench's interval (ncn.bench.median_ci over the processes) ends below 1.05."""
import csv, random, statistics, sys
from ncn.bench import median_ci
D = "bench/measured/cpu_2026-12-02_tenth/"
rows = [r for f in ("model_s_2threads_6proc_processes.csv", "model_s_2threads_12proc_processes.csv")
        for r in csv.DictReader(open(D + f)) if r["variant"] == "causal"]
meds = [float(r["ratio_to_none_paired"]) for r in rows]
half = [(float(r["ratio_to_none_hi"]) - float(r["ratio_to_none_lo"])) / 2 for r in rows]
m, sd = statistics.median(meds), statistics.stdev(meds)
within = statistics.median(half) / 1.96  # the sd of one process's median from its own 20 rounds
print(f"18 processes x 20 rounds: median {m:.4f}, sd between processes {sd:.4f}, "
      f"sd of a median within a process (from its interval) {within:.4f}")
rng = random.Random(0)
for n, rounds in ((6, 20), (12, 20), (6, 60), (12, 60), (18, 40)):
    for label, s in (("all of the spread is rounds", sd * (20 / rounds) ** 0.5), ("none of it is", sd)):
        hits = 0
        for _ in range(4000):
            ci = median_ci([rng.gauss(m, s) for _ in range(n)])
            hits += ci is not None and ci[1] <= 1.05
        print(f"{n:2d} processes x {rounds} rounds, {label:28s}: interval below 1.05 in {hits / 4000:.0%}")
