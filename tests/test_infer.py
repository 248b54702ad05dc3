"""Folder inference (tools/infer.py): every output for every good image, bad files logged, the
layout kept, checkpoint and ONNX alike, an interrupted run resumed to the same files, torchrun
shards merged into one result set, and the output folder rules."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from pycocotools.coco import COCO

from conftest import REPO_ROOT, assert_printed_quotient, one_line, run_tool
from vision_mtl.export.onnx import export_checkpoint
from vision_mtl.inference.predictor import Predictor
from vision_mtl.errors import ConfigError, DataError
from vision_mtl.inference.folder import OutputFolder
from vision_mtl.inference.merge import OutputSpec, merge_outputs
from vision_mtl.inference.pipeline import infer_folder
from vision_mtl.inference.records import RecordLog, finished
from vision_mtl.inference.sources import ImageFile, list_source
from vision_mtl.utils.distributed import Processes
from vision_mtl.utils.runtime import cpu_has_bf16

CONF = "0.01"  # the tiny test model is barely trained: a low threshold keeps detections to compare
GOOD = ["a.jpg", "b.png", "gray.png", "rotated.jpg", "sub/c.bmp", "sub/deeper/d.webp", "sub/deeper/e.tiff",
        "sub/f.jpg", "z.jpg"]
CORRUPT = "sub/broken.jpg"
ROTATED_UPRIGHT = (40, 64)  # (height, width) of the EXIF-rotated image as displayed


def make_image_folder(root: Path, shapes_root: Path) -> Path:
    """Nested folders, several formats, a grayscale image, an EXIF-rotated one, a corrupt file and
    a non-image file, made from the shapes validation images."""
    sources = sorted((shapes_root / "val" / "images").glob("*.jpg"))
    for i, name in enumerate(GOOD):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        image = Image.open(sources[i % len(sources)]).convert("RGB")
        if name == "gray.png":
            image = image.convert("L")
        if name == "rotated.jpg":
            upright = image.crop((0, 0, ROTATED_UPRIGHT[1], ROTATED_UPRIGHT[0]))
            exif = Image.Exif()
            exif[0x0112] = 6  # "rotate 90 clockwise to display": store it turned the other way
            upright.transpose(Image.Transpose.ROTATE_90).save(path, exif=exif)
            continue
        image.save(path)
    (root / CORRUPT).write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    (root / "notes.txt").write_text("not an image, not listed")
    return root


@pytest.fixture(scope="module")
def weights(trained_run) -> Path:
    return trained_run / "best.pt"


@pytest.fixture(scope="module")
def images(shapes_root, tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("images") / "photos", shapes_root)


@pytest.fixture(scope="module")
def onnx_model(weights, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_checkpoint(weights, path, exporter="torchscript")
    return path


@pytest.fixture(scope="module")
def full_run(weights, images, tmp_path_factory) -> tuple[Path, str]:
    """tools/infer.py as a user runs it: (output folder, the tool's output)."""
    out = tmp_path_factory.mktemp("infer") / "out"
    proc = run_tool("infer.py", "--weights", str(weights), "--source", str(images), "--out", str(out),
                    "--batch", "4", "--conf", CONF, "--overlays", "--workers", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, proc.stdout + proc.stderr


def run(weights, source, out, **kwargs):
    predictor = Predictor(weights, **{"conf": float(CONF), **kwargs.pop("predictor", {})})
    return infer_folder(predictor, source, out, batch_size=kwargs.pop("batch_size", 4), workers=0,
                        show_progress=False, processes=Processes(), **kwargs)


def output_files(out: Path) -> dict[str, bytes]:
    """Every result file of a run (not its progress records, settings or timings)."""
    skip = {"summary.json", ".vision_mtl_infer.json"}
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name not in skip and "records" not in p.relative_to(out).parts}


def summary_counts(out: Path) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    return {k: summary[k] for k in ("images", "succeeded", "failed", "missing", "detections")}


# ------------------------------------------------------------------------------------ outputs

def test_every_good_image_has_every_output(full_run, images):
    out, log = full_run
    with open(out / "classification.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["file"] for r in rows] == sorted(GOOD)
    assert all(float(r["score_1"]) >= float(r["score_2"]) for r in rows)
    for name in GOOD:
        with Image.open(images / name) as img:
            height, width = ImageOps.exif_transpose(img).size[::-1]
        mask = np.asarray(Image.open(out / "masks" / f"{name}.png"))
        assert mask.shape == (height, width), name
        assert mask.max() < 5  # class ids of the shapes segmentation classes
        with Image.open(out / "overlays" / f"{name}.jpg") as overlay:
            assert overlay.size == (width, height), name
    assert np.asarray(Image.open(out / "masks" / "rotated.jpg.png")).shape == ROTATED_UPRIGHT
    summary = json.loads((out / "summary.json").read_text())
    assert summary_counts(out) == {"images": len(GOOD) + 1, "succeeded": len(GOOD), "failed": 1, "missing": 0,
                                   "detections": summary["detections"]}
    assert summary["images_per_second"] > 0 and summary["settings"]["tasks"] == ["classification", "detection",
                                                                                  "segmentation"]
    assert "notes.txt" not in log


def test_corrupt_file_is_in_errors_log_and_warned_once(full_run):
    out, log = full_run
    lines = (out / "errors.log").read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith(CORRUPT + "\t") and "cannot read image" in lines[0]
    assert log.count("broken.jpg") == 1


def test_detections_load_in_pycocotools(full_run, weights):
    out, _ = full_run
    detections = json.loads((out / "detections.json").read_text())
    assert detections and all(d["score"] >= float(CONF) for d in detections)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(out / "images.json"))
        results = gt.loadRes(str(out / "detections.json"))
    assert len(results.getAnnIds()) == len(detections)
    files = {img["id"]: img["file_name"] for img in gt.dataset["images"]}
    assert sorted(files.values()) == sorted(GOOD)
    assert all(files[d["image_id"]] == d["file_name"] for d in detections)
    predictor = Predictor(weights)
    assert {d["category_id"] for d in detections} <= set(predictor.category_ids)
    for d in detections:
        x, y, w, h = d["bbox"]
        image = gt.imgs[d["image_id"]]
        assert w >= 0 and h >= 0 and x + w <= image["width"] + 0.01 and y + h <= image["height"] + 0.01


def test_checkpoint_and_onnx_write_the_same_results(full_run, onnx_model, images, tmp_path):
    run(onnx_model, images, tmp_path / "onnx", overlays=True)
    expected, actual = output_files(full_run[0]), output_files(tmp_path / "onnx")
    assert expected.keys() == actual.keys()
    for name in expected:
        if name.startswith("masks/") or name in ("errors.log", "images.json"):
            assert actual[name] == expected[name], name
    with open(full_run[0] / "classification.csv") as f, open(tmp_path / "onnx" / "classification.csv") as g:
        torch_rows, onnx_rows = list(csv.reader(f)), list(csv.reader(g))
    assert torch_rows[0] == onnx_rows[0] and len(torch_rows) == len(onnx_rows) == len(GOOD) + 1
    for row, other in zip(torch_rows[1:], onnx_rows[1:]):
        assert row[0] == other[0]
        scores, other_scores = dict(zip(row[1::2], row[2::2])), dict(zip(other[1::2], other[2::2]))
        assert scores.keys() == other_scores.keys()  # near-ties may swap places, so compare by class
        assert all(abs(float(scores[k]) - float(other_scores[k])) <= 2e-5 for k in scores)
    torch_dets = json.loads(expected["detections.json"])
    onnx_dets = json.loads(actual["detections.json"])
    assert len(torch_dets) == len(onnx_dets) > 0
    for a, b in zip(sorted(torch_dets, key=lambda d: (d["file_name"], -d["score"])),
                    sorted(onnx_dets, key=lambda d: (d["file_name"], -d["score"]))):
        assert a["file_name"] == b["file_name"] and a["category_id"] == b["category_id"]
        assert a["score"] == pytest.approx(b["score"], abs=2e-5)
        assert np.allclose(a["bbox"], b["bbox"], atol=0.02)


# ------------------------------------------------------------------------------ resume, shards

def test_interrupted_run_resumed_equals_full_run(full_run, weights, images, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = Predictor.predict_batch

    def interrupted(self, batch):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, batch)

    monkeypatch.setattr(Predictor, "predict_batch", interrupted)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run(weights, images, out, overlays=True)
    assert len(finished(out / "records")) == 4  # the first batch was written and recorded
    assert not (out / "detections.json").exists()
    monkeypatch.setattr(Predictor, "predict_batch", original)
    with pytest.raises(ConfigError, match="--resume"):
        run(weights, images, out, overlays=True)
    summary = run(weights, images, out, overlays=True, resume=True)
    assert summary["done_before"] == 4 and summary["processed_now"] == len(GOOD) + 1 - 4
    assert output_files(out) == output_files(full_run[0])
    assert summary_counts(out) == summary_counts(full_run[0])


def test_a_record_cut_short_by_a_crash_is_dropped(tmp_path):
    log = RecordLog(tmp_path / "part.jsonl")
    log.write({"file": "a.jpg", "height": 1, "width": 1})
    log.write({"file": "b.jpg", "error": "unreadable"})
    log.close()
    with open(tmp_path / "part.jsonl", "a") as f:
        f.write('{"file": "c.jpg", "hei')  # killed mid-line
    assert finished(tmp_path) == {"a.jpg"}
    log = RecordLog(tmp_path / "part.jsonl")
    log.write({"file": "b.jpg", "height": 1, "width": 1})  # a retried failure that now reads
    log.close()
    assert finished(tmp_path) == {"a.jpg", "b.jpg"}
    assert (tmp_path / "part.jsonl").read_text().count("\n") == 3


def test_torchrun_shards_merge_into_the_full_result_set(full_run, weights, images, tmp_path):
    out = tmp_path / "sharded"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(REPO_ROOT / "tools" / "infer.py"), "--weights", str(weights),
                           "--source", str(images), "--out", str(out), "--batch", "4", "--conf", CONF,
                           "--overlays", "--workers", "0"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(p.name for p in (out / "records").iterdir()) == ["part-0-of-2.jsonl", "part-1-of-2.jsonl"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2
    assert summary_counts(out) == summary_counts(full_run[0])
    expected = output_files(full_run[0])
    actual = output_files(out)
    assert actual.keys() == expected.keys()
    for name in ("errors.log", "images.json", *[n for n in expected if n.startswith("masks/")]):
        assert actual[name] == expected[name], name


# ------------------------------------------------------------------------- sources and folders

def test_sources_folder_glob_list_and_single_image(images, tmp_path):
    from_folder = list_source(images)
    assert [f.relative for f in from_folder] == sorted([*GOOD, CORRUPT])
    assert [f.relative for f in list_source(f"{images}/sub/**/*.jpg")] == ["broken.jpg", "f.jpg"]
    listing = tmp_path / "list.txt"
    listing.write_text(f"# chosen images\n{images / 'sub/c.bmp'}\n{images / 'sub/deeper/d.webp'}\n\n")
    assert [f.relative for f in list_source(listing)] == ["c.bmp", "deeper/d.webp"]
    assert [f.relative for f in list_source(images / "b.png")] == ["b.png"]
    with pytest.raises(DataError) as info:
        list_source(tmp_path / "missing")
    assert one_line(info.value) and "missing" in str(info.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        list_source(tmp_path / "empty")


def test_a_listed_file_that_is_missing_goes_to_errors_log(weights, images, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"{images / 'a.jpg'}\n{images / 'gone.jpg'}\n")
    summary = run(weights, listing, tmp_path / "out", predictor={"tasks": "cls"})
    assert summary["succeeded"] == 1 and summary["failed"] == 1
    assert (tmp_path / "out" / "errors.log").read_text().startswith("gone.jpg\t")
    written = sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith("."))
    assert written == ["classification.csv", "errors.log", "records", "summary.json"]  # only the asked task


def test_a_foreign_folder_is_never_touched(weights, images, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.txt").write_text("precious")
    with pytest.raises(ConfigError) as info:
        run(weights, images, out)
    assert one_line(info.value) and "not made by tools/infer.py" in str(info.value)
    assert [p.name for p in out.iterdir()] == ["thesis.txt"]


def test_resume_with_other_settings_is_refused(weights, images, tmp_path):
    out = tmp_path / "out"
    run(weights, images / "sub", out, predictor={"tasks": "det"})
    with pytest.raises(ConfigError) as info:
        run(weights, images / "sub", out, predictor={"tasks": "det", "conf": 0.5}, resume=True)
    assert one_line(info.value) and "conf" in str(info.value)


def test_infer_tool_user_errors_are_one_line(weights, images, tmp_path):
    proc = run_tool("infer.py", "--weights", str(weights), "--source", str(images), "--out", str(tmp_path / "o"),
                    "--tasks", "cls,depth")
    assert proc.returncode == 2 and one_line(proc.stderr) and "depth" in proc.stderr
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------- Python API

def test_predictor_takes_paths_arrays_and_tensors_alike(weights, images):
    import torch

    predictor = Predictor(weights, conf=float(CONF))
    paths = [images / "a.jpg", images / "gray.png"]
    from_paths = predictor.predict(paths)
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    from_arrays = predictor.predict(arrays)
    from_tensor = predictor.predict(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2))
    from_floats = predictor.predict(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255)
    for results in (from_arrays, from_tensor, from_floats):
        for expected, actual in zip(from_paths, results):
            assert np.array_equal(expected.mask, actual.mask)
            np.testing.assert_allclose(expected.class_scores, actual.class_scores, atol=1e-6)
            np.testing.assert_allclose(expected.boxes, actual.boxes, atol=1e-4)
    (single,) = predictor.predict(str(paths[0]))
    assert single.meta["path"] == str(paths[0]) and single.mask.shape == arrays[0].shape[:2]
    assert single.top_classes(1)[0][0] in predictor.classes["classification"]
    assert set(single.label_names()) <= set(predictor.classes["detection"])
    assert all(score >= float(CONF) for score in single.scores)


def test_predictor_answers_only_the_asked_tasks(weights, images):
    predictor = Predictor(weights, tasks="seg,cls")
    assert predictor.tasks == ["classification", "segmentation"]
    (result,) = predictor.predict(images / "a.jpg")
    assert result.boxes is None and result.mask is not None and result.class_scores is not None
    with pytest.raises(DataError, match="uint8"):
        predictor.predict(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ConfigError, match="cls, det, seg"):
        Predictor(weights, tasks="pose")


def test_predictor_is_importable_from_the_package():
    import vision_mtl

    assert vision_mtl.Predictor is Predictor


def test_benchmark_infer_prints_each_candidate_and_its_bound(weights, onnx_model, images):
    proc = run_tool("benchmark.py", "infer", "--weights", str(weights), "--onnx", str(onnx_model), "--source",
                    str(images), "--rounds", "1", "--workers", "0", "--batch", "4")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    images_line = re.search(r"images (\d+); decode s ([0-9.]+)", output)
    assert int(images_line[1]) == len(GOOD) + 1  # the good images and the corrupt one
    decode = float(images_line[2])
    numbers = r"\s+".join([r"([0-9.]+)"] * 6)
    rows = re.findall(r"^\s+((?:torch|onnx) .*?)\s{2,}" + numbers + "$", output, flags=re.M)
    names = [row[0] for row in rows]
    bf16 = "torch bf16" if cpu_has_bf16() else "torch bf16 (fp32: no native bf16)"
    assert names == ["torch float32", bf16, "onnx float32 (model.onnx)"], output
    for name, model_s, pipeline_s, pipeline_rate, model_rate, bound_ratio, versus in rows:
        model_s, pipeline_s = float(model_s), float(pipeline_s)  # one round: every figure follows from the times
        assert_printed_quotient(float(pipeline_rate), len(GOOD) + 1, pipeline_s, 1e-3)
        assert_printed_quotient(float(model_rate), len(GOOD) + 1, model_s, 1e-3)
        assert_printed_quotient(float(bound_ratio), max(decode, model_s), pipeline_s, 1e-3)
        onnx_rate = float(rows[2][3])
        assert_printed_quotient(float(versus), float(pipeline_rate), onnx_rate, 1e-3)


def test_multi_label_csv_lists_the_predicted_classes_and_every_score(tmp_path):
    folder = OutputFolder(tmp_path)
    log = RecordLog(folder.records / "part-0-of-1.jsonl")
    log.write({"file": "b.jpg", "height": 2, "width": 3, "class_scores": [0.9, 0.1, 0.6]})
    log.write({"file": "a.jpg", "height": 2, "width": 3, "class_scores": [0.2, 0.3, 0.4]})
    log.close()
    files = [ImageFile(name, tmp_path / name) for name in ("a.jpg", "b.jpg", "c.jpg")]
    spec = OutputSpec(["classification"], {"classification": ["cat", "dog", "car"]}, [], multi_label=True)
    counts = merge_outputs(folder, files, spec)
    assert counts == {"images": 3, "succeeded": 2, "failed": 0, "missing": 1, "detections": 0}
    with open(tmp_path / "classification.csv", newline="") as f:
        assert list(csv.reader(f)) == [["file", "predicted", "cat", "dog", "car"], ["a.jpg", "", "0.2", "0.3", "0.4"],
                                       ["b.jpg", "cat;car", "0.9", "0.1", "0.6"]]
