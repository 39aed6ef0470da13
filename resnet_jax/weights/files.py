"""Reading pretrained weights: a weights file, a saved model folder, or a Hugging Face hub repository, with the
config.json and preprocessor_config.json that describe them where there are any."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from resnet_jax import checkpoint, storage
from resnet_jax.cache import cache_dir
from resnet_jax.weights.layouts import ConversionError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
CONFIG_FILES = ("config.json", "preprocessor_config.json")


@dataclasses.dataclass
class Files:
    """A source's local files: the weights and, where the source has them, its configs (parsed)."""

    spec: str  # as the user gave it
    weights: str  # local path
    config: dict | None = None  # config.json: transformers' architecture, or timm's pretrained_cfg
    preprocessor: dict | None = None  # preprocessor_config.json (transformers)


def _json(path: str | None) -> dict | None:
    if path is None or not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ConversionError(f"cannot read {path}: {e}") from e


def _hub(spec: str) -> Files:
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError
    except ImportError:
        raise ConversionError("reading from the Hugging Face hub needs huggingface_hub: pip install huggingface_hub "
                              "safetensors") from None
    repo, _, revision = spec[len("hf:"):].partition("@")

    def get(name: str, required: bool) -> str | None:
        try:
            return hf_hub_download(repo, name, revision=revision or None)
        except Exception as e:
            if not required and isinstance(e, EntryNotFoundError):  # not in the repo, or offline and not cached
                return None
            raise ConversionError(f"cannot get {name} of {repo} from the Hugging Face hub or its cache: "
                                  f"{type(e).__name__}: {checkpoint.first_line(e)}") from e

    weights = get("model.safetensors", required=True)
    config, preprocessor = (_json(get(name, required=False)) for name in CONFIG_FILES)
    return Files(spec, weights, config, preprocessor)


def _download(spec: str) -> str:
    """A weights file or saved model folder in a bucket, copied into the cache (whole files, re-fetched when
    the object's size or generation changes); its local path."""
    import hashlib

    names = [n for n in (*WEIGHT_FILES, *CONFIG_FILES) if storage.exists(storage.join(spec, n))] \
        if storage.isdir(spec) else None
    sources = [storage.join(spec, n) for n in names] if names is not None else [spec]
    if not (names or storage.exists(spec)):
        raise ConversionError(f"{spec} does not exist{storage.missing_bucket(spec)} (expected a training workdir, "
                              f"a weights file or a model folder)")
    with storage.errors(spec, "cannot read"):
        info = [storage.filesystem(spec).info(url) for url in sources]
    key = "|".join(f"{url}:{i.get('size')}:{i.get('generation') or i.get('ETag') or i.get('mtime')}"
                   for url, i in zip(sources, info))
    target = os.path.join(cache_dir(), "downloads", hashlib.sha256(key.encode()).hexdigest()[:16])
    local = [os.path.join(target, storage.basename(url)) for url in sources]
    for url, path in zip(sources, local):
        if not os.path.isfile(path):
            storage.write_bytes(path, storage.read_bytes(url))
    return target if names is not None else local[0]


def locate(spec: str) -> Files:
    """The local files of ``spec``: ``hf:<repo>[@revision]``, a folder holding model.safetensors (or
    pytorch_model.bin) and its configs, or a weights file alone (.safetensors, .pth, .th, .bin); a folder or
    file in a bucket is copied into the cache first."""
    if spec.startswith("hf:"):
        return _hub(spec)
    if storage.is_remote(spec):
        return dataclasses.replace(locate(_download(storage.resolve(spec, "weights"))), spec=spec)
    if os.path.isdir(spec):
        weights = next((os.path.join(spec, f) for f in WEIGHT_FILES if os.path.isfile(os.path.join(spec, f))), None)
        if weights is None:
            raise ConversionError(f"{spec} holds neither checkpoints/ (a training workdir) nor "
                                  f"{' nor '.join(WEIGHT_FILES)} (a saved model)")
        config, preprocessor = (_json(os.path.join(spec, name)) for name in CONFIG_FILES)
        return Files(spec, weights, config, preprocessor)
    if not os.path.isfile(spec):
        raise ConversionError(f"{spec} does not exist (expected a training workdir, a weights file, a model folder "
                              f"or hf:<repo>)")
    return Files(spec, spec)


def read_state_dict(path: str) -> dict[str, Any]:
    """A state dict from ``path`` by its content: safetensors (read with the safetensors library's numpy API; no
    PyTorch needed) or PyTorch's own format (with ``torch.load(weights_only=True)``, which runs no pickled code)."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise ConversionError(f"cannot read {path}: {e.strerror}") from e
    if len(head) > 8 and head[8:9] == b"{":  # safetensors: an 8-byte header length, then the JSON header
        try:
            from safetensors.numpy import load_file
        except ImportError:
            raise ConversionError("reading .safetensors needs the safetensors package: pip install safetensors") \
                from None
        try:
            return load_file(path)
        except Exception as e:
            raise ConversionError(f"cannot read {path} as safetensors: {checkpoint.first_line(e)}") from e
    try:
        import torch
    except ImportError:
        raise ConversionError(f"{path} is a PyTorch file (not safetensors): reading it needs torch (pip install "
                              f"torch), or convert it to .safetensors where torch is installed") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
        detail = next((lines[i + 1] for i, line in enumerate(lines[:-1]) if line.endswith("WeightsUnpickler error:")),
                      lines[0])  # torch's own reason, without its advice to turn the safety off
        raise ConversionError(f"cannot read {path} as a PyTorch state dict (loaded with weights_only=True, "
                              f"which runs no pickled code): {detail}") from e
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise ConversionError(f"{path} holds a {type(state).__name__}, not a PyTorch state dict")
    return state


def preprocessing(files: Files, layout: str) -> dict:
    """The evaluation preprocessing a source states (transformers' preprocessor_config.json, timm's
    pretrained_cfg), on [0, 1] inputs: ``mean``, ``std``, ``image_size`` and ``resize_size`` (the shorter side
    before the central crop). Empty where the source says nothing."""
    out: dict = {}
    pre, cfg = files.preprocessor, (files.config or {}).get("pretrained_cfg")
    if pre:
        size = pre.get("crop_size") or pre.get("size")
        if isinstance(size, dict):
            size = size.get("height") or size.get("shortest_edge")
        out.update(mean=pre.get("image_mean"), std=pre.get("image_std"), image_size=size)
        if pre.get("crop_pct") and size:  # ConvNext-style: resize to size / crop_pct, crop size
            out["resize_size"] = round(size / pre["crop_pct"])
        elif pre.get("do_center_crop") and isinstance(pre.get("size"), dict) and "shortest_edge" in pre["size"]:
            out["resize_size"] = pre["size"]["shortest_edge"]
    elif cfg:  # timm
        size = (cfg.get("test_input_size") or cfg.get("input_size") or [None, None])[-1]
        out.update(mean=cfg.get("mean"), std=cfg.get("std"), image_size=size)
        if cfg.get("crop_pct") and size:
            out["resize_size"] = int(size / cfg["crop_pct"])  # timm: floor(size / crop_pct)
    return {k: v for k, v in out.items() if v is not None}
