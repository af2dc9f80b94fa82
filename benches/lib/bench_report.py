"""Reports of the benches/compare-*.sh scripts, from the TSV that benches/lib/bench.sh's `step`
writes (tool, step, round, wall seconds, peak RSS KiB, 1-minute load before the step).

As a module (`sys.path.insert(0, "benches/lib"); import bench_report`), or from the shell:

    bench_report.py table TSV [--rate COUNT UNIT] PEER OURS LABEL=STEP|LABEL=PEER_STEP:OURS_STEP...
    bench_report.py ratio TSV [--rate COUNT UNIT] PEER PEER_STEP OURS OURS_STEP
    bench_report.py footer TSV COMMAND CORES MEM_GIB

A step of `-` (LABEL=-:STEP) is one the peer has no counterpart for. In seconds the ratio is
PEER / OURS (time), with --rate OURS / PEER (COUNT per second): either way, how many times
faster OURS is.
"""
import statistics
import sys


def load(tsv):
    """The rows of TSV: (tool, step, round, secs, rss_kib, load)."""
    rows = []
    for line in open(tsv):
        if line.strip():
            t, st, r, s, k, l = line.rstrip("\n").split("\t")[:6]
            rows.append((t, st, r, float(s), int(k), float(l)))
    return rows


def of(rows, tool, step):
    """(secs, rss_kib, load) of every round of TOOL's STEP."""
    return [(s, k, l) for t, st, _, s, k, l in rows if t == tool and st == step]


def values(xs, rate=None):
    return [rate / x[0] if rate else x[0] for x in xs]


def ratio(rows, peer, peer_step, ours, ours_step, rate=None):
    """How many times faster OURS is: median time PEER / OURS, or median rate OURS / PEER."""
    p, o = values(of(rows, peer, peer_step), rate), values(of(rows, ours, ours_step), rate)
    if not p or not o:
        return None
    return statistics.median(o) / statistics.median(p) if rate else statistics.median(p) / statistics.median(o)


def spread(vs, fmt):
    if not vs:
        return "–"
    return f"{statistics.median(vs):{fmt}} [{min(vs):{fmt}}–{max(vs):{fmt}}]"


def table(rows, peer, ours, steps, rate=None, unit="s"):
    """Markdown table, a row per (LABEL, PEER_STEP or None, OURS_STEP): medians [min–max] over the
    rounds, the ratio, the largest peak RSS of either tool and the median load before the steps."""
    r_head = f"{ours} / {peer}" if rate else f"{peer} / {ours}"
    out = [f"| step | {peer} {unit} | {ours} {unit} | {r_head} | peak RSS MiB {peer} / {ours} | load before (median) |",
           "| --- | --- | --- | --- | --- | --- |"]
    for label, peer_step, ours_step in steps:
        p = of(rows, peer, peer_step) if peer_step else []
        o = of(rows, ours, ours_step) if ours_step else []
        pv, ov = values(p, rate), values(o, rate)
        fmt = ".2f"
        if rate:
            fmt = ",.0f" if max(pv + ov, default=0) >= 100 else ".1f"
        r = ratio(rows, peer, peer_step, ours, ours_step, rate) if p and o else None
        rss = " / ".join(f"{max(x[1] for x in xs) / 1024:.0f}" if xs else "–" for xs in (p, o))
        load_ = statistics.median([x[2] for x in p + o]) if p + o else 0.0
        out.append(f"| {label} | {spread(pv, fmt)} | {spread(ov, fmt)} | "
                   f"{'–' if r is None else f'{r:.2f}×'} | {rss} | {load_:.2f} |")
    return "\n".join(out)


def footer(rows, command, cores, mem):
    per_step = {}
    for t, st, r, *_ in rows:
        per_step.setdefault((t, st), set()).add(r)
    counts = sorted({len(v) for v in per_step.values()})
    rounds = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    loads = [x[5] for x in rows]
    return (f"`{command}`; {cores} cores, {mem} GiB; memory touched first, `sync` before each step, "
            f"the tools alternating which goes first; medians over {rounds} rounds, [min–max]; "
            f"peak RSS is the largest of the rounds; load is the 1-minute load average before a step "
            f"(over all steps: median {statistics.median(loads):.2f}, [{min(loads):.2f}–{max(loads):.2f}]).")


def _rate(args):
    if args[:1] == ["--rate"]:
        return float(args[1]), args[2], args[3:]
    return None, "s", args


def _main(argv):
    cmd, tsv, args = argv[0], argv[1], argv[2:]
    rows = load(tsv)
    if cmd == "table":
        rate, unit, args = _rate(args)
        peer, ours, specs = args[0], args[1], args[2:]
        steps = []
        for spec in specs:
            label, _, st = spec.rpartition("=")
            ps, _, os_ = st.partition(":") if ":" in st else (st, "", st)
            steps.append((label, None if ps == "-" else ps, None if os_ == "-" else os_))
        print(table(rows, peer, ours, steps, rate, unit))
    elif cmd == "ratio":
        rate, _, args = _rate(args)
        r = ratio(rows, *args, rate=rate)
        print("–" if r is None else f"{r:.2f}")
    elif cmd == "footer":
        print(footer(rows, *args))
    else:
        sys.exit(f"unknown report {cmd}")


if __name__ == "__main__":
    _main(sys.argv[1:])
