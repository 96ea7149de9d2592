"""Render a run directory's JSON into report.md, comparison.json and PNG plots (regenerable at any time)."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

from . import plots, results
from . import stack as stackmod
from .attribute import group_of
from .compare import Comparison, compare_suites
from .counters import IPC_MODEL_TEXT
from .errors import ResultsError

REPORT = "report.md"
COMPARISON = "comparison.json"


def _fmt_time(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.3f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3f} ms"
    if seconds >= 1e-6:
        return f"{seconds * 1e6:.2f} us"
    return f"{seconds * 1e9:.1f} ns"


def _fmt_num(x: float | None) -> str:
    if x is None:
        return "n/a"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.3f}"


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def _comparison_json(c: Comparison) -> dict:
    return {
        "baseline": c.baseline, "changed": c.changed, "geomean_ratio": c.geomean_ratio,
        "geomean_speedup": c.geomean_speedup, "geomean_significant": c.geomean_significant,
        "geomean_t": c.geomean_t, "geomean_df": c.geomean_df, "only_baseline": list(c.only_baseline),
        "only_changed": list(c.only_changed),
        "rows": [{"name": r.name, "unit": r.unit, "base_median": r.base_median, "base_stdev": r.base_stdev,
                  "changed_median": r.changed_median, "changed_stdev": r.changed_stdev, "ratio": r.ratio,
                  "speedup": r.speedup, "significant": r.significant, "t_score": r.t_score,
                  "n_base": r.n_base, "n_changed": r.n_changed, "tested_on": r.tested_on, "k_base": r.k_base,
                  "k_changed": r.k_changed, "verdict": r.verdict()} for r in c.rows],
    }


def _comparison_table(c: Comparison, per_token: dict[str, float] | None = None) -> list[str]:
    headers = ["benchmark", f"{c.baseline} median ± sd", f"{c.changed} median ± sd", "ratio", "verdict", "t", "values"]
    rows = []
    for r in c.rows:
        name = r.name
        base = f"{_fmt_time(r.base_median)} ± {_fmt_time(r.base_stdev)}"
        chg = f"{_fmt_time(r.changed_median)} ± {_fmt_time(r.changed_stdev)}"
        tps = (per_token or {}).get(r.name)
        if tps and tps != 1:
            base += f" ({_fmt_time(r.base_median / tps)}/token)"
            chg += f" ({_fmt_time(r.changed_median / tps)}/token)"
        verdict = r.verdict() if r.significant else "*not significant*"
        t = "" if r.t_score is None else f"{r.t_score:.2f}"
        tested = "" if r.tested_on == "values" else f" ({r.k_base}/{r.k_changed} processes)"
        rows.append([name, base, chg, f"{r.ratio:.3f}", verdict, t, f"{r.n_base}/{r.n_changed}{tested}"])
    geo = (f"**{c.geomean_speedup:.3f}x faster**" if c.geomean_ratio < 1
           else f"**{c.geomean_ratio:.3f}x slower**")
    if not any(r.significant for r in c.rows):
        geo += " (no benchmark differs significantly)"
    geo += "; the geometric mean itself: " + ("significant" if c.geomean_significant else "*not significant*")
    t = "" if c.geomean_t is None or math.isinf(c.geomean_t) else f"{c.geomean_t:.2f}"
    rows.append(["**geometric mean**", "", "", f"**{c.geomean_ratio:.3f}**", geo, t, ""])
    return _table(headers, rows)


def _interpreters_section(record: dict) -> list[str]:
    rows = []
    replaced = any(i.get("wheels") for i in record["interpreters"])
    for i in record["interpreters"]:
        flags = [f for f in ("--enable-optimizations", "--with-lto") if f in i.get("config_args", "")]
        linked = i.get("libpython_loaded")
        flags.append("libpython: " + ("shared object" if linked else "static in the executable"
                                       if linked is not None else "?"))
        rows.append([i["name"] + (" (baseline)" if i["name"] == record["baseline"] else ""), i["version"],
                     f"`{i['python']}`", i.get("origin", ""), i.get("manifest_digest", "none")[:12],
                     i.get("exe_sha256", "")[:12], " ".join(flags) or "-",
                     _host_cell(i) + _pycs_cell(record.get("venvs", {}).get(i["name"], {}))]
                    + ([_wheels_cell(i, record.get("venvs", {}).get(i["name"], {}))] if replaced else []))
    return ["## Interpreters", ""] + _table(
        ["name", "version", "python", "origin", "manifest sha256", "executable sha256", "build", "host settings"]
        + (["replaced wheels"] if replaced else []), rows) + [""]


def _wheels_cell(interp: dict, venv: dict) -> str:
    """The wheels a subject's venv installs instead of the wheelhouse's (`--interp ...+wheel:W.whl`), and what
    differs from the stock wheel; `stock` for a subject that installs the wheelhouse as it is."""
    if not interp.get("wheels"):
        return "stock"
    by_file = {w.get("file"): w for w in venv.get("wheels", [])}
    cells = []
    for w in interp["wheels"]:
        v = by_file.get(w["file_name"], {})
        differ = f"; {len(v['changed_files'])} files differ from `{v['replaces']}`" if "changed_files" in v else ""
        cells.append(f"`{w['distribution']} {w['version']}` (sha256 {w['sha256'][:12]}{differ})")
    return "; ".join(cells)


def replaced_libraries(record: dict) -> dict[str, list[str]]:
    """Per subject with replaced wheels: the base names of the native libraries that differ from the stock
    wheel (as perf report names shared objects), from the venv record of run.json."""
    out: dict[str, list[str]] = {}
    for name, venv in record.get("venvs", {}).items():
        libs = [os.path.basename(f) for w in venv.get("wheels", []) for f in w.get("changed_files", [])
                if re.search(r"\.so(\.\d+)*$", f)]
        if libs:
            out[name] = list(dict.fromkeys(libs))
    return out


def _host_cell(interp: dict) -> str:
    """The subject's host settings: name and the levers that differ from the defaults."""
    hs = interp.get("host_settings")
    if not hs:
        return "-"
    from hostenv import HostSettings

    return f"`{hs.get('name', '?')}`: {HostSettings.from_json(hs).summary()}"


