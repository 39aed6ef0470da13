"""Pretrained weights: PyTorch-family ResNets (torchvision, timm, the CIFAR option-A nets, Hugging Face
transformers) read into self-describing checkpoints, and checkpoints written back as PyTorch state dicts or as
folders that transformers and timm load.

By job: ``layouts`` (where each tensor lives in each layout, and which network a state dict holds), ``files``
(weights files, model folders, the Hugging Face hub and the configs beside them), ``importer`` (conversion into a
checkpoint and back), ``exporter`` (folders in transformers' and timm's layouts, with their configs and a model
card), ``pretrained`` (the one-line use, through a cache of conversions).
"""

from resnet_jax.weights.exporter import EXPORT_LAYOUTS, save_pretrained, unsupported
from resnet_jax.weights.files import Files, locate, read_state_dict
from resnet_jax.weights.importer import CIFAR10_CLASSES, TORCH_MEAN, TORCH_STD, export_torch, import_weights
from resnet_jax.weights.layouts import (
    LAYOUTS,
    ConversionError,
    clean_state_dict,
    describe,
    detect_layout,
    layout_of,
    layout_options,
    torch_key,
    torch_state_from_variables,
    variables_from_torch,
)
from resnet_jax.weights.pretrained import cache_dir, pretrained_workdir

__all__ = ["CIFAR10_CLASSES", "EXPORT_LAYOUTS", "LAYOUTS", "TORCH_MEAN", "TORCH_STD", "ConversionError", "Files",
           "cache_dir", "clean_state_dict", "describe", "detect_layout", "export_torch", "import_weights",
           "layout_of", "layout_options", "locate", "pretrained_workdir", "read_state_dict", "save_pretrained",
           "torch_key", "torch_state_from_variables", "unsupported", "variables_from_torch"]
