"""The tools and the Predictor never lose a user's file and never answer a user's mistake with a
traceback: export, evaluation, conversion and folder inference write only where they are told,
atomically; bad flags and bad images are one line; boxes never land in the letterbox padding."""

from __future__ import annotations

import errno
import json
import logging
import os
import runpy
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from conftest import REPO_ROOT, one_line
from test_export import tiny
from test_hardening_data import snapshot
from test_infer import make_image_folder
from vision_mtl.engine.export_wrapper import ExportWrapper
from vision_mtl.engine.results import restore_mask, split_predictions
from vision_mtl.errors import ConfigError, DataError, ExportError, VisionMTLError, first_line
from vision_mtl.evaluation.saved import default_eval_folder, evaluate_weights, save_evaluation
from vision_mtl.export import onnx as onnx_export
from vision_mtl.inference.pipeline import infer_folder
from vision_mtl.inference.predictor import Predictor
from vision_mtl.utils.cli import run_tool
from vision_mtl.utils.distributed import Processes


@pytest.fixture(scope="module")
def weights(trained_run) -> Path:
    return trained_run / "best.pt"


@pytest.fixture(scope="module")
def images(shapes_root, tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("images") / "photos", shapes_root)


@pytest.fixture(scope="module")
def predictor(weights) -> Predictor:
    return Predictor(weights, conf=0.01)