def _pycs_cell(venv: dict) -> str:
    """The venv's precompiled pycs, when the subject's settings asked for them (start-up targets depend on it)."""
    pc = venv.get("precompiled")
    if not pc:
        return ""
    ranges = ", no debug ranges" if pc.get("no_debug_ranges") else ""
    return f"; venv pycs: {pc.get('mode')}{ranges} ({pc.get('compiled')} files precompiled)"


def _latency_section(run_dir: Path, record: dict, out: dict) -> list[str]:
    lat = record.get("latency")
    if not lat:
        return []
    suites = results.load_suites(run_dir, lat["files"])
    order = [i["name"] for i in record["interpreters"] if i["name"] in suites]
    base = record["baseline"]
    s = lat["settings"]
    lines = ["## Latency (pyperf, interleaved A/B)", "",
             f"{s['rounds']} rounds; in each round every interpreter runs one pyperf process "
             f"({s['warmups']} warm-up, {s['values']} values), order alternating each round; loops per value "
             f"fixed across interpreters ({', '.join(f'{k}: {v}' for k, v in lat['loops'].items())}). "
             "Ratio = median / baseline median (below 1 is faster); significance: two-tailed t-test at 95% over "
             "the processes (one sample per pyperf process, the geometric mean of its values; over the values where "
             "either side ran one process).", ""]
    per_token = {}
    for b in suites[base].get_benchmarks():
        tps = b.get_metadata().get("hostpgo_tokens_per_step")
        if isinstance(tps, (int, float)) and tps > 0:
            per_token[b.get_name()] = tps
    comps = []
    for name in order:
        if name == base:
            continue
        comp = compare_suites(suites[base], suites[name], base, name)
        comps.append(comp)
        lines += [f"### {name} vs {base}", ""] + _comparison_table(comp, per_token) + [""]
    out["latency"] = [_comparison_json(c) for c in comps]
    plots_dir = run_dir / record.get("_plots", "plots")
    p = plots.latency_distributions(suites, order, plots_dir / "latency_distribution.png")
    lines += [f"![latency distributions]({p.relative_to(run_dir)})", ""]
    if comps:
        p = plots.speedups(comps, plots_dir / "latency_speedup.png", "Latency speedup (interleaved pyperf)")
        lines += [f"![latency speedups]({p.relative_to(run_dir)})", ""]
    return lines


