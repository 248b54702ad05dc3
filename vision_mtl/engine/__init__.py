"""Engine: training, evaluation, metrics, checkpoints and benchmarks built on the models and data."""
