"""SSPS mixed-precision search of a CIFAR ResNet-20 with NNI, on real CIFAR-10 images.

    .venv/bin/python examples/nni_cifar10.py --budget bitops=W4A4 --epochs 2 --train-images 1000

Uses ../shared/data/cifar10 when present (``--full-data``), else the subset shipped in
data/cifar10_subset.tar.gz. Writes policy.json into --out.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from nni.nas.evaluator.pytorch import Classification, DataLoader
from nni.nas.experiment import NasExperiment
from torch.utils.data import TensorDataset

from ssps_nni.data import load_cifar10_folder, load_cifar10_subset, shared_data_root
from ssps_nni.models import resnet20
from ssps_nni.nni import SSPS, QuantizationProfiler, quantization_space

MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
STD = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)


def cifar10(split: str, limit: int, full: bool) -> TensorDataset:
    root = shared_data_root()
    if full and root is not None:
        records = load_cifar10_folder(root / "cifar10", split, limit_per_class=max(limit // 10, 1))
    else:
        records = load_cifar10_subset(split)
    records = records[:limit]
    x = torch.from_numpy(np.stack([r["img"] for r in records])).permute(0, 3, 1, 2).float() / 255
    return TensorDataset((x - MEAN) / STD, torch.tensor([r["gt_label"] for r in records]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="bitops=W4A4")
    parser.add_argument("--candidates", default="2,3,4,6,8")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-images", type=int, default=1000)
    parser.add_argument("--val-images", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--full-data", action="store_true", help="read ../shared/data/cifar10 if present")
    parser.add_argument("--out", default="work_dirs/nni_cifar10")
    args = parser.parse_args()
    out = Path(args.out)
    torch.manual_seed(0)

    train = cifar10("train", args.train_images, args.full_data)
    val = cifar10("test", args.val_images, args.full_data)
    space = quantization_space(resnet20(), candidates=[int(b) for b in args.candidates.split(",")])
    profiler = QuantizationProfiler(space, train.tensors[0][:8])
    evaluator = Classification(
        train_dataloaders=DataLoader(train, batch_size=args.batch_size, shuffle=True),
        val_dataloaders=DataLoader(val, batch_size=200), max_epochs=args.epochs, num_classes=10,
        learning_rate=1e-3, enable_progress_bar=False, logger=False, default_root_dir=str(out),
    )
    strategy = SSPS(budget=args.budget, unit="step", interval=1)
    exp = NasExperiment(space, evaluator, strategy)
    exp.config.experiment_working_directory = str(out / "nni-experiments")
    try:
        exp.run()
        sample = exp.export_top_models(formatter="dict")[0]
    finally:
        exp.stop()
    policy = strategy.save_policy(out / "policy.json")
    totals = policy.meta["totals"]["bitops"]
    print(policy.table())
    print(f"decided {policy.meta['num_decided']}/{policy.meta['num_decisions']} at step {policy.meta['step']}; "
          f"BitOPs policy {totals['policy'] / 1e9:.4g} G, target {totals['target'] / 1e9:.4g} G, "
          f"NNI profiler {profiler.profile(sample) / 1e9:.4g} G; policy written to {out / 'policy.json'}")


if __name__ == "__main__":
    main()