def _counters_section(run_dir: Path, record: dict, out: dict) -> list[str]:
    cnt = record.get("counters")
    if not cnt:
        return []
    backend = cnt["backend"]
    base = record["baseline"]
    names = [i["name"] for i in record["interpreters"] if i["name"] in cnt["results"]]
    lines = [f"## Counters per unit of work (backend: `{backend}`)", "", f"Backend choice: {cnt['reason']}.", ""]
    if backend == "cachegrind":
        lines += ["Instruction counts are exact (valgrind); cache and branch figures are *simulated* "
                  f"(caches {cnt['config'].get('caches')}); iTLB is not simulated. "
                  f"IPC is an {IPC_MODEL_TEXT}.", ""]
    lines += ["Per unit = (count at N2 units - count at N1 units) / (N2 - N1), which removes start-up and imports. "
              "A count that does not grow with the work (below one per unit, or negative) is differencing noise; "
              "its ratio is shown as `-`.", ""]
    out_c: dict = {}
    targets = list(next(iter(cnt["results"].values())).keys()) if cnt["results"] else []
    for target in targets:
        units = cnt["results"][base][target]["units"]
        metrics: list[str] = []
        for name in names:
            for k in list(cnt["results"][name][target]["per_unit"]) + list(cnt["results"][name][target]["derived"]):
                if k not in metrics:
                    metrics.append(k)
        headers = ["metric"] + names + [f"{n} / {base}" for n in names if n != base]
        rows = []
        for m in metrics:
            vals = {}
            for name in names:
                r = cnt["results"][name][target]
                vals[name] = r["per_unit"].get(m, r["derived"].get(m))
            label = m if m != "ipc_estimate" else "IPC (estimate, model)"
            row = [label] + [_fmt_num(vals[n]) for n in names]
            for n in names:
                if n == base:
                    continue
                # A count below one per unit (or negative) did not grow with the work: it is noise of
                # the differencing, and a ratio of it means nothing. Derived rates are fine as is.
                floor = 1.0 if m in cnt["results"][base][target]["per_unit"] else 0.0
                ok = vals[n] is not None and vals[base] is not None and vals[base] > floor and vals[n] > floor
                row.append(f"{vals[n] / vals[base]:.3f}" if ok else "-")
            rows.append(row)
        unit = "dispatch" if "dispatch" in target else "step"
        lines += [f"### {target} (per {unit}; N1={units[0]}, N2={units[1]})", ""] + _table(headers, rows) + [""]
        out_c[target] = {n: cnt["results"][n][target]["per_unit"] | cnt["results"][n][target]["derived"] for n in names}
    out["counters"] = {"backend": backend, "per_unit": out_c}
    png = plots.counter_ratios(out_c, base, names, backend, run_dir / record.get("_plots", "plots") / "counters.png")
    if png is not None:
        lines += [f"![counters relative to {base}]({png.relative_to(run_dir)})", ""]
    return lines


def _object_label(dso: str) -> str:
    """The interpreter's code under one name, whether it lives in the executable or in libpython."""
    return "CPython" if group_of(dso) == "CPython" else os.path.basename(dso)


