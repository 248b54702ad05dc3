"""The trainer's collaborators in process: non-finite steps, optimiser groups, schedule, precision,
sampler, run names, atomic writes and checkpoint contents."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from conftest import one_line, run_tool
from vision_mtl.config import TrainConfig
from vision_mtl.data.sampler import EpochSampler
from vision_mtl.engine.checkpoint import load_checkpoint, load_model
from vision_mtl.errors import CheckpointError, ConfigError
from vision_mtl.evaluation.evaluator import Evaluation
from vision_mtl.models import build_model
from vision_mtl.training.optim import build_optimizer, build_scheduler, fit_schedule
from vision_mtl.training.precision import Precision, resolve_amp
from vision_mtl.training.trainer import Trainer
from vision_mtl.utils import runtime
from vision_mtl.utils.atomic import atomic_open


def test_a_nan_loss_step_is_skipped_reported_and_the_run_goes_on(make_config, monkeypatch, caplog):
    trainer = Trainer(make_config("train.epochs=1", "train.max_steps_per_epoch=4", "train.plots=false"))
    original, calls = trainer.model.loss, []

    def loss_with_one_nan(raw, targets):
        losses = original(raw, targets)
        calls.append(len(calls))
        if len(calls) == 2:  # the second step's detection loss is NaN
            losses["detection"]["box"] = losses["detection"]["box"] * math.nan
        return losses

    monkeypatch.setattr(trainer.model, "loss", loss_with_one_nan)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with caplog.at_level(logging.WARNING):
        metrics = trainer.fit()
    assert len(calls) == 4 and trainer.position.updates == 3  # one of four steps skipped
    warnings = [r.getMessage() for r in caplog.records if "non-finite loss" in r.getMessage()]
    assert len(warnings) == 1 and "detection/box=nan" in warnings[0] and "step 2" in warnings[0]
    after = trainer.model.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the other steps did train
    assert math.isfinite(trainer.monitor.history.rows[-1]["loss"]) and metrics


def test_optimizer_groups_scale_the_backbone_and_spare_norms_and_biases(make_config):
    cfg = make_config("train.backbone_lr_mult=0.1", "train.weight_decay=0.05")
    model = build_model(cfg.model, {"classification": ["a", "b"], "detection": ["x"], "segmentation": ["bg", "x"]})
    optimizer = build_optimizer(model, cfg.train)
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    assert len(group_of) == sum(1 for p in model.parameters() if p.requires_grad)  # every parameter, once
    for name, param in model.named_parameters():
        group = group_of[id(param)]
        assert group["lr_scale"] == (0.1 if name.startswith("backbone.") else 1.0), name
        assert group["weight_decay"] == (0.0 if param.ndim <= 1 else 0.05), name
    scheduler = build_scheduler(optimizer, cfg.train, steps_per_epoch=10, epochs=2)
    scheduler.step_update(5)  # mid warm-up
    lrs = {g["lr_scale"]: g["lr"] for g in optimizer.param_groups}
    assert lrs[0.1] == pytest.approx(lrs[1.0] * 0.1)
    assert lrs[1.0] < cfg.train.lr


def test_schedule_warms_up_then_decays_to_its_end_and_can_be_refitted():
    cfg = TrainConfig(lr=1.0, warmup_epochs=1.0)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch=10, epochs=4)

    def lr_at(step: int) -> float:
        scheduler.step_update(step)
        return optimizer.param_groups[0]["lr"]

    assert lr_at(1) < lr_at(5) < lr_at(10) == pytest.approx(1.0)
    assert lr_at(25) > lr_at(40) == pytest.approx(0.01, abs=1e-3)  # ends at 1 % at the last step
    fit_schedule(scheduler, 80)  # twice as many epochs
    assert lr_at(40) == pytest.approx(0.5 * (1 - 0.01) * (1 + math.cos(math.pi * 30 / 70)) + 0.01, rel=1e-3)


def test_precision_choices(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
    assert resolve_amp("auto", cpu) is None and resolve_amp("off", cpu) is None
    assert resolve_amp("bf16", cpu) is torch.bfloat16
    with pytest.raises(ConfigError, match="train.amp=fp16 needs a CUDA device.*use bf16 or off$"):
        resolve_amp("fp16", cpu)
    precision = Precision("bf16", cpu)
    layer = torch.nn.Linear(4, 4)
    with precision.autocast():
        assert layer(torch.randn(2, 4)).dtype is torch.bfloat16
    assert precision.scaler is None and precision.name == "bf16"


def test_bf16_training_falls_back_to_fp32_on_a_cpu_without_native_bf16(monkeypatch, caplog):
    """Emulated bf16 is several times slower than fp32: such a CPU trains in fp32, saying so once,
    and the fp16 refusal does not suggest bf16 there."""
    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)
    with caplog.at_level(logging.WARNING):
        precision = Precision("bf16", cpu)
    assert precision.dtype is None and precision.name == "fp32"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("train.amp bf16: ") and "running fp32" in warnings[0]
    assert one_line(warnings[0])
    with pytest.raises(ConfigError) as info:
        resolve_amp("fp16", cpu)
    assert str(info.value).endswith("; use off (this CPU has no native bf16)") and one_line(str(info.value))


@pytest.mark.parametrize("flags, described", [
    ("fpu sse4_2 avx avx2 fma", "precision fp32 on cpu (AVX2; no native bf16)"),
    ("avx2 avx512f avx512bw avx512_vnni", "precision fp32 on cpu (AVX-512; no native bf16)"),
    ("avx2 avx512f avx512_vnni avx512_bf16", "precision bf16 on cpu (AVX-512; native bf16)"),
    ("avx2 avx512f avx512_bf16 amx_tile amx_bf16 amx_int8", "precision bf16 on cpu (AMX; native bf16)"),
])
def test_training_names_its_precision_and_cpu_kernels(flags, described, monkeypatch):
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset(flags.split()))
    assert Precision("bf16", torch.device("cpu")).describe() == described


def test_epoch_sampler_orders_by_epoch_shards_and_skips():
    def epoch(sampler: EpochSampler, number: int) -> list[int]:
        sampler.set_epoch(number)
        return list(sampler)

    single = EpochSampler(10, seed=3)
    assert sorted(epoch(single, 0)) == list(range(10)) and epoch(single, 0) == epoch(EpochSampler(10, 3), 0)
    assert epoch(single, 0) != epoch(single, 1)
    ranks = [EpochSampler(10, seed=3, rank=r, world=3) for r in range(3)]
    shards = [epoch(s, 2) for s in ranks]
    assert all(len(s) == 3 for s in shards) and len(set().union(*shards)) == 9  # disjoint, equal length
    ranks[1].set_epoch(2)
    ranks[1].skip(2)
    assert list(ranks[1]) == shards[1][2:] and len(ranks[1]) == 1
    weighted = EpochSampler(4, seed=0, weights=torch.tensor([0.0, 0.0, 1.0, 0.0]).numpy())
    assert set(epoch(weighted, 0)) == {2}


@pytest.mark.parametrize("name", ["../x", "/tmp/abs", "a/b", "..", "a\\b", ""])
def test_run_name_cannot_leave_run_dir(make_config, name):
    with pytest.raises(ConfigError, match="run.name=.* must be a plain folder name"):
        make_config(f"run.name={name!r}" if name else "run.name=''")


def test_atomic_open_leaves_neither_target_nor_temp_on_error(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_open(target) as fh:
            fh.write("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with atomic_open(target) as first, atomic_open(target) as second:  # two writers, two temp files
        first.write("one")
        second.write("two")
    assert target.read_text() == "one" and list(tmp_path.iterdir()) == [target]


@pytest.mark.parametrize("damage, message", [
    (lambda s: s.update(model={"w": "not a tensor"}), "'model' must map parameter names to tensors"),
    (lambda s: s.update(classes=["a", "b"]), "'classes' must map task names to lists of class names"),
    (lambda s: s.update(config="model: x"), "'config' must be a mapping"),
    (lambda s: s["classes"].pop("detection"), "no class names for task 'detection'"),
])
def test_checkpoint_with_the_keys_but_wrong_contents(trained_run, tmp_path, damage, message):
    state = load_checkpoint(trained_run / "best.pt")
    damage(state)
    path = tmp_path / "damaged.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=message):
        load_model(path)
    proc = run_tool("evaluate.py", "--weights", str(path))
    assert proc.returncode == 2 and message.split("'")[1] in proc.stderr and "Traceback" not in proc.stderr


def test_gradient_accumulation_steps_once_per_group(make_config):
    trainer = Trainer(make_config("train.epochs=1", "train.max_steps_per_epoch=4", "train.accumulate=2",
                                  "train.plots=false"))
    steps = []
    update = trainer.update
    trainer.update = lambda: (steps.append(trainer.position.batch), update())
    trainer.fit()
    assert steps == [2, 4] and trainer.position.updates == 2


def test_patience_stops_when_the_monitored_metric_stops_improving(make_config, monkeypatch):
    trainer = Trainer(make_config("train.epochs=6", "train.max_steps_per_epoch=1", "train.patience=2",
                                  "train.monitor=segmentation/mIoU", "train.plots=false"))
    scores = iter([0.3, 0.5, 0.4, 0.5, 0.9, 0.9])  # best at epoch 2, then two epochs without a better one
    monkeypatch.setattr(trainer.evaluator, "run",
                        lambda *a, **k: Evaluation({"segmentation/mIoU": next(scores)}, None))
    metrics = trainer.fit()
    assert trainer.position.epoch == 4 and metrics["epoch"] == 2 and metrics["segmentation/mIoU"] == 0.5


def test_unknown_monitor_metric_is_one_line(make_config, monkeypatch):
    trainer = Trainer(make_config("train.epochs=1", "train.max_steps_per_epoch=1", "train.monitor=detection/mAP9"))
    with pytest.raises(ConfigError, match="train.monitor='detection/mAP9' is not a validation metric"):
        trainer.fit()


def test_time_budget_fits_the_number_of_epochs(make_config):
    trainer = Trainer(make_config("train.epochs=50", "train.max_steps_per_epoch=2", "train.max_minutes=0.0001",
                                  "train.plots=false"))
    trainer.fit()
    assert trainer.position.epochs == trainer.position.epoch == 1  # one epoch took longer than 6 ms
    assert trainer.scheduler.t_initial == max(2, trainer.updates_per_epoch - trainer.scheduler.warmup_t)
