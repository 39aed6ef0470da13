"""resnet_jax: the networks of "Deep Residual Learning for Image Recognition" (He et al., 2016) in JAX/Flax."""

from resnet_jax.models import (
    MODELS,
    ResidualBlock,
    ResNet,
    Shortcut,
    Stage,
    convert_layout,
    create_model,
    list_models,
)

__all__ = ["MODELS", "ResNet", "ResidualBlock", "Shortcut", "Stage", "convert_layout", "create_model", "list_models"]
__version__ = "0.1.0"
