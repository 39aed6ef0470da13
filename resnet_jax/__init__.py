"""resnet_jax: the networks of "Deep Residual Learning for Image Recognition" (He et al., 2016) in JAX/Flax."""

from resnet_jax import quiet

quiet.quiet_native_logs()  # before anything imports TensorFlow

from resnet_jax.models import (  # noqa: E402
    MODELS,
    ResidualBlock,
    ResNet,
    Shortcut,
    Stage,
    convert_layout,
    create_model,
    list_models,
)

__all__ = ["MODELS", "Classifier", "ResNet", "ResidualBlock", "Shortcut", "Stage", "convert_layout", "create_model",
           "list_models", "load_checkpoint"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Checkpoint-reading pieces pull in Orbax; import them only when asked for.
    if name == "Classifier":
        from resnet_jax.evaluation import Classifier

        return Classifier
    if name == "load_checkpoint":
        from resnet_jax.checkpoint import load_checkpoint

        return load_checkpoint
    raise AttributeError(f"module 'resnet_jax' has no attribute {name!r}")
