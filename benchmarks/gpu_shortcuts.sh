#!/usr/bin/env bash
# Table 3's study (ResNet-34 with shortcut options A, B and C, and plain-34) on one GPU, with the ImageNet study's
# full recipe on the same packed 100-class subset (see gpu_imagenet.sh for packing it):
#   bash benchmarks/gpu_shortcuts.sh gpu_data/tiny-imagenet-100.tar.gz runs/shortcuts_gpu [reproduce flags ...]
# Add --imagenet_workdir=runs/imagenet_gpu to reuse that study's plain-34 and ResNet-34 (option A).
STUDY=shortcuts exec bash "$(dirname "$0")/gpu_imagenet.sh" "$@"
