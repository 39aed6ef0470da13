"""evaluate.py and the inference API: exact counts, views against direct model calls, failures."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import evaluate
import resnet_jax
from resnet_jax import checkpoint, data, evaluation, models

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["ant", "bee", "cat"]


def write_images(root: Path, counts=(5, 4, 4), size=(80, 100)) -> Path:
    """13 examples (a prime), in 3 classes, of a non-square size."""
    rng = np.random.default_rng(0)
    for name, n in zip(CLASSES, counts):
        folder = root / "val" / name
        folder.mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def save_run(workdir: Path, name="resnet18", image_size=64, eval_preset="center", dataset=None, num_classes=3,
             mean=(120.0, 110.0, 100.0), std=(60.0, 60.0, 60.0), step=7, seed=0, fc_scale=1.0):
    model = models.create_model(name, num_classes=num_classes)
    variables = model.init(jax.random.key(seed), jnp.zeros((1, image_size, image_size, 3)))
    variables["params"]["fc"]["kernel"] = variables["params"]["fc"]["kernel"] * fc_scale  # confident answers
    # non-trivial running statistics, so that eval mode differs from train mode
    variables = {"params": variables["params"],
                 "batch_stats": jax.tree.map(lambda x: x + 0.1, variables["batch_stats"])}
    meta = dict(model=name, model_options={}, num_classes=num_classes, class_names=CLASSES[:num_classes],
                preprocessing=dict(train_preset="inception", eval_preset=eval_preset, image_size=image_size,
                                   mean=list(mean), std=list(std)),
                dataset=dict(dataset=dataset, eval_split="val", train_split="train", data_dir=None), step=step)
    mngr = checkpoint.manager(str(workdir), async_save=False)
    checkpoint.save(mngr, step, variables, meta)
    mngr.close()
    return model, variables


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = write_images(tmp_path_factory.mktemp("images"))
    workdir = tmp_path_factory.mktemp("run")
    model, variables = save_run(workdir, dataset=f"folder:{root}")
    return workdir, root, model, variables


def direct_probs(model, variables, views, mean=(120.0, 110.0, 100.0), std=60.0):
    x = (views.astype(np.float32) - np.array(mean)) / np.array(std)
    return np.asarray(jax.nn.softmax(model.apply(variables, x.reshape(-1, *x.shape[-3:]))))


def test_center_crop_matches_a_direct_model_call_and_counts_every_example(run, tmp_path):
    workdir, root, model, variables = run
    out = tmp_path / "center.json"
    assert evaluate.main([f"--workdir={workdir}", "--batch_size=4", f"--output={out}"]) == 0
    result = json.loads(out.read_text())
    assert result["num_examples"] == 13 and result["step"] == 7 and result["crops"] == "center"
    src = data.get_source(f"folder:{root}", "val")
    views = np.stack([data.eval_preprocess(Path(p).read_bytes(), "center", 64).numpy() for p in src.paths])
    probs = direct_probs(model, variables, views)
    top1 = 100 * np.mean(probs.argmax(1) == src.labels)
    assert result["top1_accuracy"] == pytest.approx(top1)
    assert result["top1_error"] == pytest.approx(100 - top1)
    assert result["top5_error"] == 0.0  # 3 classes


def test_ten_crop_averages_softmax_over_the_ten_views(run, tmp_path):
    workdir, root, model, variables = run
    out = tmp_path / "ten.json"
    evaluate.main([f"--workdir={workdir}", "--batch_size=8", "--crops=10", f"--output={out}"])
    result = json.loads(out.read_text())
    src = data.get_source(f"folder:{root}", "val")
    views = np.stack([data.eval_preprocess(Path(p).read_bytes(), "10", 64).numpy() for p in src.paths])
    probs = direct_probs(model, variables, views).reshape(13, 10, 3).mean(axis=1)
    assert result["num_examples"] == 13
    assert result["top1_accuracy"] == pytest.approx(100 * np.mean(probs.argmax(1) == src.labels))


def test_multiscale_scores_whole_images_at_several_scales(run, tmp_path):
    _, root, model, variables = run
    src = data.get_source(f"folder:{root}", "val")
    views = evaluation.multiscale_views(Path(src.paths[0]).read_bytes(), sizes=(64, 96))
    assert [v.shape for v in views] == [(2, 64, 96, 3), (2, 96, 128, 3)]  # 80x100: shorter side -> size
    np.testing.assert_array_equal(views[0][1], views[0][0][:, ::-1])
    scores = evaluation.model_scores(model, [120.0, 110.0, 100.0], [60.0] * 3)
    result = evaluation.evaluate_multiscale(scores, variables, src, sizes=(64, 96))
    assert result["num_examples"] == 13 and 0 <= result["top1_error"] <= 100
    # images of other shapes compile other views, after the first image's (ImageNet's photographs vary)
    mixed = tmp_path / "mixed"
    shutil.copytree(root, mixed)
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (100, 80, 3), dtype=np.uint8)).save(mixed / "val" / "cat" / "tall.png")
    mixed_src = data.get_source(f"folder:{mixed}", "val")
    result = evaluation.evaluate_multiscale(scores, variables, mixed_src, sizes=(64, 96))
    assert result["num_examples"] == 14 and 0 <= result["top1_error"] <= 100


def test_cifar_models_refuse_imagenet_views(tmp_path):
    save_run(tmp_path, name="cifar_resnet20", image_size=32, eval_preset="cifar", dataset="folder:/nowhere")
    with pytest.raises(SystemExit, match=r"applies to ImageNet-sized models.*--crops=center"):
        evaluate.main([f"--workdir={tmp_path}", "--crops=10"])


def test_classifier_api(run):
    workdir, root, model, variables = run
    clf = resnet_jax.Classifier.from_checkpoint(str(workdir), step="latest")
    files = sorted(str(p) for p in (root / "val").rglob("*.png"))[:3]
    probs = clf.predict(files)
    assert probs.shape == (3, 3) and np.allclose(probs.sum(1), 1, atol=1e-5)
    views = np.stack([data.eval_preprocess(Path(p).read_bytes(), "center", 64).numpy() for p in files])
    np.testing.assert_allclose(probs, direct_probs(model, variables, views), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(clf.predict(views), probs, rtol=1e-5, atol=1e-7)  # arrays at the model's size
    assert clf.predict(np.zeros((2, 90, 120, 3), np.uint8)).shape == (2, 3)  # other sizes are center-cropped
    names, scores = clf.top_k(files, k=2)
    assert len(names) == 3 and all(n in CLASSES for n in names[0]) and scores.shape == (3, 2)
    assert scores[0, 0] >= scores[0, 1]
    m, _, info = resnet_jax.load_checkpoint(str(workdir))
    assert info["step"] == 7 and info["class_names"] == CLASSES and m.num_classes == 3
    with pytest.raises(ValueError, match=r"shape \(N, H, W, 3\), got \(4, 4\)"):
        clf.predict(np.zeros((4, 4)))


def test_images_flag_prints_top5(run, capsys):
    workdir, root, _, _ = run
    files = sorted(str(p) for p in (root / "val").rglob("*.png"))[:2]
    evaluate.main([f"--workdir={workdir}", "--images", *files])
    out = capsys.readouterr().out
    assert files[0] in out and out.count("%") == 6  # 3 classes listed per file


def test_an_ensemble_averages_its_members_softmax_scores(run, tmp_path):
    """Sec. 4.1 / Table 5: networks of different depths, their softmax scores averaged, each member with its
    own normalisation, every 10-crop view scored by both."""
    _, root, _, _ = run
    first, other = tmp_path / "resnet18", tmp_path / "plain18"
    # random networks with large classifier weights, so that their scores differ by more than rounding
    model, variables = save_run(first, dataset=f"folder:{root}", fc_scale=300.0)
    mean2, std2 = (100.0, 100.0, 100.0), (50.0, 40.0, 30.0)
    model2, variables2 = save_run(other, name="plain18", dataset=f"folder:{root}", mean=mean2, std=std2, seed=1,
                                  step=5, fc_scale=300.0)
    out = tmp_path / "ensemble.json"
    assert evaluate.main([f"--workdir={first}", f"--workdir={other}", "--crops=10", "--batch_size=8",
                          f"--output={out}"]) == 0
    result = json.loads(out.read_text())
    src = data.get_source(f"folder:{root}", "val")
    views = np.stack([data.eval_preprocess(Path(p).read_bytes(), "10", 64).numpy() for p in src.paths])
    one = direct_probs(model, variables, views).reshape(13, 10, 3).mean(axis=1)
    two = direct_probs(model2, variables2, views, mean2, std2).reshape(13, 10, 3)
    averaged = (one + two.mean(axis=1)) / 2

    def nll(probs):  # the reported loss: the cross-entropy of the scores
        return np.mean(-np.log(probs[np.arange(13), src.labels]))

    assert result["num_examples"] == 13 and result["model"] == "resnet18+plain18" and result["step"] == "7+5"
    assert result["loss"] == pytest.approx(nll(averaged), rel=1e-4)
    assert min(abs(nll(one) - nll(averaged)), abs(nll(two.mean(axis=1)) - nll(averaged))) > 1e-3 * nll(averaged)
    assert [(m["model"], m["step"]) for m in result["members"]] == [("resnet18", 7), ("plain18", 5)]
    # the Python API: the same average for files, and top_k from it
    ensemble = resnet_jax.Ensemble.from_checkpoints([str(first), str(other)])
    files = list(src.paths[:4])
    members = [resnet_jax.Classifier.from_checkpoint(str(w)) for w in (first, other)]
    np.testing.assert_allclose(ensemble.predict(files), (members[0].predict(files) + members[1].predict(files)) / 2,
                               rtol=1e-5, atol=1e-7)
    names, scores = ensemble.top_k(files, k=1)
    assert names[0][0] in CLASSES and scores.shape == (4, 1)


def test_an_ensemble_refuses_members_that_cannot_be_averaged(run, tmp_path):
    workdir, root, _, _ = run
    two_classes, small = tmp_path / "two", tmp_path / "small"
    save_run(two_classes, dataset=f"folder:{root}", num_classes=2)
    save_run(small, dataset=f"folder:{root}", image_size=32)
    with pytest.raises(SystemExit, match=r"error: .*two cannot join an ensemble with .*: it has 2 classes, not 3$"):
        evaluate.main([f"--workdir={workdir}", f"--workdir={two_classes}"])
    with pytest.raises(SystemExit, match=r"small cannot join .*: its image_size is 32, not 64 \(the members score"):
        evaluate.main([f"--workdir={workdir}", f"--workdir={small}"])
    with pytest.raises(SystemExit, match="--features writes one network's embeddings"):
        evaluate.main([f"--workdir={workdir}", f"--workdir={workdir}", f"--features={tmp_path / 'f.npz'}"])


def test_failures_name_the_problem(run, tmp_path):
    workdir = run[0]
    with pytest.raises(SystemExit, match="no checkpoints in"):
        evaluate.main([f"--workdir={tmp_path / 'empty'}"])
    with pytest.raises(SystemExit, match=r"step 99 is not in .*saved steps: \[7\]"):
        evaluate.main([f"--workdir={workdir}", "--step=99"])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(SystemExit, match=r"cannot read image .*bad.png"):
        evaluate.main([f"--workdir={workdir}", "--images", str(bad)])
    # weights that do not fit the described model: name the step and the first mismatched parameter
    wrong = tmp_path / "wrong"
    save_run(wrong, name="cifar_resnet20", image_size=32, eval_preset="cifar", num_classes=3)
    meta_file = next((wrong / "checkpoints" / "7" / "meta").glob("*"))
    meta = json.loads(meta_file.read_text())
    meta["model_options"] = {"shortcut": "C"}  # projections the saved option-A weights do not have
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(SystemExit, match=r"step 7 does not fit.*parameter \['batch_stats'\]\['stage1'\]\['block0'\]"
                                         r"\['shortcut'\].* expected shape .*found absent"):
        evaluate.main([f"--workdir={wrong}"])
    # a corrupt step (its arrays deleted)
    corrupt = tmp_path / "corrupt"
    save_run(corrupt, name="cifar_resnet20", image_size=32, eval_preset="cifar")
    shutil.rmtree(corrupt / "checkpoints" / "7" / "variables")
    with pytest.raises(SystemExit, match="step 7"):
        evaluate.main([f"--workdir={corrupt}"])


@pytest.mark.slow
def test_evaluating_a_trained_checkpoint_reproduces_the_logged_accuracy(cifar10_root, tmp_path):
    workdir = tmp_path / "r20"
    subprocess.run([sys.executable, str(ROOT / "train.py"), f"--config={ROOT}/resnet_jax/configs/cifar10.py",
                    f"--workdir={workdir}", f"--config.dataset=folder:{cifar10_root}", "--config.train_split=train",
                    "--config.eval_split=test[:1000]", "--config.num_train_steps=20", "--config.batch_size=64",
                    "--config.eval_batch_size=200", "--config.normalization=mean_std",  # no pass over 45k images
                    "--config.mean=(125.3,123.0,113.9)", "--config.std=(63.0,62.1,66.7)"],
                   check=True, capture_output=True, timeout=600)
    logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    logged = [e for e in logged if "eval_top1_error" in e][-1]
    out = tmp_path / "eval.json"
    evaluate.main([f"--workdir={workdir}", "--batch_size=96", f"--output={out}"])  # another batch size
    result = json.loads(out.read_text())
    assert result["num_examples"] == 1000 and result["step"] == logged["step"] == 20
    assert result["top1_error"] == pytest.approx(logged["eval_top1_error"], abs=1e-6)
    assert result["top5_error"] == pytest.approx(logged["eval_top5_error"], abs=1e-6)
