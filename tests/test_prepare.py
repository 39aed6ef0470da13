"""python -m resnet_jax.prepare imagenet2012 on fake ILSVRC-2012 archives built from real photographs, then
train.py and evaluate.py (center, 10-crop, multi-scale) on the prepared dataset, with exact counts."""

import io
import json
import tarfile
from pathlib import Path

import pytest

import evaluate
from resnet_jax import checkpoint, prepare, training
from resnet_jax.configs import imagenet

tfds = pytest.importorskip("tensorflow_datasets")


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def validation_labels() -> list[str]:
    path = Path(tfds.__file__).parent / "datasets" / "imagenet2012" / "validation_labels.txt"
    return path.read_text().split()


@pytest.fixture(scope="module")
def archives(tmp_path_factory) -> Path:
    """ILSVRC2012_img_train.tar (3 classes x 2 photographs, one inner tar per class) and ILSVRC2012_img_val.tar
    (the first 5 validation names, each a real photograph of the class TFDS's label list gives it)."""
    from tests.conftest import shared_file

    photos = {}
    with tarfile.open(shared_file("data/imagenet-samples.tar")) as tar:
        for member in tar.getmembers():
            if member.isfile():
                photos[Path(member.name).name.split("_")[0]] = tar.extractfile(member).read()
    manual = tmp_path_factory.mktemp("manual")
    with tarfile.open(manual / "ILSVRC2012_img_val.tar", "w") as tar:
        for i, wnid in enumerate(validation_labels()[:5], 1):
            _add(tar, f"ILSVRC2012_val_{i:08d}.JPEG", photos[wnid])
    with tarfile.open(manual / "ILSVRC2012_img_train.tar", "w") as outer:
        for wnid in ("n01440764", "n01443537", "n15075141"):
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as tar:
                for k in range(2):
                    _add(tar, f"{wnid}_{k}.JPEG", photos[wnid])
            _add(outer, f"{wnid}.tar", inner.getvalue())
    return manual


@pytest.mark.slow
def test_prepare_train_and_evaluate_imagenet2012(archives, tmp_path, capsys):
    data_dir = tmp_path / "tfds"
    assert prepare.main(["imagenet2012", f"--manual_dir={archives}", f"--data_dir={data_dir}"]) == 0
    out = capsys.readouterr().out
    assert "imagenet2012 train: 6 examples" in out and "imagenet2012 validation: 5 examples" in out

    workdir = tmp_path / "run"
    c = imagenet.get_config("resnet18")
    c.update(dict(data_dir=str(data_dir), image_size=64, batch_size=4, eval_batch_size=4, num_train_steps=2,
                  log_every_steps=1, eval_every_steps=2, checkpoint_every_steps=2))
    result = training.train_and_evaluate(c, str(workdir))
    assert result["step"] == 2
    _, _, info = checkpoint.load_checkpoint(str(workdir))
    assert info["num_classes"] == 1000 and info["class_names"][:2] == ["tench", "goldfish"]
    assert info["class_ids"][1] == "n01443537"

    output = tmp_path / "eval.json"
    assert evaluate.main([f"--workdir={workdir}", "--crops=all", "--batch_size=4", "--limit=2",
                          f"--output={output}"]) == 0
    results = {r["crops"]: r for r in json.loads(output.read_text())}
    assert {k: r["num_examples"] for k, r in results.items()} == {"center": 5, "10": 5, "multiscale": 2}
    assert all(r["split"] == "validation" for r in results.values())


def test_archives_that_would_be_mislabelled_are_refused(archives, tmp_path):
    with pytest.raises(prepare.PrepareError, match=r"lacks ILSVRC2012_img_train\.tar and ILSVRC2012_img_val\.tar"):
        prepare.check_imagenet_archives(str(tmp_path))
    (tmp_path / "ILSVRC2012_img_train.tar").write_bytes((archives / "ILSVRC2012_img_train.tar").read_bytes())
    with tarfile.open(tmp_path / "ILSVRC2012_img_val.tar", "w") as tar:  # a gap: 1, 3
        for i in (1, 3):
            _add(tar, f"ILSVRC2012_val_{i:08d}.JPEG", b"x")
    with pytest.raises(prepare.PrepareError, match=r"without gaps .* found 'ILSVRC2012_val_00000003.JPEG'"):
        prepare.check_imagenet_archives(str(tmp_path))
    with pytest.raises(SystemExit, match="error: imagenet2012 is built from archives you download yourself"):
        prepare.main(["imagenet2012", f"--data_dir={tmp_path}"])
