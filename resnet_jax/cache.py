"""Where resnet_jax keeps what it makes once and reuses: converted pretrained weights (``weights``) and the
compiled oneDNN convolutions (``native``)."""

import os


def cache_dir() -> str:
    """``$RESNET_JAX_CACHE``, else ``$XDG_CACHE_HOME/resnet_jax``, else ``~/.cache/resnet_jax``."""
    if os.environ.get("RESNET_JAX_CACHE"):
        return os.path.expanduser(os.environ["RESNET_JAX_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "resnet_jax")