def _attribution_shift(att: dict, names: list[str], target: str, base: str, out: dict) -> list[str]:
    """Host time per library group before (baseline) and after (each subject): share x median latency.

    This is where a lever's gain came from: a group whose time per unit drops is the layer that got faster.
    Needs the latency stage for the target; without it only the shares above are shown.
    """
    medians: dict[str, float] = {}
    for comp in out.get("latency", []):
        for r in comp["rows"]:
            if r["name"] == target:
                medians[comp["baseline"]] = r["base_median"]
                medians[comp["changed"]] = r["changed_median"]
    if base not in medians or not any(n in medians for n in names if n != base):
        return []
    others = [n for n in names if n != base and n in medians]
    groups: list[str] = []
    for n in [base] + others:
        for g in att[n][target]["groups"]:
            if g not in groups:
                groups.append(g)
    rows = []
    for g in groups:
        b = att[base][target]["groups"].get(g, 0.0) / 100 * medians[base]
        row = [g, _fmt_time(b)]
        for n in others:
            c = att[n][target]["groups"].get(g, 0.0) / 100 * medians[n]
            row += [_fmt_time(c), ("+" if c >= b else "-") + _fmt_time(abs(c - b))]
        rows.append(row)
    total = ["**total (median)**", _fmt_time(medians[base])]
    for n in others:
        total += [_fmt_time(medians[n]), ("+" if medians[n] >= medians[base] else "-")
                  + _fmt_time(abs(medians[n] - medians[base]))]
    rows.append(total)
    headers = ["library", f"{base} per unit"]
    for n in others:
        headers += [f"{n} per unit", f"{n} change"]
    out.setdefault("attribution_shift", {})[target] = {
        n: {g: att[n][target]["groups"].get(g, 0.0) / 100 * medians[n] for g in groups} for n in [base] + others}
    return ["Attribution shift (host time per unit and library: sampled share x latency median; "
            "the rows that move show which layer each setting changed):", ""] + _table(headers, rows) + [""]


def _stock_twin(record: dict, name: str) -> str:
    """The subject that is `name` without its replaced wheels (same executable, same host settings), so the
    per-library shift is stock vs rewritten alone; the run's baseline where the run has no such subject."""
    by = {i["name"]: i for i in record["interpreters"]}
    me = by[name]
    for i in record["interpreters"]:
        if i["name"] != name and not i.get("wheels") and i.get("exe_sha256") == me.get("exe_sha256") \
                and (i.get("host_env") or {}) == (me.get("host_env") or {}):
            return i["name"]
    return record["baseline"]


def _replaced_library_shift(att: dict, record: dict, target: str, out: dict) -> list[str]:
    """Host time per unit of each rewritten library (share of its shared object x latency median), stock vs
    each subject whose venv replaced a wheel: which of the replaced libraries got faster, and by how much.

    "Stock" is the same interpreter and host settings without the wheels when the run has it (`_stock_twin`),
    else the baseline. The libraries are the native files whose RECORD hash differs from the stock wheel's;
    they keep their names and paths, so the same shared object is compared (and grouped alike above)."""
    medians: dict[str, float] = {}
    for comp in out.get("latency", []):
        for r in comp["rows"]:
            if r["name"] == target:
                medians[comp["baseline"]] = r["base_median"]
                medians[comp["changed"]] = r["changed_median"]
    lines: list[str] = []
    for name, libs in replaced_libraries(record).items():
        ref = _stock_twin(record, name) if name in {i["name"] for i in record["interpreters"]} else None
        if ref is None or name == ref or any(n not in att or target not in att[n] or n not in medians
                                             for n in (name, ref)):
            continue
        rows, shift = [], {}
        for lib in libs:
            b = att[ref][target]["dso"].get(lib, 0.0) / 100 * medians[ref]
            c = att[name][target]["dso"].get(lib, 0.0) / 100 * medians[name]
            shift[lib] = {"stock": b, "changed": c}
            rows.append([f"`{lib}`", f"{att[ref][target]['dso'].get(lib, 0.0):.1f}%", _fmt_time(b),
                         f"{att[name][target]['dso'].get(lib, 0.0):.1f}%", _fmt_time(c),
                         ("+" if c >= b else "-") + _fmt_time(abs(c - b))])
        b_all = sum(v["stock"] for v in shift.values())
        c_all = sum(v["changed"] for v in shift.values())
        rows.append(["**replaced libraries**", "", _fmt_time(b_all), "", _fmt_time(c_all),
                     ("+" if c_all >= b_all else "-") + _fmt_time(abs(c_all - b_all))])
        out.setdefault("replaced_library_shift", {}).setdefault(target, {})[name] = {"stock": ref, "libraries": shift}
        lines += [f"Replaced libraries, {name} vs {ref} (host time per unit: the shared object's sampled share "
                  "x latency median; a library absent from the samples shows 0):", ""]
        lines += _table(["shared object", f"{ref} share", f"{ref} per unit", f"{name} share",
                         f"{name} per unit", "change"], rows) + [""]
    return lines


