"""Evaluation: metrics per task over a validation split, for a checkpoint or an ONNX model."""
