"""resnet_jax: the networks of "Deep Residual Learning for Image Recognition" (He et al., 2016) in JAX/Flax."""

from resnet_jax import quiet

quiet.quiet_native_logs()  # before anything imports TensorFlow

__all__ = ["MODELS", "Classifier", "Ensemble", "ResNet", "ResidualBlock", "Shortcut", "Stage", "convert_layout",
           "create_model", "list_models", "load_checkpoint"]
__version__ = "0.1.0"

# Imported on first use (PEP 562), so that the command-line tools start in a fraction of a second and can take a
# stop signal before JAX has loaded: the networks pull in JAX and Flax, the checkpoint readers Orbax.
_LAZY = {"MODELS": "models", "ResidualBlock": "models", "ResNet": "models", "Shortcut": "models", "Stage": "models",
         "convert_layout": "models", "create_model": "models", "list_models": "models",
         "Classifier": "evaluation", "Ensemble": "evaluation", "load_checkpoint": "checkpoint"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"resnet_jax.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'resnet_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
