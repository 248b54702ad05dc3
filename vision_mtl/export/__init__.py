"""ONNX export of the whole multi-task model, checked against PyTorch with onnxruntime."""
