"""Training configs (ml_collections), selected as ``--config=resnet_jax/configs/<file>.py:<model>``."""
