"""Import pretrained PyTorch-family ResNets into self-describing Orbax checkpoints, and export them back.

    python -m resnet_jax.convert --from=torch --input=resnet20.th --workdir=out/
    python -m resnet_jax.convert --from=torch --input=hf:microsoft/resnet-50 --workdir=r50/
    python -m resnet_jax.convert --to=torch --workdir=out/ --output=resnet20.pt
    python -m resnet_jax.convert --to=transformers --workdir=runs/r50 --output=r50-hf/   # or --to=timm

``--input``: a .safetensors file (no PyTorch needed), a PyTorch .pth/.th file, a saved model folder
(model.safetensors with its config.json and preprocessor_config.json, as transformers' ``save_pretrained`` writes
it) or ``hf:<repo>[@revision]``. The layout (torchvision/timm, the CIFAR option-A nets, transformers), the
architecture and the class count are read from the weights; ``--model``, when given, must agree. A
``state_dict`` wrapper and a ``module.`` (DataParallel) prefix are accepted. PyTorch files are read with
``torch.load(weights_only=True)``: no pickled code runs. ``--to=transformers|timm`` writes a folder those
libraries load (``Classifier.save_pretrained``; no PyTorch needed), refusing in one line what the layout cannot
express. ``resnet_jax.weights`` is the library behind this CLI.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from resnet_jax import checkpoint, data, models, storage
from resnet_jax.weights import (  # noqa: F401  (names kept importable from here)
    CIFAR10_CLASSES,
    TORCH_MEAN,
    TORCH_STD,
    ConversionError,
    clean_state_dict,
    export_torch,
    import_weights,
    layout_of,
    layout_options,
    read_state_dict,
    torch_key,
    torch_state_from_variables,
    variables_from_torch,
)


def import_torch(model_name: str | None, input_path: str, workdir: str, class_names: Sequence[str] | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None, scan: bool = False) -> dict:
    """``import_weights`` with the model name first (``None``: whatever the weights hold)."""
    return import_weights(input_path, workdir, model_name, class_names, mean, std, scan)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--from", dest="source", choices=["torch"], help="import from this framework")
    p.add_argument("--to", dest="target", choices=["torch", "transformers", "timm"],
                   help="export a checkpoint: a PyTorch state dict (torch) or a folder that transformers or timm "
                        "loads")
    p.add_argument("--model", help="a name from resnet_jax.list_models() that the weights must hold (default: "
                                   "read from the weights)")
    p.add_argument("--input", help="the weights to import: .safetensors (no PyTorch needed), .pth/.th, a saved "
                                   "model folder, or hf:<repo>[@revision] on the Hugging Face hub (e.g. "
                                   "hf:microsoft/resnet-50, hf:timm/resnet50.tv_in1k)")
    p.add_argument("--workdir", required=True, help="where the checkpoint is written (import) or read (export)")
    p.add_argument("--output", help="the PyTorch file (--to=torch) or the folder (--to=transformers|timm) to write")
    p.add_argument("--step", default="latest")
    p.add_argument("--class_names", help="a text file with one class name per line")
    p.add_argument("--mean", type=float, nargs=3, help="input mean on [0, 1] RGB (default: ImageNet's)")
    p.add_argument("--std", type=float, nargs=3, help="input std on [0, 1] RGB (default: ImageNet's)")
    p.add_argument("--scan", action="store_true", help="store the scanned (stacked-block) layout")
    args = p.parse_args(argv)
    try:
        if args.source == "torch":
            if not args.input:
                p.error("--from=torch needs --input")
            names = None
            if args.class_names:
                with open(args.class_names) as f:
                    names = [line.strip() for line in f if line.strip()]
            meta = import_weights(args.input, args.workdir, args.model, names, args.mean, args.std, args.scan)
            network = models.describe(meta["model"], meta["model_options"])
            print(f"wrote {network} ({meta['num_classes']} classes, {meta['source']['layout']} layout) to "
                  f"{checkpoint.checkpoint_dir(args.workdir)}/0")
        elif args.target == "torch":
            if not args.output:
                p.error("--to=torch needs --output")
            state = export_torch(args.workdir, args.output, args.step)
            print(f"wrote {len(state)} tensors to {args.output}")
        elif args.target in ("transformers", "timm"):
            if not args.output:
                p.error(f"--to={args.target} needs --output (a folder)")
            from resnet_jax.evaluation import Classifier

            written = Classifier.from_checkpoint(args.workdir, args.step).save_pretrained(args.output, args.target)
            print(f"wrote {', '.join(written)} to {args.output} ({args.target} layout)")
        else:
            p.error("pass --from=torch (import) or --to=torch|transformers|timm (export)")
    except (ConversionError, checkpoint.CheckpointError, data.DataError, storage.StorageError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