def tool(monkeypatch, capsys, script: str, *args: str) -> tuple[int, str]:
    """Run ``tools/<script>`` as ``python tools/<script> args...`` would, in this process (a tool
    started per case would spend its time importing torch): (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", [script, *args])
    capsys.readouterr()
    try:
        runpy.run_path(str(REPO_ROOT / "tools" / script), run_name="__main__")
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


def assert_one_line_error(result: tuple[int, str], *needles: str) -> str:
    """Exit code 2 and one 'error: ' line holding every needle."""
    code, err = result
    assert code == 2, err
    assert one_line(err) and err.startswith("error: "), err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def a_file(tmp_path: Path) -> Path:
    """A regular file: a path below it cannot be created, whoever runs the test (root included)."""
    path = tmp_path / "a_file"
    path.write_text("not a folder")
    return path


def read_only_mkdir(monkeypatch, below: Path) -> None:
    """os.mkdir fails below ``below`` as on a read-only file system (EROFS)."""
    real_mkdir = os.mkdir

    def mkdir(path, *args, **kwargs):
        if Path(path).is_relative_to(below):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)


# ------------------------------------------------------------------------------------ export

def test_export_refuses_to_write_over_its_own_checkpoint(weights, tmp_path, monkeypatch, capsys):
    checkpoint = tmp_path / "x.pt"
    checkpoint.write_bytes(weights.read_bytes())
    (tmp_path / "sub").mkdir()
    for out in (checkpoint, tmp_path / "sub" / ".." / "x.pt"):  # however spelled, even with --force
        result = tool(monkeypatch, capsys, "export_onnx.py", "--weights", str(checkpoint), "--out", str(out), "--force")
        assert_one_line_error(result, "--out", "itself")
    assert checkpoint.read_bytes() == weights.read_bytes()


def test_export_refuses_an_existing_out_unless_forced(weights, tmp_path, monkeypatch, capsys):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"someone's file")
    result = tool(monkeypatch, capsys, "export_onnx.py", "--weights", str(weights), "--out", str(out))
    assert_one_line_error(result, str(out), "--force")
    assert out.read_bytes() == b"someone's file"
    code, err = tool(monkeypatch, capsys, "export_onnx.py", "--weights", str(weights), "--out", str(out), "--force",
                     "--exporter", "torchscript")
    assert code == 0, err
    onnx.checker.check_model(str(out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_failed_export_leaves_the_existing_file_and_no_scratch(weights, tmp_path, monkeypatch):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"the model that worked")

    def verify_fails(*args, **kwargs):
        raise ExportError("cls_scores differs by 0.5")

    monkeypatch.setattr(onnx_export, "verify_onnx", verify_fails)
    with pytest.raises(ExportError):
        onnx_export.export_checkpoint(weights, out, exporter="torchscript", overwrite=True)
    assert out.read_bytes() == b"the model that worked"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_export_leaves_one_self_contained_file(make_config, tmp_path):
    """The default exporter writes the weights to '<name>.data' first; the saved file holds them."""
    model, info = tiny(make_config, ("classification",))
    path = onnx_export.export_onnx(ExportWrapper(model), info, tmp_path / "model.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    graph = onnx.load(str(path), load_external_data=False)
    assert graph.graph.initializer and all(not t.external_data for t in graph.graph.initializer)


def test_export_imgsz_zero_is_refused(weights, tmp_path, monkeypatch, capsys):
    result = tool(monkeypatch, capsys, "export_onnx.py", "--weights", str(weights), "--out", str(tmp_path / "m.onnx"),
                  "--imgsz", "0")
    assert_one_line_error(result, "--imgsz=0", "multiple of 32")
    assert not list(tmp_path.iterdir())


def test_export_out_is_an_onnx_file_never_a_folder(weights, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "models"
    folder.mkdir()
    for out, needle in ((folder, "is a folder"), (tmp_path / "model.bin", "does not end in .onnx")):
        result = tool(monkeypatch, capsys, "export_onnx.py", "--weights", str(weights), "--out", str(out), "--force")
        assert_one_line_error(result, str(out), needle)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["models"]


# ------------------------------------------------------------------------------- visualize_augment

def test_visualize_augment_writes_only_a_new_png_file(tiny_overrides, tmp_path, monkeypatch, capsys):
    """A folder, another kind of file or an existing PNG is refused in one line and left as it was
    (before: tracebacks, and notes.txt or photo.jpg overwritten); missing folders are created."""
    (tmp_path / "folder").mkdir()
    (tmp_path / "notes.txt").write_text("my notes")
    (tmp_path / "photo.jpg").write_bytes(b"my photo")
    (tmp_path / "aug.png").write_bytes(b"an earlier preview")
    before = snapshot(tmp_path)
    refused = [(name, needle, force) for name, needle in (("folder", "is a folder"), ("notes.txt", "end in .png"),
                                                          ("photo.jpg", "end in .png"))
               for force in ([], ["--force"])]
    for name, needle, force in [*refused, ("aug.png", "--force", [])]:
        result = tool(monkeypatch, capsys, "visualize_augment.py", "--out", str(tmp_path / name), *force,
                      *tiny_overrides)
        assert_one_line_error(result, str(tmp_path / name), needle)
    assert snapshot(tmp_path) == before
    for out, force in ((tmp_path / "new" / "deeper" / "aug.png", []), (tmp_path / "aug.png", ["--force"])):
        code, err = tool(monkeypatch, capsys, "visualize_augment.py", "--out", str(out), *force, *tiny_overrides)
        assert code == 0, err
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------- convert

def test_convert_never_writes_or_unlinks_outside_out(shapes_root, tmp_path, monkeypatch, capsys, caplog):
    jpeg = next((shapes_root / "val" / "images").glob("*.jpg")).read_bytes()
    images = tmp_path / "src" / "a" / "b" / "images"
    images.mkdir(parents=True)
    (images / "ok.jpg").write_bytes(jpeg)
    (tmp_path / "src" / "victim.jpg").write_bytes(jpeg)  # the source '../../../victim.jpg' names
    victim = tmp_path / "victim.jpg"  # where out/images/train/../../../victim.jpg lands
    victim.write_bytes(b"precious")
    names = ["ok.jpg", "../../../victim.jpg", str(victim)]
    coco = {"images": [{"id": i, "file_name": n, "height": 64, "width": 64} for i, n in enumerate(names, 1)],
            "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [1, 1, 10, 10], "area": 100,
                             "iscrowd": 0} for i in range(1, len(names) + 1)],
            "categories": [{"id": 1, "name": "thing"}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    for extra in ([], ["--link"]):
        caplog.clear()
        code, err = tool(monkeypatch, capsys, "convert_dataset.py", "--from", "coco", "--to", "yolo", "--annotations",
                         str(tmp_path / "coco.json"), "--images", str(images), "--out", str(tmp_path / "out"), *extra)
        assert code == 0, err
        assert victim.read_bytes() == b"precious" and not victim.is_symlink()
        warnings = [record.getMessage() for record in caplog.records]
        for name in names[1:]:  # one line per file, as for other bad entries
            assert sum(f": {name}: " in line and "outside the output folder" in line for line in warnings) == 1
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if not p.is_dir())
    assert written == ["coco.json", "out/data.yaml", "out/images/train/ok.jpg", "out/labels/train/ok.txt",
                       "src/a/b/images/ok.jpg", "src/victim.jpg", "victim.jpg"]


# --------------------------------------------------------------------------------- evaluate

def test_evaluate_writes_into_the_named_folder(weights, tmp_path, monkeypatch, capsys):
    before = sorted(p.name for p in weights.parent.iterdir())
    out = tmp_path / "results"
    code, err = tool(monkeypatch, capsys, "evaluate.py", "--weights", str(weights), "--out", str(out))
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["detections.json", "metrics.json"]
    assert "detection/mAP" in json.loads((out / "metrics.json").read_text())
    assert sorted(p.name for p in weights.parent.iterdir()) == before  # nothing beside the weights


def test_default_evaluation_folder_is_in_the_run_or_beside_an_onnx(trained_run, tmp_path):
    assert default_eval_folder(trained_run / "best.pt") == trained_run / "eval" / "best"
    assert default_eval_folder(tmp_path / "model.onnx") == tmp_path / "model_eval"


def test_evaluation_write_is_atomic_and_a_failure_is_one_line(weights, tmp_path, monkeypatch):
    evaluation = evaluate_weights(weights, progress=False)
    out = tmp_path / "eval"
    save_evaluation(evaluation, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    evaluation.metrics = {"detection/mAP": -1.0}

    def full_disk(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(ConfigError) as info:
        save_evaluation(evaluation, out)
    assert one_line(info.value) and str(out) in str(info.value) and "No space left" in str(info.value)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old files, whole; no temp file


def test_evaluation_on_a_read_only_file_system_is_one_line(weights, tmp_path, monkeypatch):
    evaluation = evaluate_weights(weights, progress=False)
    read_only_mkdir(monkeypatch, tmp_path)
    with pytest.raises(ConfigError) as info:
        save_evaluation(evaluation, tmp_path / "eval")
    assert one_line(info.value) and str(tmp_path / "eval") in str(info.value) and "Read-only" in str(info.value)


# ---------------------------------------------------------------- unwritable --out, every tool

def test_out_below_a_file_is_one_line_and_nothing_is_done(weights, images, tmp_path, monkeypatch, capsys):
    blocker = a_file(tmp_path)
    for script, out, extra in (("infer.py", blocker / "o", ["--source", str(images)]),
                               ("evaluate.py", blocker / "o", []),
                               ("export_onnx.py", blocker / "m.onnx", [])):
        result = tool(monkeypatch, capsys, script, "--weights", str(weights), "--out", str(out), *extra)
        assert_one_line_error(result, "--out", str(blocker))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_infer_on_a_read_only_file_system_is_one_line(predictor, images, tmp_path, monkeypatch):
    read_only_mkdir(monkeypatch, tmp_path)
    with pytest.raises(ConfigError) as info:
        infer_folder(predictor, images, tmp_path / "o", workers=0, show_progress=False, processes=Processes())
    assert one_line(info.value) and str(tmp_path / "o") in str(info.value) and "Read-only" in str(info.value)


def test_export_on_a_read_only_file_system_is_one_line(weights, tmp_path, monkeypatch):
    read_only_mkdir(monkeypatch, tmp_path)
    with pytest.raises(ConfigError) as info:
        onnx_export.export_checkpoint(weights, tmp_path / "new" / "m.onnx", exporter="torchscript")
    assert one_line(info.value) and str(tmp_path / "new") in str(info.value) and "Read-only" in str(info.value)


# ------------------------------------------------------------------------------ infer flags

def test_infer_outputs_inside_the_source_are_not_read_as_images(weights, shapes_root, tmp_path, monkeypatch, capsys,
                                                                caplog):
    """Two runs with their --out inside --source: each reads the 6 photos, not the masks and overlays
    of the run before (which made it '12 images'), and says what it left out."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in sorted((shapes_root / "val" / "images").glob("*.jpg"))[:6]:
        shutil.copy(path, photos / path.name)
    caplog.set_level(logging.INFO, logger="vision_mtl.inference")
    for out, extra in (("run1", []), ("run2", []), ("run1", ["--resume"])):
        code, err = tool(monkeypatch, capsys, "infer.py", "--weights", str(weights), "--source", str(photos),
                         "--out", str(photos / out), "--overlays", "--workers", "0", *extra)
        assert code == 0, err
        summary = json.loads((photos / out / "summary.json").read_text())
        assert summary["images"] == summary["succeeded"] == 6, summary
    assert summary["done_before"] == 6
    notes = [r.getMessage() for r in caplog.records if "tools/infer.py wrote" in r.getMessage()]
    assert len(notes) == 2 and "left out 12 image(s)" in notes[0] and str(photos / "run1") in notes[0]
    assert "left out 24 image(s)" in notes[1] and str(photos / "run2") in notes[1]


