"""Multi-task learning: how the per-task losses, or their gradients, are combined into one update."""

from vision_mtl.mtl.balancers import BALANCERS, Balancer, build_balancer, captured_features, independent
from vision_mtl.mtl.gradients import GRADIENT_BALANCERS, GradientBalancer, check_trainable

BALANCERS.update(GRADIENT_BALANCERS)

__all__ = ["BALANCERS", "GRADIENT_BALANCERS", "Balancer", "GradientBalancer", "build_balancer", "captured_features",
           "check_trainable", "independent"]
