"""Run under torchrun by test_evaluation_distributed.py: each process evaluates its shard of a
checkpoint's val split and a multi-label metric's share of fixed scores, then pickles what it
got to ``<out>/rank<r>.pkl``. The same functions give the single-process reference.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/distributed_evaluate.py WEIGHTS OUT
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import torch

from vision_mtl.data.loader import build_data
from vision_mtl.engine.runners import load_runner
from vision_mtl.evaluation.evaluator import Evaluation, Evaluator
from vision_mtl.evaluation.metrics import ClassificationMetric
from vision_mtl.utils.distributed import Processes

# One image a batch: a convolution's result may depend on which images share its batch (CPU
# kernels pick algorithms by batch shape), and this comparison is exact.
OVERRIDES = ["train.batch_size=1"]
EXAMPLES = 5  # odd, so the two shards hold different numbers of them
LABEL_NAMES = ["a", "b", "c", "d"]


def evaluate(weights: Path, processes: Processes) -> Evaluation:
    runner, cfg = load_runner(weights, overrides=OVERRIDES)
    data = build_data(cfg, classes=runner.info.classes, train=False)
    evaluator = Evaluator(data.val, runner.info.classes, cfg.model.classification.multi_label)
    return evaluator.run(runner, show_progress=False, processes=processes, examples=EXAMPLES)


def multi_label_metrics(processes: Processes) -> dict[str, float]:
    """Multi-label classification of 21 images (an odd count: uneven shards), this process's share."""
    generator = torch.Generator().manual_seed(0)
    scores = torch.rand(21, len(LABEL_NAMES), generator=generator)
    targets = (torch.rand(21, len(LABEL_NAMES), generator=generator) < 0.4).float()
    metric = ClassificationMetric(LABEL_NAMES, multi_label=True)
    metric.update(scores[processes.rank::processes.world], targets[processes.rank::processes.world])
    if processes.world > 1:
        metric.sync(processes)
    return metric.compute()


def main() -> None:
    weights, out = Path(sys.argv[1]), Path(sys.argv[2])
    processes = Processes.from_env()
    result = {"world": processes.world, "evaluation": evaluate(weights, processes),
              "multi_label": multi_label_metrics(processes)}
    (out / f"rank{processes.rank}.pkl").write_bytes(pickle.dumps(result))


if __name__ == "__main__":
    main()