@pytest.mark.parametrize("flag, value", [("--batch", "0"), ("--batch", "-1"), ("--workers", "-1"),
                                         ("--imgsz", "-32"), ("--imgsz", "0")])
def test_infer_bad_numbers_are_one_line_and_leave_out_alone(weights, images, tmp_path, monkeypatch, capsys,
                                                           flag, value):
    out = tmp_path / "o"
    result = tool(monkeypatch, capsys, "infer.py", "--weights", str(weights), "--source", str(images),
                  "--out", str(out), flag, value)
    assert_one_line_error(result, f"{flag}={value}", "integer >=")
    assert not out.exists()


def test_a_refused_start_does_not_claim_out(predictor, images, tmp_path):
    out = tmp_path / "o"
    for bad in ({"batch_size": 0}, {"workers": -1}):
        with pytest.raises(ConfigError) as info:
            infer_folder(predictor, images / "sub", out, show_progress=False, processes=Processes(),
                         **{"workers": 0, **bad})
        assert one_line(info.value) and next(iter(bad)) in str(info.value)
        assert not out.exists()
    summary = infer_folder(predictor, images / "sub", out, batch_size=2, workers=0, show_progress=False,
                           processes=Processes())
    assert summary["succeeded"] > 0


# ---------------------------------------------------------------------------------- Predictor

