"""Features for downstream use and models exported for serving, checked against Classifier.predict on real
photographs (the ../shared ImageNet samples) with batch sizes 1 and 7 from one export."""

import tarfile

import jax
import numpy as np
import pytest

import evaluate
from resnet_jax import evaluation, export
from tests.test_evaluate import save_run, write_images


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Seven real ImageNet photographs, as the 64-px center views a resnet18 run takes (uint8)."""
    from tests.conftest import shared_file

    target = tmp_path_factory.mktemp("photos")
    with tarfile.open(shared_file("data/imagenet-samples.tar")) as tar:
        members = [m for m in tar.getmembers() if m.isfile()][:7]
        tar.extractall(target, members=members, filter="data")
    return sorted(str(p) for p in target.rglob("*.JPEG"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    save_run(workdir, name="resnet18", image_size=64, eval_preset="center")
    return workdir


def test_features_are_the_pre_logits_and_stage_maps(run, photos):
    clf = evaluation.Classifier.from_checkpoint(str(run))
    emb = clf.features(photos)
    assert emb.shape == (7, 512)
    maps = clf.features(photos, stages=True)
    assert maps["stage4"].shape == (7, 2, 2, 512) and maps["stem"].shape == (7, 16, 16, 64)
    np.testing.assert_allclose(maps["pre_logits"], emb, rtol=1e-6)
    np.testing.assert_allclose(maps["stage4"].mean(axis=(1, 2)), emb, rtol=1e-5, atol=1e-6)
    w, b = (np.asarray(clf.variables["params"]["fc"][k]) for k in ("kernel", "bias"))
    np.testing.assert_allclose(jax.nn.softmax(emb @ w + b), clf.predict(photos), rtol=1e-4, atol=1e-6)


def test_evaluate_writes_features_of_every_example(tmp_path):
    root = write_images(tmp_path / "images")  # 13 examples, a prime: the last batch is padded
    save_run(tmp_path / "run", name="cifar_resnet20", image_size=32, eval_preset="cifar", dataset=f"folder:{root}")
    out = tmp_path / "f.npz"
    assert evaluate.main([f"--workdir={tmp_path / 'run'}", "--batch_size=4", f"--features={out}"]) == 0
    saved = np.load(out)
    assert saved["embeddings"].shape == (13, 64) and list(saved["labels"]) == [0] * 5 + [1] * 4 + [2] * 4
    clf = evaluation.Classifier.from_checkpoint(str(tmp_path / "run"))
    files = sorted(str(p) for p in (root / "val").rglob("*.png"))
    np.testing.assert_allclose(saved["embeddings"], clf.features(files), rtol=1e-5, atol=1e-6)


def test_stablehlo_export_serves_any_batch_like_predict(run, photos, tmp_path):
    path = tmp_path / "model.jax"
    assert export.main([f"--workdir={run}", "--format=stablehlo", f"--output={path}"]) == 0
    served = jax.export.deserialize(bytearray(path.read_bytes()))
    assert "onednn" not in served.mlir_module()  # plain XLA convolutions (conv.portable): runs anywhere
    clf = evaluation.Classifier.from_checkpoint(str(run))
    views = clf.preprocess(photos)
    for n in (1, 7):
        np.testing.assert_allclose(np.asarray(served.call(views[:n])), clf.predict(views[:n]), atol=1e-5)


@pytest.mark.slow
def test_saved_model_export_serves_any_batch_like_predict(run, photos, tmp_path):
    tf = pytest.importorskip("tensorflow")
    path = tmp_path / "saved"
    assert export.main([f"--workdir={run}", "--format=saved_model", f"--output={path}"]) == 0
    serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    clf = evaluation.Classifier.from_checkpoint(str(run))
    views = clf.preprocess(photos)
    for n in (1, 7):
        got = serve(images=tf.constant(views[:n]))["probabilities"].numpy()
        np.testing.assert_allclose(got, clf.predict(views[:n]), atol=1e-5)


def test_export_of_a_missing_run(tmp_path):
    with pytest.raises(SystemExit, match=r"^error: no checkpoints in "):
        export.main([f"--workdir={tmp_path}", f"--output={tmp_path / 'm.jax'}"])
    assert not (tmp_path / "m.jax").exists()


def test_onnx_export_runs_in_onnxruntime_like_predict(run, photos, tmp_path):
    pytest.importorskip("jax2onnx")
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "model.onnx"
    assert export.main([f"--workdir={run}", "--format=onnx", f"--output={path}"]) == 0
    session = ort.InferenceSession(str(path))
    (images,), (probabilities,) = session.get_inputs(), session.get_outputs()
    assert (images.name, images.type, images.shape[1:]) == ("images", "tensor(uint8)", [64, 64, 3])
    assert probabilities.name == "probabilities" and isinstance(images.shape[0], str)  # a dynamic batch
    clf = evaluation.Classifier.from_checkpoint(str(run))
    views = clf.preprocess(photos)
    for n in (1, 7):
        got = session.run(["probabilities"], {"images": views[:n]})[0]
        np.testing.assert_allclose(got, clf.predict(views[:n]), atol=1e-4)
