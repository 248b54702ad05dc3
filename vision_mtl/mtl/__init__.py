"""Multi-task learning: how the per-task losses are combined into the one loss a step minimises."""

from vision_mtl.mtl.balancers import BALANCERS, Balancer, build_balancer

__all__ = ["BALANCERS", "Balancer", "build_balancer"]
