"""The Markdown tables of ``ssps benchmark`` (``OUT/results.md``, the body of docs/benchmarks.md's results)."""
from __future__ import annotations

def _pm(s: dict | None, fmt: str = '{:.2f}') -> str:
    if not s or s.get('mean') is None:
        return 'n/a'
    text = fmt.format(s['mean'])
    return text + (f' ± {fmt.format(s["std"])}' if s['n'] > 1 else '')


METHOD_LABELS = {'ssps': 'SSPS', 'uniform': 'uniform', 'random': 'random within budget',
                 'sensitivity': 'sensitivity'}


def _giga(s: dict | None) -> dict | None:
    return None if not s else {k: (v / 1e9 if isinstance(v, float) and k != 'n' else v) for k, v in s.items()}


def _method_label(r: dict) -> str:
    """The policy column: the method, which uniform policy won, or that a search found a uniform one."""
    method = r['method']
    if method == 'uniform':
        options = r.get('uniform_options') or {}
        best = r.get('uniform_policy') or (r['budget'] if not options else None)
        if len(options) > 1:
            tried = ', '.join(f'{p} {_pm(o["top1"])}' for p, o in options.items())
            return f'uniform {best or "n/a"} (better of {tried})'
        return f'uniform {best}' if best else 'uniform'
    label = METHOD_LABELS.get(method, method)
    same = r.get('same_as_uniform') or []
    if same and all(same):
        found = sorted({v for v in same if isinstance(v, str)})
        return f'{label} (found the uniform policy{" " + ", ".join(found) if found else ""})'
    return label


def quality_lines(q: dict, seeds: str) -> list[str]:
    """The quality table: every row's spread (mean ± std over its runs; n/a: no finished run)."""
    fp32 = q['fp32']
    start = ('shipped checkpoint' if fp32.get('trained_here') is False else 'trained here')
    images = f'; {q["test_images"]:,} test images' if q.get('test_images') else ''
    if fp32.get('trained_here') is False:
        start += (f' `{fp32["checkpoint"]}`' if fp32.get('checkpoint') else '') + (
            f', trained by `{fp32["command"]}`' if fp32.get('command') else '')
    head = (f'FP32 start ({start}): top-1 {fp32["top1"]:.2f} %, {fp32["bitops"] / 1e9:.2f} GBitOPs{images}. '
            f'Mean ± std over the runs of each row (seeds {seeds}; the standard mode runs the sensitivity method '
            'with the first seed only), in brackets. Cost / target: the retrained model\'s BitOPs over the budget; '
            'search cost / target: the policy\'s. SSPS columns: mean selection certainty when a decision was fixed, fraction of decisions '
            'fixed by the certainty threshold, fraction of searched (layer, slot) decisions on which the seeds\' '
            'policies agree, optimizer step at which the policy was final.')
    if q.get('complete') is False:
        head += ' **Partial: the benchmark is still running or was stopped; rows with n/a have no finished run.**'
    lines = [head, '',
             '| budget | policy | top-1 % | runs | GBitOPs | cost / target | search cost / target | search s | '
             'certainty at decision | by threshold | seed agreement | final at step |',
             '|---|---|---|---|---|---|---|---|---|---|---|---|']
    for r in q['rows']:
        runs = ', '.join(f'{v:.1f}' for v in r.get('top1_runs', []) if v is not None)
        target = f' ({r["target"] / 1e9:.4f} G)' if r.get('target') else ''
        agreement = r.get('agreement')
        lines.append(
            f'| {r["budget"]}{target} | {_method_label(r)} | {_pm(r["top1"])} | [{runs}] | '
            f'{_pm(_giga(r.get("bitops")), "{:.4f}")} | {_pm(r.get("cost_ratio"), "{:.3f}")} | '
            f'{_pm(r.get("search_cost_ratio"), "{:.3f}")} | {_pm(r.get("search_s"), "{:.0f}")} | '
            f'{_pm(r.get("certainty"), "{:.3f}")} | {_pm(r.get("by_threshold"), "{:.2f}")} | '
            f'{"n/a" if agreement is None else f"{agreement:.2f}"} | {_pm(r.get("final_step"), "{:.0f}")} |')
    lines.append('')
    return lines


