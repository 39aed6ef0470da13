"""Evaluate a saved run the way the paper reports it: top-1 / top-5 error with center-crop, standard 10-crop
and fully-convolutional multi-scale testing (thin CLI over resnet_jax.evaluation).

    python -m resnet_jax.evaluate --workdir=runs/r20 [--step=latest|best|N] [--dataset=...] [--split=test] \
        [--crops=center|10|multiscale|all] [--batch_size=N] [--output=eval.json]
    python -m resnet_jax.evaluate --workdir=runs/r20 --images cat.jpg dog.png
    python -m resnet_jax.evaluate --workdir=runs/r50 --workdir=runs/r101 --crops=10   # an ensemble (Table 5)

The same as ``resnet-jax-evaluate`` and, in a checkout, ``python evaluate.py``.
"""

import argparse
import json
import sys

from resnet_jax import host_memory


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True, action="extend", nargs="+",
                   help="a training workdir, or one written by resnet_jax.convert; several (repeat the flag, or "
                        "list them): an ensemble, their softmax scores averaged (Sec. 4.1, Table 5)")
    p.add_argument("--step", default="latest", help="latest, best (lowest validation error) or a step number "
                                                    "(of every --workdir)")
    p.add_argument("--dataset", help="TFDS name or folder:/path (default: the run's own dataset)")
    p.add_argument("--data_dir", help="TFDS data_dir")
    p.add_argument("--split", help="default: the run's validation split")
    p.add_argument("--crops", default="center", choices=["center", "10", "multiscale", "all"])
    p.add_argument("--batch_size", type=int, default=100, help="global evaluation batch (padded, never dropped)")
    p.add_argument("--limit", type=int, help="multi-scale only: evaluate the first N examples")
    p.add_argument("--output", help="write the results as JSON here")
    p.add_argument("--images", nargs="+", help="classify these files instead: top-5 classes and probabilities")
    p.add_argument("--features", help="write the split's pre-logits embeddings and labels to this .npz instead "
                                      "(the center view, or the whole image for CIFAR models)")
    return p.parse_args(argv)


def classify(clf, files) -> list[str]:
    """Print the top-5 classes of each readable file; returns the errors of those that could not be read."""
    import numpy as np

    from resnet_jax import data

    errors = []
    for path in files:
        try:
            p = clf.predict([path])[0]
        except data.DataError as e:
            errors.append(str(e))
            continue
        print(path)
        for i in np.argsort(-p)[:5]:  # the name, and the dataset's id (e.g. the wnid) where it differs
            name, class_id = clf.class_names[i], clf.class_ids[i]
            print(f"  {p[i]:7.2%}  {name}" + (f"  ({class_id})" if class_id != name else ""))
    return errors


def write_features(args, clf, source) -> int:
    """Embeddings (N, D) and labels (N,) of every example of the split, in the split's order, to an .npz."""
    import numpy as np
    from tqdm import tqdm

    from resnet_jax import data, evaluation

    pre = clf.info["preprocessing"]
    view = "cifar" if clf.preset == "cifar" else "center"
    batches = data.eval_batches(source, args.batch_size, view, pre["image_size"], pre.get("resize_size"),
                                process_index=0, process_count=1)
    with tqdm(total=source.num_examples, desc="features", unit="img") as bar:
        embeddings, labels = evaluation.extract_features(clf.model, clf.variables, batches, clf.mean, clf.std, bar)
    np.savez(args.features, embeddings=embeddings, labels=labels, class_names=np.array(clf.class_names))
    print(f"wrote {len(labels)} embeddings of dimension {embeddings.shape[1]} to {args.features}")
    return 0


def main(argv=None) -> int:
    args = parse(argv)
    import jax

    from resnet_jax import checkpoint, data, evaluation, storage

    if args.features and len(args.workdir) > 1:
        sys.exit("error: --features writes one network's embeddings: pass one --workdir")
    try:
        members = [evaluation.Classifier(*checkpoint.load_checkpoint(w, args.step), workdir=w) for w in args.workdir]
        if args.output:
            storage.resolve(args.output, "--output")
    except (checkpoint.CheckpointError, storage.StorageError) as e:
        sys.exit(f"error: {e}")
    try:
        clf = members[0] if len(members) == 1 else evaluation.Ensemble(members)
    except ValueError as e:  # members that cannot be averaged
        sys.exit(f"error: {e}")
    info = clf.info
    if args.images:
        errors = classify(clf, args.images)
        if errors:
            sys.exit("\n".join(f"error: {e}" for e in errors))
        return 0
    pre, ds = info["preprocessing"], info.get("dataset", {})
    dataset = args.dataset or ds.get("dataset")
    split = args.split or ds.get("eval_split")
    if not dataset or not split:
        sys.exit("error: this checkpoint names no dataset; pass --dataset and --split")
    modes = ["center", "10", "multiscale"] if args.crops == "all" else [args.crops]
    cifar = pre.get("eval_preset") == "cifar"
    if cifar and modes != ["center"]:
        if args.crops != "all":
            sys.exit(f"error: --crops={args.crops} applies to ImageNet-sized models; this {info['model']} "
                     f"classifies whole {pre['image_size']}x{pre['image_size']} images: use --crops=center")
        modes = ["center"]
    try:
        source = data.get_source(dataset, split, args.data_dir or ds.get("data_dir"), image_size=pre["image_size"])
    except data.DataError as e:
        sys.exit(f"error: {e}")
    if args.features:
        return write_features(args, clf, source)
    results = [dict(r, dataset=dataset) for r in evaluation.evaluate_views(clf, source, modes, args.batch_size,
                                                                            args.limit)]
    if jax.process_index() == 0:
        wm, ws = max(18, len(info["model"])), max(7, len(str(info["step"])))  # an ensemble's names are longer
        print(f"\n{'model':<{wm}} {'step':>{ws}} {'views':<30} {'examples':>9} {'top-1 err':>10} {'top-5 err':>10}")
        for r in results:
            print(f"{r['model']:<{wm}} {r['step']:>{ws}} {r['view']:<30} {r['num_examples']:>9} "
                  f"{r['top1_error']:>9.2f}% {r['top5_error']:>9.2f}%")
        if args.output:
            try:
                storage.write_text(args.output, json.dumps(results[0] if len(results) == 1 else results, indent=1))
            except storage.StorageError as e:
                sys.exit(f"error: {e}")
    return 0


def run() -> None:
    """The command (``resnet-jax-evaluate``)."""
    host_memory.keep_freed_memory()  # before JAX starts its threads
    sys.exit(main())


if __name__ == "__main__":
    run()
