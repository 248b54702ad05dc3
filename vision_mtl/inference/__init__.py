"""Inference over folders of images: sources, pipelined loading, result files, resume and sharding."""
