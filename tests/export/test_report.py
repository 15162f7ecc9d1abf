"""``ssps report`` (through its shim tools/report.py) and ssps_nni.report: tables of bits and costs
over several policies."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

from ssps_nni.policy import Policy
from ssps_nni.report import comparison_rows, layer_rows, markdown_report

ROOT = Path(__file__).resolve().parents[2]


def make_policy(w: int, a: int, bitops: float | None) -> Policy:
    layers = {"conv1": {"w_bits": 8, "a_bits": 8, "pinned": True},
              "body": {"w_bits": w, "a_bits": a, "certainty": 0.95, "decided_at": 10},
              "head": {"w_bits": 32, "a_bits": 32, "excluded": True}}
    meta = {"repaired": False}
    if bitops is not None:
        meta["totals"] = {"bitops": {"policy": bitops, "expected": bitops, "target": 2e9, "unit": "BitOPs",
                                     "references": {"fp32": 16e9, "w8a8": 4e9, "min": 0.5e9, "max": 4e9}}}
    return Policy(layers=layers, candidates={"w": [2, 4, 8], "a": [2, 4, 8]}, meta=meta)


def test_rows_and_ratios():
    pols = {"a": make_policy(4, 4, 1.8e9), "b": make_policy(2, 8, None)}
    rows = layer_rows(pols)
    assert rows == [{"layer": "conv1", "a": "W8A8*", "b": "W8A8*"},
                    {"layer": "body", "a": "W4A4", "b": "W2A8"},
                    {"layer": "head", "a": "float", "b": "float"}]
    comp = comparison_rows(pols)
    assert comp[0]["vs_fp32"] == 1.8e9 / 16e9 and comp[0]["vs_w8a8"] == 1.8e9 / 4e9
    assert abs(comp[0]["vs_target"] - 0.9) < 1e-12
    assert comp[1]["cost"] is None and comp[1]["mean_w_bits"] == 5.0  # (8 + 2) / 2, excluded left out
    text = markdown_report(pols)
    assert "1.8 GBitOPs" in text and "| body | W4A4 | W2A8 |" in text


def test_cli_writes_tables_and_figures(tmp_path):
    p1 = make_policy(4, 4, 1.8e9).save(tmp_path / "w4a4.json")
    p2 = make_policy(2, 8, 1.9e9).save(tmp_path / "w2a8.json")
    out = tmp_path / "report"
    res = subprocess.run([sys.executable, str(ROOT / "tools/report.py"), str(p1), str(p2), "--out", str(out)],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert {p.name for p in out.iterdir()} == {"report.md", "layers.csv", "comparison.csv",
                                                "w4a4_bits.png", "w2a8_bits.png"}
    with open(out / "comparison.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["policy"] for r in rows] == ["w4a4", "w2a8"]
    assert float(rows[1]["vs_fp32"]) == 1.9e9 / 16e9


def test_cli_unreadable_policy(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    res = subprocess.run([sys.executable, str(ROOT / "tools/report.py"), str(bad), "--out", str(tmp_path / "r")],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 2
    assert "is not valid JSON" in res.stderr and not (tmp_path / "r").exists()


def make_result(mode: str, top1: float, bitops: float, size_bits: float) -> dict:
    return {"mode": mode, "policy": "p.json" if mode == "policy" else None,
            "uniform": "W4A4" if mode == "uniform" else None, "metrics": {"accuracy/top1": top1},
            "bitops": {"value": bitops, "fp32": 16e9}, "size": {"value": size_bits, "fp32": 8e6}}


def test_results_table_puts_accuracy_next_to_cost(tmp_path):
    import json

    p1 = make_policy(4, 4, 1.8e9).save(tmp_path / "w4a4.json")
    runs = {"qat": make_result("policy", 71.5, 1.8e9, 1e6), "qat_w4a4": make_result("uniform", 70.25, 2e9, 1.2e6)}
    files = []
    for name, res in runs.items():
        (tmp_path / name).mkdir()
        files.append(tmp_path / name / "train_result.json")
        files[-1].write_text(json.dumps(res))
    out = tmp_path / "report"
    res = subprocess.run([sys.executable, str(ROOT / "tools/report.py"), str(p1), "--out", str(out), "--no-figures",
                          "--results", *map(str, files)], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["run"], r["mode"], r["accuracy/top1"]) for r in rows] == [("qat", "policy", "71.5"),
                                                                          ("qat_w4a4", "uniform", "70.25")]
    assert float(rows[0]["bitops_vs_fp32"]) == 1.8e9 / 16e9 and float(rows[1]["size_bytes"]) == 1.5e5
    text = (out / "report.md").read_text()
    assert "## Retrained models" in text and "| qat | policy | p.json | 71.5 | 1.8 GBitOPs | 0.113 |" in text


def test_results_that_are_not_train_results_are_refused(tmp_path):
    p1 = make_policy(4, 4, 1.8e9).save(tmp_path / "w4a4.json")
    bad = tmp_path / "r" / "train_result.json"
    bad.parent.mkdir()
    bad.write_text('{"mode": "policy"}')
    res = subprocess.run([sys.executable, str(ROOT / "tools/report.py"), str(p1), "--out", str(tmp_path / "o"),
                          "--results", str(bad)], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 2 and "lacks" in res.stderr and not (tmp_path / "o").exists()
