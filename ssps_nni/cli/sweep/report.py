"""``frontier.md``: per mixed point, its difference to the uniform line and to the other methods."""
from __future__ import annotations


def num(value, digits: int = 2) -> str:
    return 'n/a' if value is None else f'{value:.{digits}f}'


def diff(entry: dict | None) -> str:
    """``+0.42 ± 0.13 (n=3)``: the paired mean difference and its SE."""
    if not entry or entry.get('mean') is None:
        return 'n/a'
    se = entry.get('se')
    return f'{entry["mean"]:+.2f} ± {num(se)} (n={entry["n"]})' if se is not None else f'{entry["mean"]:+.2f} (n=1)'


def cost_text(cost: str, value) -> str:
    if value is None:
        return 'n/a'
    if cost == 'bitops':
        return f'{value / 1e9:.4g} G'
    if cost == 'size':
        return f'{value / 8e6:.4g} MB'
    return f'{value:.4g}'


def markdown(f: dict) -> str:
    """The Markdown report of a frontier dict (``frontier.build``)."""
    metric = f['metric'] or 'metric'
    s = f['settings']
    lines = [
        '# Accuracy-vs-budget frontier (`ssps sweep`)', '',
        f'`{f.get("command") or "ssps sweep"}`', '',
        f'- status: {"complete" if f["complete"] else "partial"} ({f["runs_finished"]} of {f["runs_total"]} runs)',
        f'- config: `{s["config"]}`, data root: `{s.get("data_root") or "as in the config"}`'
        + (f', {f["test_samples"]} test samples' if f.get('test_samples') else ''),
        f'- start: `{s["load_from"]}`; search: {s["search"]["epochs"]} epoch(s) at lr {s["search"]["lr"]}; '
        f'retraining: {s["retrain"]["epochs"]} epoch(s) at lr {s["retrain"]["lr"]}'
        + (' (0: post-training metric after calibration only)' if s['retrain']['epochs'] == 0 else ''),
        f'- seeds {f["seeds"]}, paired: {f["paired"]}',
        f'- verdicts: {f["noise_rule"]}; "above"/"below" the reference, else "inside the noise"', '',
    ]
    refs = f['references']
    fp32 = refs.get('fp32') or {}
    w8 = refs.get('w8a8') or {}
    lines += ['## References', '', f'| reference | {metric} | GBitOPs | size MB |', '|---|---|---|---|']
    for name, value, costs in (('FP32 (start)', fp32.get('metric'), fp32.get('costs') or {}),
                               ('W8A8 (mean over seeds)', w8.get('mean'), w8.get('costs') or {})):
        lines.append(f'| {name} | {num(value)} | {cost_text("bitops", costs.get("bitops"))} | '
                     f'{cost_text("size", costs.get("size"))} |')
    lines.append('')
    lines += ['## Mixed points', '',
              'Per budget and method: the mean over seeds, the paired difference to the uniform line at the '
              "point's cost (between the two uniform points named) and to the other methods at the same budget, "
              'each ± its paired SE.', '']
    for budget in f['budgets']:
        rows = [p for p in f['points'] if p['slug'] == budget['slug']]
        cost = budget['cost']
        lines += [f'### {budget["label"]} ({cost_text(cost, budget["target"])})', '',
                  f'| method | {metric} mean | per seed | cost / target | vs uniform line | line between | verdict '
                  '| vs other methods |', '|---|---|---|---|---|---|---|---|']
        for p in rows:
            v = p.get('vs_uniform') or {}
            between = (f'{v["low"]}–{v["high"]} (t={v["t"]:.2f})' if v.get('low') and v['low'] != v['high']
                       else v.get('low') or 'n/a')
            others = '; '.join(f'vs {o}: {diff(c)} {c["verdict"]}' for o, c in p['vs_methods'].items()) or 'n/a'
            seeds = ', '.join(f'{p["runs"][k]:.2f}' for k in sorted(p['runs'], key=int)) or '-'
            same = f' (= uniform {p["same_as_uniform"]})' if isinstance(p.get('same_as_uniform'), str) else ''
            lines.append(f'| {p["method"]}{same} | {num(p["mean"])} | {seeds} | {num(p["cost_ratio"], 3)} | '
                         f'{diff(v)} | {between} | {v.get("verdict", "n/a")} | {others} |')
        lines.append('')
    lines += ['## Uniform points', '', f'| policy | {metric} mean | per seed | GBitOPs | size MB | on the line |',
              '|---|---|---|---|---|---|']
    for u in sorted(f['uniform'], key=lambda u: (u['costs'].get('bitops') or 0)):
        seeds = ', '.join(f'{u["runs"][k]:.2f}' for k in sorted(u['runs'], key=int)) or '-'
        on = ', '.join(c for c, yes in (u.get('on_line') or {}).items() if yes) or '-'
        lines.append(f'| {u["name"]}{" (reference)" if u.get("reference") else ""} | {num(u["mean"])} | {seeds} | '
                     f'{cost_text("bitops", u["costs"].get("bitops"))} | {cost_text("size", u["costs"].get("size"))} '
                     f'| {on} |')
    lines.append('')
    return '\n'.join(lines)