def _attribution_section(record: dict, out: dict | None = None) -> list[str]:
    att = record.get("attribution")
    if not att:
        return []
    names = [i["name"] for i in record["interpreters"] if i["name"] in att]
    lines = ["## Host-time attribution by library", "",
             "Share of sampled CPU time (perf record -e cpu-clock, only over the measured units).", ""]
    targets = list(next(iter(att.values())).keys())
    for target in targets:
        groups: list[str] = []
        for n in names:
            for g in att[n][target]["groups"]:
                if g not in groups:
                    groups.append(g)
        rows = [[g] + [f"{att[n][target]['groups'].get(g, 0.0):.1f}%" for n in names] for g in groups]
        lines += [f"### {target}", ""] + _table(["library"] + names, rows) + [""]
        if record["baseline"] in names:
            lines += _attribution_shift(att, names, target, record["baseline"], out if out is not None else {})
            lines += _replaced_library_shift(att, record, target, out if out is not None else {})
        dso_rows = []
        dsos: list[str] = []
        for n in names:
            for d in att[n][target]["dso"]:
                if d not in dsos:
                    dsos.append(d)
        for d in dsos[:12]:
            dso_rows.append([f"`{d}`"] + [f"{att[n][target]['dso'].get(d, 0.0):.1f}%" for n in names])
        lines += ["Per shared object:", ""] + _table(["shared object"] + names, dso_rows) + [""]
        # Hottest functions side by side: the union of each interpreter's top entries.
        keys: list[tuple[str, str]] = []
        share: dict[str, dict[tuple[str, str], float]] = {}
        for n in names:
            share[n] = {}
            for h in att[n][target]["hottest"]:
                share[n][_object_label(h["dso"]), h["symbol"]] = h["percent"]
            for h in att[n][target]["hottest"][:8]:
                key = (_object_label(h["dso"]), h["symbol"])
                if key not in keys:
                    keys.append(key)
        lines += ["Hottest functions (share of samples; `-` where below the listing threshold):", ""]
        lines += _table(["function", "object"] + names,
                        [[f"`{sym}`", dso if dso == "CPython" else f"`{dso}`"]
                         + [f"{share[n][(dso, sym)]:.1f}%" if (dso, sym) in share[n] else "-" for n in names]
                         for dso, sym in keys])
        for n in names:
            unresolved = att[n][target].get("unresolved", {})
            if unresolved:
                lines += ["", f"{n}: samples without a symbol (stripped objects): " +
                          ", ".join(f"`{d}` {p:.1f}%" for d, p in unresolved.items())]
        lines += [""]
    return lines


def _guard_section(run_dir: Path, record: dict, out: dict) -> list[str]:
    guard = record.get("guard")
    if not guard:
        return []
    suites = results.load_suites(run_dir, guard["files"])
    base = record["baseline"]
    lines = ["## Generic guard: pyperformance subset", "",
             f"`pyperformance run` ({guard.get('mode', '')}) of: {', '.join(guard['benchmarks'])}.", ""]
    comps = []
    for i in record["interpreters"]:
        if i["name"] == base or i["name"] not in suites:
            continue
        comp = compare_suites(suites[base], suites[i["name"]], base, i["name"])
        comps.append(comp)
        lines += [f"### {i['name']} vs {base}", ""] + _comparison_table(comp) + [""]
    out["guard"] = [_comparison_json(c) for c in comps]
    if comps:
        p = plots.speedups(comps, run_dir / record.get("_plots", "plots") / "guard_speedup.png",
                           "pyperformance subset speedup")
        lines += [f"![pyperformance speedups]({p.relative_to(run_dir)})", ""]
    return lines


