"""Running a trained model: checkpoints, runners (PyTorch or ONNX behind one call), model info,
preprocessing, results in original pixels, and the export contract the runners read."""
