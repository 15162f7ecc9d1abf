"""``frontier.png`` and ``sensitivity.png`` (matplotlib, Agg)."""
from __future__ import annotations

import json
from pathlib import Path

#: Axis scale and label of each cost (values are in the cost model's unit: BitOPs, bits).
AXES = {'bitops': (1e9, 'GBitOPs'), 'size': (8e6, 'model size (MB)'), 'bitfusion': (1e9, 'G BitFusion bricks')}
COLORS = {'ssps': 'tab:red', 'sensitivity': 'tab:blue', 'random': 'tab:green'}
MARKERS = {'ssps': 'o', 'sensitivity': 's', 'random': '^'}


def label_points(ax, labels) -> None:
    """Each ``(name, x, y)`` labelled next to its point, once the axes' limits are final; points
    within a few pixels of each other (e.g. W3A4 and W4A3: same cost, close means) share one label
    ``'W3A4/W4A3'`` instead of printing over each other."""
    ax.get_ylim()  # autoscale now: data -> pixels is final
    groups = []  # [pixel (x, y), names, data (x, y)]
    for name, x, y in labels:
        px, py = ax.transData.transform((x, y))
        near = next((g for g in groups if abs(g[0][0] - px) < 14 and abs(g[0][1] - py) < 7), None)
        if near:
            near[1].append(name)
        else:
            groups.append([(px, py), [name], (x, y)])
    for _, names, xy in groups:
        ax.annotate('/'.join(names), xy, fontsize=6, color='0.35', xytext=(3, -8), textcoords='offset points')


def frontier_png(f: dict, path: Path) -> Path:
    """Metric against cost, one panel per cost model of the budgets.

    Uniform points grey (the uniform line, their upper envelope, joined), mixed points per method
    with error bars (one standard error of the mean over seeds), FP32 and W8A8 as horizontal
    lines; the cost axis is logarithmic when the drawn costs span a factor of 10 or more.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    costs = list(dict.fromkeys(b['cost'] for b in f['budgets']))
    fig, axes = plt.subplots(1, len(costs), figsize=(7.6 * len(costs), 4.6), squeeze=False)
    metric = f['metric'] or 'metric'
    for ax, cost in zip(axes[0], costs):
        scale, unit = AXES.get(cost, (1.0, cost))
        xs = []
        uni = [u for u in f['uniform'] if u['mean'] is not None and u['costs'].get(cost) is not None]
        if uni:
            x = [u['costs'][cost] / scale for u in uni]
            xs += [xi for u, xi in zip(uni, x) if not u.get('reference')]
            ax.errorbar(x, [u['mean'] for u in uni], yerr=[u['sem'] or 0 for u in uni], fmt='o', color='0.55',
                        ms=4, capsize=2, label='uniform WxAy', zorder=2)
            labels = [(u['name'], xi, u['mean']) for u, xi in zip(uni, x)]
            line = sorted((u for u in uni if (u.get('on_line') or {}).get(cost)), key=lambda u: u['costs'][cost])
            ax.plot([u['costs'][cost] / scale for u in line], [u['mean'] for u in line], '-', color='0.3', lw=1.2,
                    label='uniform line', zorder=1)
        for method in f['settings']['methods']:
            pts = [p for p in f['points'] if p['method'] == method and p['cost_model'] == cost and p['mean'] is not None
                   and p['costs'].get(cost) is not None]
            if not pts:
                continue
            x = [p['costs'][cost] / scale for p in pts]
            xs += x
            ax.errorbar(x, [p['mean'] for p in pts], yerr=[p['sem'] or 0 for p in pts], fmt=MARKERS.get(method, 'D'),
                        color=COLORS.get(method), ms=6, capsize=3, label=method, zorder=3, mfc='none', mew=1.5)
        refs = f['references']
        if (refs.get('fp32') or {}).get('metric') is not None:
            ax.axhline(refs['fp32']['metric'], color='k', ls='--', lw=1, label='FP32')
        if (refs.get('w8a8') or {}).get('mean') is not None:
            ax.axhline(refs['w8a8']['mean'], color='tab:purple', ls=':', lw=1.2, label='W8A8')
        if view := [x for x in xs if x > 0]:  # the swept points; W8A8 is drawn as a line, maybe off to the right
            low, high = min(view), max(view)
            if high >= 10 * low:
                ax.set_xscale('log')
                ax.set_xlim(low / 1.15, high * 1.15)
                ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
                ax.xaxis.set_major_formatter(ticker.FormatStrFormatter('%g'))
                ax.xaxis.set_minor_formatter(ticker.NullFormatter())
            else:
                pad = 0.06 * (high - low) or 0.05 * high
                ax.set_xlim(low - pad, high + pad)
        if uni:
            label_points(ax, labels)
        ax.set_xlabel(unit)
        ax.set_ylabel(metric)
        ax.set_title(f'{metric} vs {cost} ({len(f["seeds"])} paired seed(s))', fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    retrain = f['settings']['retrain']['epochs']
    fig.suptitle(f'ssps sweep: {"post-training (calibration only)" if retrain == 0 else f"{retrain}-epoch retraining"}'
                 f'{"" if f["complete"] else " (partial)"}', fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def sensitivity_png(scores_path: str | Path, path: Path) -> Path:
    """Per layer and candidate, log10 of the sensitivity score, weights and activations side by side."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import numpy as np

    record = json.loads(Path(scores_path).read_text())
    layers = record['layers']
    fig, axes = plt.subplots(1, 2, figsize=(9, 0.28 * len(layers) + 2.2), squeeze=False)
    for ax, slot, title in zip(axes[0], ('w', 'a'), ('weights', 'activations')):
        values = np.asarray(record[slot], dtype=float)
        shown = np.log10(np.maximum(values, np.finfo(float).tiny))
        image = ax.imshow(shown, aspect='auto', cmap='magma_r')
        ax.set_xticks(range(len(record['candidates'][slot])), [str(b) for b in record['candidates'][slot]])
        ax.set_yticks(range(len(layers)), layers if slot == 'w' else [''] * len(layers), fontsize=7)
        ax.set_xlabel('bits')
        ax.set_title(f'{title}: log10 sensitivity', fontsize=10)
        fig.colorbar(image, ax=ax, fraction=0.05)
    fig.suptitle(f'Sensitivity (mean squared first-order loss change, {record["batches"]} batches): '
                 'darker = wants more bits', fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
