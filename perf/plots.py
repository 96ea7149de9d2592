"""PNG plots made from the results JSON: per-token latency distributions and speedups."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from . import extra
from .compare import Comparison

if TYPE_CHECKING:
    import pyperf

_COLORS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860")


def per_token_values(bench: pyperf.Benchmark) -> tuple[list[float], str]:
    """Values in microseconds per token (per step when the step made no tokens, or per dispatch)."""
    meta = bench.get_metadata()
    values = list(bench.get_values())
    unit = meta.get("hostpgo_unit", "value")
    tps = meta.get("hostpgo_tokens_per_step")
    if unit == "step" and isinstance(tps, (int, float)) and tps > 0:
        return [v / tps * 1e6 for v in values], "us per token"
    return [v * 1e6 for v in values], f"us per {unit}"


def latency_distributions(suites: dict[str, pyperf.BenchmarkSuite], order: list[str], dest: Path) -> Path:
    """One panel per benchmark: box plot with every value overlaid, one box per interpreter."""
    names = [n for n in suites[order[0]].get_benchmark_names()
             if all(n in suites[o].get_benchmark_names() for o in order)]
    ncols = min(3, len(names)) or 1
    nrows = (len(names) + ncols - 1) // ncols
    plt = extra.pyplot()
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.8 * nrows), squeeze=False)
    for ax, bname in zip(axes.flat, names):
        data, label = [], ""
        for interp in order:
            vals, label = per_token_values(suites[interp].get_benchmark(bname))
            data.append(vals)
        ax.boxplot(data, showfliers=False, widths=0.5, medianprops={"color": "black"})
        for i, vals in enumerate(data, start=1):
            jitter = [i + (k % 7 - 3) * 0.035 for k in range(len(vals))]
            ax.scatter(jitter, vals, s=9, alpha=0.55, color=_COLORS[(i - 1) % len(_COLORS)], zorder=3)
        ax.set_xticks(range(1, len(order) + 1), order, rotation=12, fontsize=8)
        ax.set_title(bname, fontsize=10)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    fig.suptitle("Latency distribution per interpreter (lower is better)", fontsize=11)
    fig.tight_layout()
    dest.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(dest, dpi=110)
    plt.close(fig)
    return dest


def speedups(comparisons: list[Comparison], dest: Path, title: str) -> Path:
    """Horizontal bars of speedup vs baseline per benchmark; hatched grey bars are not significant."""
    rows = [(c.changed, r) for c in comparisons for r in c.rows]
    height = max(2.4, 0.42 * (len(rows) + len(comparisons)) + 1.2)
    plt = extra.pyplot()
    fig, ax = plt.subplots(figsize=(7.5, height))
    labels, ys = [], []
    y = 0
    for ci, comp in enumerate(comparisons):
        color = _COLORS[(ci + 1) % len(_COLORS)]
        for row in comp.rows:
            sp = row.speedup
            ax.barh(y, sp - 1.0, left=1.0, color=color if row.significant else "#BBBBBB",
                    hatch=None if row.significant else "//", edgecolor="white")
            ax.text(sp, y, f" {sp:.3f}x" + ("" if row.significant else " (n.s.)"),
                    va="center", ha="left" if sp >= 1 else "right", fontsize=8)
            labels.append(f"{row.name} [{comp.changed}]")
            ys.append(y)
            y += 1
        geo = comp.geomean_speedup
        ax.barh(y, geo - 1.0, left=1.0, color=color, alpha=0.5, edgecolor="black")
        ax.text(geo, y, f" {geo:.3f}x", va="center", ha="left" if geo >= 1 else "right", fontsize=8,
                fontweight="bold")
        labels.append(f"geometric mean [{comp.changed}]")
        ys.append(y)
        y += 1.5
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(ys, labels, fontsize=8)
    ax.invert_yaxis()
    lo = min([1.0] + [r.speedup for _, r in rows] + [c.geomean_speedup for c in comparisons])
    hi = max([1.0] + [r.speedup for _, r in rows] + [c.geomean_speedup for c in comparisons])
    pad = max(0.02, (hi - lo) * 0.25)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_xlabel(f"speedup vs {comparisons[0].baseline} (median ratio; >1 is faster)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    dest.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(dest, dpi=110)
    plt.close(fig)
    return dest


COUNTER_METRICS = ("instructions", "branch-misses", "L1-icache-load-misses", "cycles")


def counter_ratios(per_unit: dict[str, dict[str, dict[str, float | None]]], baseline: str, order: list[str],
                   backend: str, dest: Path) -> Path | None:
    """Grouped bars: each counter per unit of work relative to the baseline (below 1 is fewer).

    `per_unit` is target -> interpreter -> metric -> value.
    """
    panels = []
    for target, by_interp in per_unit.items():
        base = by_interp.get(baseline, {})
        metrics = [m for m in COUNTER_METRICS if (base.get(m) or 0) >= 1]
        if metrics:
            panels.append((target, by_interp, base, metrics))
    others = [o for o in order if o != baseline]
    if not panels or not others:
        return None
    plt = extra.pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.6), squeeze=False)
    width = 0.8 / len(others)
    for ax, (target, by_interp, base, metrics) in zip(axes.flat, panels):
        for k, name in enumerate(others):
            ratios = [(by_interp[name].get(m) or 0) / base[m] for m in metrics]
            xs = [i + (k - (len(others) - 1) / 2) * width for i in range(len(metrics))]
            ax.bar(xs, [r - 1.0 for r in ratios], bottom=1.0, width=width,
                   color=_COLORS[(k + 1) % len(_COLORS)], label=name)
            for x, r in zip(xs, ratios):
                ax.text(x, r, f"{r:.3f}", ha="center", va="bottom" if r >= 1 else "top", fontsize=7)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(metrics)), [m.replace("-load-misses", " misses") for m in metrics],
                      rotation=15, fontsize=8)
        lo = min(1.0, *[(by_interp[n].get(m) or 0) / base[m] for n in others for m in metrics])
        hi = max(1.0, *[(by_interp[n].get(m) or 0) / base[m] for n in others for m in metrics])
        pad = max(0.02, (hi - lo) * 0.3)
        ax.set_ylim(max(0.0, lo - pad), hi + pad)
        ax.set_title(target, fontsize=10)
        ax.set_ylabel(f"per unit, relative to {baseline}")
        ax.grid(axis="y", alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    sim = " (cachegrind: exact instructions, simulated misses)" if backend == "cachegrind" else ""
    fig.suptitle(f"Counters per unit of work vs {baseline}{sim}; below 1 is fewer", fontsize=10)
    fig.tight_layout()
    dest.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(dest, dpi=110)
    plt.close(fig)
    return dest


def search_counts(rows: list[tuple[str, float, str]], baseline: str, dest: Path) -> Path:
    """autotune's screening: one bar per candidate, its instruction ratio to `baseline` (geometric mean over the
    screening targets; below 1 is fewer); `rows` are (candidate, ratio, verdict), survivors coloured."""
    plt = extra.pyplot()
    fig, ax = plt.subplots(figsize=(7.5, max(2.4, 0.36 * len(rows) + 1.2)))
    for y, (_name, ratio, verdict) in enumerate(rows):
        ax.barh(y, ratio - 1.0, left=1.0, color=_COLORS[2] if verdict == "survives" else "#BBBBBB",
                edgecolor="white")
        ax.text(ratio, y, f" {ratio:.4f}", va="center", ha="left" if ratio >= 1 else "right", fontsize=8)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=8)
    ax.invert_yaxis()
    lo, hi = min(1.0, *(r[1] for r in rows)), max(1.0, *(r[1] for r in rows))
    pad = max(0.005, (hi - lo) * 0.3)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_xlabel(f"instructions per unit vs {baseline} (cachegrind; below 1 is fewer)")
    ax.set_title("autotune screening (green: survives)", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    dest.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(dest, dpi=110)
    plt.close(fig)
    return dest
