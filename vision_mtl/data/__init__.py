"""Data: the Sample/Batch contracts, readers for each file format, transforms and loaders."""