@pytest.mark.parametrize("images, error, needle", [
    (np.zeros((0, 0, 3), np.uint8), DataError, "no pixels"),
    (None, DataError, "NoneType"),
    ([None], DataError, "NoneType"),
    (torch.rand(3, 32, 32) * 255, DataError, "divide"),
    (torch.rand(3, 32, 32) - 0.5, DataError, "[0, 1]"),
])
def test_predictor_bad_images_are_one_line(predictor, images, error, needle):
    with pytest.raises(error) as info:
        predictor.predict(images)
    assert one_line(info.value) and needle in str(info.value)


def test_predictor_refuses_zero_sizes(weights, predictor):
    with pytest.raises(ConfigError) as info:
        predictor.predict(np.zeros((8, 8, 3), np.uint8), batch_size=0)
    assert one_line(info.value) and "batch_size=0" in str(info.value)
    with pytest.raises(ConfigError) as info:
        Predictor(weights, image_size=0)
    assert one_line(info.value) and "image_size=0" in str(info.value)


# ------------------------------------------------------------------------------- error text

def test_library_error_text_loses_terminal_colours():
    exc = RuntimeError("\x1b[31;1mError\x1b[0m: shape mismatch \x1b[2mhere\x1b[0m\nsecond line")
    assert first_line(exc) == "Error: shape mismatch here"


def test_tools_print_one_clean_line(capsys):
    def main():
        raise VisionMTLError("cannot load 'x': \x1b[31mbad\x1b[0m magic\n  at byte 0")

    with pytest.raises(SystemExit) as exit_info:
        run_tool(main)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: cannot load 'x': bad magic\n"


# --------------------------------------------------------------------- extreme aspect ratios

def test_boxes_in_the_letterbox_padding_are_dropped():
    """A 100x10000 image fills one 64-px row of the canvas; a box below it lies in the padding."""
    meta = {"orig_size": (100, 10000), "scale": 64 / 10000}
    preds = {"detection": {"boxes": torch.tensor([[[0.0, 0.0, 32.0, 0.5], [0.0, 10.0, 32.0, 20.0],
                                                   [70.0, 0.0, 80.0, 0.5]]]),
                           "scores": torch.tensor([[0.9, 0.8, 0.7]]), "labels": torch.tensor([[1, 2, 3]]),
                           "num": torch.tensor([3])}}
    (result,) = split_predictions(preds, [meta])
    np.testing.assert_allclose(result.boxes, [[0.0, 0.0, 5000.0, 78.125]], rtol=1e-6)
    assert result.scores.tolist() == pytest.approx([0.9]) and result.labels.tolist() == [1]


def test_a_very_thin_image_gets_answers_at_its_own_size(predictor):
    image = np.full((40, 10000, 3), 128, np.uint8)  # at 64 px its height rounds to zero rows
    (result,) = predictor.predict(image)
    assert result.mask.shape == (40, 10000)
    assert all(x2 > x1 and y2 > y1 and x2 <= 10000 and y2 <= 40 for x1, y1, x2, y2 in result.boxes)
    mask = torch.arange(64 * 64).reshape(64, 64)
    assert restore_mask(mask, {"orig_size": (40, 10000), "scale": 64 / 10000}).shape == (40, 10000)