def ttm_lines(t: dict) -> list[str]:
    """The time-to-model table: phases' wall seconds, steps, top-1 and its paired difference to uniform."""
    fp32 = t['fp32']
    head = (f'Seeds {", ".join(map(str, t["seeds"]))}, paired (every row runs the same seeds); FP32 start top-1 '
            f'{fp32["top1"]:.2f} %; {t["test_images"]:,} test images. Equal total training steps per row: search '
            'steps + QAT steps. Wall seconds of each phase, mean ± std over seeds: policy (the search, which ends at '
            'its last decision, or the sensitivity measurement), QAT training, test. Δ top-1: the paired difference '
            'to the best uniform row of the budget, mean ± standard error over seeds.')
    if t.get('complete') is False:
        head += ' **Partial: the benchmark is still running or was stopped.**'
    lines = [head, '', '| budget | method | steps (policy + QAT) | policy s | QAT s | test s | total s | top-1 % | '
             'Δ top-1 vs uniform | cost / target |', '|---|---|---|---|---|---|---|---|---|---|']
    for r in t['rows']:
        target = t['budgets'][r['budget']]['target']
        d = r.get('vs_uniform')
        delta = 'reference' if d is None and r.get('reference') == r['method'] else 'n/a' if d is None else (
            f'{d["mean"]:+.2f}' + (f' ± {d["se"]:.2f}' if d.get('se') is not None else '') + f' (n={d["n"]})')
        steps = f'{_pm(r["policy_steps"], "{:.0f}")} + {_pm(r["qat_steps"], "{:.0f}")}'
        lines.append(f'| {r["budget"]} ({target / 1e9:.4f} G) | {r["method"]} | {steps} | '
                     f'{_pm(r["policy_s"], "{:.0f}")} | {_pm(r["qat_s"], "{:.0f}")} | {_pm(r["test_s"], "{:.0f}")} | '
                     f'{_pm(r["total_s"], "{:.0f}")} | {_pm(r["top1"])} | {delta} | {_pm(r["cost_ratio"], "{:.3f}")} |')
    lines.append('')
    return lines


def markdown(results: dict) -> str:
    """The result tables (the body of docs/benchmarks.md's results)."""
    env = results['environment']
    walls = ', '.join(f'{k} {v / 60:.1f} min' for k, v in results.get('section_s', {}).items())

    def seeds(section: str) -> str:
        return ', '.join(map(str, results.get('section_settings', {}).get(section, {}).get('seeds', [])))

    def header(title: str, section: str) -> list[str]:
        command = results.get('commands', {}).get(section, 'n/a')
        commit = results.get('section_commit', {}).get(section, env.get('commit'))
        return [f'### {title}', '', f'Command: `{command}` (commit {commit})', '']
    lines = [f'Mode `{results["mode"]}`, device `{env["device"]}`{" (" + env["gpu"] + ")" if env.get("gpu") else ""}, '
             f'CPU {env["cpu"]} ({env["cpu_count"]} cores, {env["torch_threads"]} torch threads); '
             f'torch {env["torch"]}, nni {env["nni"]}, mmengine {env["mmengine"]}, Python {env["python"]}; '
             f'last call at commit {env.get("commit")}. Wall time of each section (the runs its last call did; reused runs '
             f'cost nothing): {walls or "n/a"}.', '']
    if 'step-cost' in results:
        mem = ('allocated by the step + params/grads/momentum' if env['device'] == 'cuda'
               else 'saved-for-backward + params/grads/momentum')
        lines += header('Cost per search step', 'step-cost') + [
                  f'Median of the timed steps (configs of a network timed in turns); memory: {mem}. '
                  'Ratios are to (b) W4A4 QAT of the same network.', '',
                  '| network | batch | method | candidates | s/step | × (b) | memory MiB | × (b) |',
                  '|---|---|---|---|---|---|---|---|']
        for r in results['step-cost']:
            cands = f'{r["candidates"]} {tuple(r["candidate_bits"])}' if r['candidates'] else '-'
            lines.append(f'| {r["network"]} {r["input"]}² | {r["batch"]} | {r["label"]} | {cands} | '
                         f'{r["step_s"]:.3f} | {r["time_ratio"]:.2f} | {r["memory_mib"]:.0f} | {r["memory_ratio"]:.2f} |')
        lines.append('')
    if 'sequential' in results:
        seq = results['sequential']
        lines += header('Sequential determination', 'sequential') + [
                  f'Budget bitops={seq["budget"]}; mean ± std over seeds {seeds("sequential")}.', '',
                  '| sequential | search steps | policy stable from step | policy final at step | '
                  's to final policy | search s | cost / target | argmax changes | mean certainty at decision | '
                  'retrained top-1 % |',
                  '|---|---|---|---|---|---|---|---|---|---|']
        for r in seq['rows']:
            lines.append(f'| {"yes" if r["sequential"] else "no (argmax at end)"} | {_pm(r["steps"], "{:.0f}")} | '
                         f'{_pm(r["stable_step"], "{:.0f}")} | {_pm(r["final_step"], "{:.0f}")} | {_pm(r["final_s"], "{:.0f}")} | '
                         f'{_pm(r["search_s"], "{:.0f}")} | {_pm(r["cost_ratio"], "{:.3f}")} | '
                         f'{_pm(r["policy_changes"], "{:.0f}")} | {_pm(r.get("certainty"), "{:.3f}")} | '
                         f'{_pm(r["top1"])} |')
        lines.append('')
    if 'quality' in results:
        lines += header('Quality at equal BitOPs (real CIFAR-10, ResNet-20)', 'quality') + quality_lines(
            results['quality'], seeds('quality'))
    if 'time-to-model' in results:
        lines += header('Time to a deployable model (real CIFAR-10, ResNet-20)', 'time-to-model') + ttm_lines(
            results['time-to-model'])
    return '\n'.join(lines)