def _headline(record: dict, out: dict) -> list[str]:
    """One row per interpreter against the baseline: latency and instruction ratios, guard geomean."""
    base = record["baseline"]
    latency = {c["changed"]: c for c in out.get("latency", [])}
    guard = {c["changed"]: c for c in out.get("guard", [])}
    counts = out.get("counters", {}).get("per_unit", {})
    lat_names = [r["name"] for c in latency.values() for r in c["rows"]]
    lat_names = list(dict.fromkeys(lat_names))
    cnt_names = list(counts)
    headers = ["vs " + base] + [f"{n} latency" for n in lat_names] + [f"{n} instructions" for n in cnt_names]
    if guard:
        headers.append("pyperformance geomean")
    rows = []
    for i in record["interpreters"]:
        name = i["name"]
        if name == base:
            continue
        row = [name]
        for n in lat_names:
            r = next((r for r in latency.get(name, {}).get("rows", []) if r["name"] == n), None)
            row.append("-" if r is None else f"{r['ratio']:.3f}" + ("" if r["significant"] else " (n.s.)"))
        for n in cnt_names:
            b, c = counts[n].get(base, {}).get("instructions"), counts[n].get(name, {}).get("instructions")
            row.append(f"{c / b:.3f}" if b and c else "-")
        if guard:
            g = guard.get(name)
            row.append("-" if g is None else f"{g['geomean_ratio']:.3f}")
        rows.append(row)
    if not rows or len(headers) == 1:
        return []
    return ["## Headline", "",
            "Ratios to the baseline (below 1 is faster / fewer instructions); latency is the median per step or "
            "dispatch, `(n.s.)` where the difference is not significant; instructions are per unit of work.", ""] + \
        _table(headers, rows) + [""]


def build(run_dir: Path, baseline: str | None = None) -> Path:
    """(Re)generate report.md, comparison.json and plots from the run directory's JSON.

    `baseline` names another subject of the run to compare against; that report goes beside the main one
    (`report-vs-NAME.md`, `comparison-vs-NAME.json`, `plots-vs-NAME/`), which stays as it was.
    """
    run_dir = Path(run_dir).resolve()
    record = results.load(run_dir)
    report_name, comparison_name = REPORT, COMPARISON
    if baseline is not None and baseline != record["baseline"]:
        names = [i["name"] for i in record["interpreters"]]
        if baseline not in names:
            raise ResultsError(f"--baseline {baseline}: not a subject of run {record['run']} "
                               f"(subjects: {', '.join(names)})")
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", baseline)
        record = {**record, "baseline": baseline, "_plots": f"plots-vs-{slug}"}
        report_name, comparison_name = f"report-vs-{slug}.md", f"comparison-vs-{slug}.json"
    out: dict = {"run": record["run"], "baseline": record["baseline"]}
    host = record.get("host", {})
    lines = [f"# hostpgo measurement: {record['run']}", "",
             f"Created {record.get('created', '?')} on {host.get('cpu', '?')} ({host.get('cpus', '?')} CPUs, "
             f"load average at start {host.get('loadavg_at_start', '?')}). Baseline: **{record['baseline']}**.", ""]
    stage_commands = record.get("stage_commands", {})
    if stage_commands:
        lines += ["Commands that produced each part:", ""]
        lines += [f"- {stage}: `{cmd}`" for stage, cmd in stage_commands.items()] + [""]
    elif record.get("command"):
        lines += ["Command: `" + " ".join(record["command"]) + "`", ""]
    lines += _interpreters_section(record)
    body = _latency_section(run_dir, record, out)
    body += _counters_section(run_dir, record, out)
    body += _attribution_section(record, out)
    body += _guard_section(run_dir, record, out)
    lines += _headline(record, out) + stackmod.section(run_dir, record, out) + body
    if record.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in record["notes"]] + [""]
    (run_dir / comparison_name).write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    dest = run_dir / report_name
    dest.write_text("\n".join(lines), encoding="utf-8")
    return dest
