"""The ImageNet half: Tiny ImageNet's real photographs through train.py and evaluate.py, readable class names,
and a failed start that writes nothing."""

import json
import os

import numpy as np
import pytest

import evaluate
from resnet_jax import checkpoint, class_names, data, plot, training
from resnet_jax.configs import tiny_imagenet


def test_ilsvrc_names_ship_with_the_package():
    names = class_names.imagenet_class_names()
    assert len(names) == 1000 and names[:2] == ["tench", "goldfish"]
    assert class_names.readable(["n01443537", "cat", "n99999999"]) == ["goldfish", "cat", "n99999999"]


def test_folder_classes_tsv_overrides_the_ilsvrc_table(tmp_path):
    (tmp_path / "classes.tsv").write_text("n01443537\tmy goldfish, Carassius auratus\n")
    assert class_names.readable(["n01443537", "n01440764"], str(tmp_path)) == ["my goldfish", "tench"]


def test_tiny_imagenet_config_scales_the_paper_recipe():
    c = tiny_imagenet.get_config("resnet50")
    assert (c.model, c.image_size, c.train_preset, c.eval_preset) == ("resnet50", 64, "imagenet", "center")
    assert (c.batch_size, c.learning_rate, c.momentum, c.weight_decay) == (256, 0.1, 0.9, 1e-4)
    assert tuple(c.lr_boundaries_epochs) == (20, 30) and c.num_train_steps == 40 * 40_000 // 256


def test_scale_augmentation_scales_with_the_crop(tmp_path):
    """The imagenet preset at 64 px crops windows of 64 / U[73, 137] of the shorter side, not 224-px ones."""
    from PIL import Image

    ys, xs = np.mgrid[0:128, 0:128]
    Image.fromarray(np.stack([ys * 2, xs * 2, np.zeros_like(ys)], -1).astype(np.uint8)).save(tmp_path / "a.png")
    tf = data.backend.tensorflow()
    raw = tf.io.read_file(str(tmp_path / "a.png"))
    spans = []
    for i in range(20):
        image = data.train_preprocess(raw, tf.constant([i, 1], tf.int64), "imagenet", 64).numpy().astype(float)
        spans.append(image[:, :, 0].max() - image[:, :, 0].min())  # rows covered, times 2
    spans = np.array(spans) / 2
    # window side = 128 * 64 / s, s ~ U[73, 137]: 60-112 source rows (the 224-px range would give 17-32)
    assert spans.min() > 50 and spans.max() < 115, spans


def test_failed_start_writes_nothing(tmp_path):
    workdir = tmp_path / "run"
    c = tiny_imagenet.get_config("resnet18")
    c.dataset = f"folder:{tmp_path / 'absent'}"
    with pytest.raises(data.DataError, match="has no split 'train'"):
        training.train_and_evaluate(c, str(workdir))
    assert not workdir.exists()


@pytest.mark.slow
def test_tiny_imagenet_trains_and_predicts_in_class_names(tiny_imagenet_root, tmp_path, capsys):
    workdir = tmp_path / "tin"
    c = tiny_imagenet.get_config("resnet18")
    c.update(dict(dataset=f"folder:{tiny_imagenet_root}", train_split="train[:64]", eval_split="val[:40]",
                  batch_size=8, eval_batch_size=20, num_train_steps=2, log_every_steps=1, eval_every_steps=2,
                  checkpoint_every_steps=2))
    result = training.train_and_evaluate(c, str(workdir))
    assert result["step"] == 2 and np.isfinite(result["eval_top1_error"])
    _, _, info = checkpoint.load_checkpoint(str(workdir))
    assert info["num_classes"] == 200
    assert info["class_ids"][0] == "n01443537" and info["class_names"][0] == "goldfish"
    photo = sorted((tiny_imagenet_root / "val" / "n01443537").iterdir())[0]
    assert evaluate.main([f"--workdir={workdir}", "--images", str(photo)]) == 0
    out = capsys.readouterr().out
    assert str(photo) in out and "(n0" in out  # names, with the wnid beside them
    assert len([line for line in out.splitlines() if "%" in line]) == 5
    assert os.path.isdir(checkpoint.checkpoint_dir(str(workdir)))


@pytest.mark.slow
def test_imagenet_and_shortcuts_studies_train_evaluate_and_write_their_tables(tiny_imagenet_root, tmp_path):
    """``reproduce imagenet`` on 2 real classes for 10 steps of 8 images, with the two 18-layer networks (the
    34-layer ones run the same code at twice the compile time; the study's run in docs/imagenet.md trained all
    four): plain-18
    and ResNet-18 (option A) train through the normal code, are evaluated center and 10-crop, and the figure and
    table are written; a rerun skips the trained models and their evaluation. Then ``reproduce shortcuts`` on the
    same data and budget reuses those two as plain-18 and option A, trains options B and C, and writes Table 3
    with its claims and figure; a rerun skips everything. The claims, which need the 34-layer nets, have their own
    tests below."""
    from resnet_jax import reproduce

    models = ["plain18", "resnet18"]
    common = [f"--dataset=folder:{tiny_imagenet_root}", "--classes=2", "--steps=10", "--batch_size=8"]
    studies = tmp_path / "imagenet"
    args = ["imagenet", *common, f"--models={','.join(models)}", f"--workdir={studies}"]
    reproduce.main(args)
    table = (studies / "imagenet.md").read_text()
    for name in ("plain-18", "ResNet-18"):
        assert f"| {name} |" in table, table
    assert "top-1 center" in table and "top-1 10-crop" in table and "| 27.94 % |" in table
    assert "2 classes, 400 training and 100 validation images" in table
    assert (studies / "imagenet.png").stat().st_size > 5000
    for model in models:
        evaluation = json.loads((studies / model / "evaluation.json").read_text())
        assert evaluation["step"] == 10 and evaluation["10"]["num_examples"] == 100
        assert evaluation["center"]["view"] == "center crop" and evaluation["10"]["view"] == "10-crop"
        _, _, info = checkpoint.load_checkpoint(str(studies / model))
        assert info["num_classes"] == 2 and info["class_names"][0] == "goldfish"
        assert info["model_options"].get("shortcut") == ("A" if model == "resnet18" else None)  # plain: none
        rows = [json.loads(line) for line in (studies / model / "metrics.jsonl").read_text().splitlines()]
        losses = [r["train_loss"] for r in rows if "train_loss" in r]
        assert len(losses) >= 4 and all(np.isfinite(losses))
    mtimes = {m: (studies / m / "evaluation.json").stat().st_mtime for m in models}
    reproduce.main(args)  # finished models and their evaluations are skipped
    assert mtimes == {m: (studies / m / "evaluation.json").stat().st_mtime for m in models}
    # A second seed of one model, added later: seed 0 is kept, seed 1 trains from its own initial weights.
    reproduce.main([a for a in args if not a.startswith("--models")] + ["--models=resnet18", "--seeds=2"])
    assert mtimes["resnet18"] == (studies / "resnet18" / "evaluation.json").stat().st_mtime
    table = (studies / "imagenet.md").read_text()
    assert "2 seeds (0-1)" in table and "| ResNet-18 | 18 | " in table and " ± " in table, table
    _, _, info = checkpoint.load_checkpoint(str(studies / "resnet18-seed1"))
    assert info["config"]["seed"] == 1
    first, second = ([e["train_loss"] for e in plot.read_metrics(str(studies / run)) if "train_loss" in e]
                     for run in ("resnet18", "resnet18-seed1"))
    assert len(first) == len(second) >= 4 and first != second

    shortcuts = tmp_path / "shortcuts"
    args = ["shortcuts", *common, "--models=plain18,resnet18_A,resnet18_B,resnet18_C", f"--workdir={shortcuts}",
            f"--imagenet_workdir={studies}"]
    reproduce.main(args)
    assert not (shortcuts / "plain18").exists() and not (shortcuts / "resnet18_A").exists()  # reused
    table = (shortcuts / "shortcuts.md").read_text()
    for row in ("| plain-18 | 18 |", "| ResNet-18 A | 18 |", "| ResNet-18 B | 18 |", "| ResNet-18 C | 18 |"):
        assert row in table, table
    assert f"Reused from the ImageNet study: `{studies / 'plain18'}`, `{studies / 'resnet18'}`" in table, table
    for claim in ("ResNet-18 A vs plain-18", "ResNet-18 B vs ResNet-18 A", "ResNet-18 C vs ResNet-18 B"):
        assert claim in table, table
    assert (shortcuts / "shortcuts.png").stat().st_size > 5000
    for option in "BC":
        _, _, info = checkpoint.load_checkpoint(str(shortcuts / f"resnet18_{option}"))
        assert info["model_options"]["shortcut"] == option and info["config"]["num_train_steps"] == 10
    mtimes = {p: p.stat().st_mtime for p in tmp_path.rglob("evaluation.json")}
    assert len(mtimes) == 5  # plain18, resnet18, resnet18-seed1 of the ImageNet study; B and C
    reproduce.main(args)
    assert mtimes == {p: p.stat().st_mtime for p in tmp_path.rglob("evaluation.json")}


def test_the_imagenet_study_subset_keeps_the_first_classes_and_their_labels(tmp_path):
    from resnet_jax import reproduce

    for split in ("train", "val"):
        for name in ("n03", "n01", "n02"):
            (tmp_path / "root" / split / name).mkdir(parents=True)
            (tmp_path / "root" / split / name / "a.JPEG").write_bytes(b"\xff\xd8\xff")
    subset = reproduce.class_subset(str(tmp_path / "root"), 2, str(tmp_path / "subset"))
    for split in ("train", "val"):
        assert sorted(os.listdir(os.path.join(subset, split))) == ["n01", "n02"]  # labels 0 and 1, as in the root
    assert reproduce.class_subset(str(tmp_path / "root"), 3, str(tmp_path / "all")) == str(tmp_path / "root")
    c = reproduce.imagenet_config("resnet34", "folder:x", steps=1000, batch_size=64, on_device=False)
    assert (c.shortcut, c.learning_rate * 64 / 256, c.warmup_lr) == ("A", 0.025, 0.01 * 64 / 256)
    assert tuple(c.lr_boundaries) == (500, 750) and c.warmup_steps == 25 and c.lr_scaling == "linear"
    assert reproduce.imagenet_config("plain18", "folder:x", 1000, 256, False).shortcut == ""
    c = reproduce.imagenet_config("plain18", "folder:x", 1000, 64, True, seed=3, steps_per_loop=50)
    assert (c.seed, c.steps_per_loop, c.on_device_data, c.train_preset) == (3, 50, True, "imagenet")


def test_the_imagenet_study_states_each_claim_from_its_numbers():
    from resnet_jax import reproduce

    def row(train, val):
        return {"train_error": train, "10": {"top1_error": val}}

    lines = reproduce.claims_text({"plain18": [row(80, 85)], "plain34": [row(90, 95)], "resnet18": [row(78, 84)],
                                   "resnet34": [row(79, 86)]})
    assert len(lines) == 3
    assert "plain-34 vs plain-18" in lines[0] and "+10.00 points validation" in lines[0] and "holds" in lines[0]
    assert "ResNet-34 vs ResNet-18" in lines[1] and "+2.00 points" in lines[1] and "does not show" in lines[1]
    assert "ResNet-34 vs plain-34" in lines[2] and "-9.00 points" in lines[2] and "holds" in lines[2]
    assert reproduce.claims_text({"plain18": [row(80, 85)]}) == []
    # Several seeds: differences paired by seed, their mean ± standard deviation, and the seeds that agree.
    lines = reproduce.claims_text({"plain18": [row(80, 85), row(80, 86)], "plain34": [row(90, 95), row(90, 85)],
                                   "resnet18": [row(78, 84), row(78, 84)], "resnet34": [row(76, 82), row(76, 81)]})
    assert "+4.50 points validation top-1 (10-crop) (± 7.78 over 2 seeds)" in lines[0], lines[0]
    assert "is mixed (the paper's sign in 1 of 2 seeds)" in lines[0]
    assert "-2.50 points" in lines[1] and "holds (the paper's sign in 2 of 2 seeds)" in lines[1]
    assert "-8.50 points" in lines[2] and "holds (the paper's sign in 2 of 2 seeds)" in lines[2]
    [line] = reproduce.claims_text({"resnet18": [row(78, 84), row(78, 84)], "resnet34": [row(79, 86), row(79, 85)]})
    assert "+1.50 points" in line and "does not show (the paper's sign in 0 of 2 seeds)" in line
    assert reproduce.percent([27.0]) == "27.00 %" and reproduce.percent([27.0, 28.0]) == "27.50 ± 0.71 %"


def test_loss_curves_show_chance(tmp_path):
    """The curve that documents a network leaving chance (docs/imagenet.md): loss against iterations, ln(classes)
    dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from resnet_jax import plot

    events = [{"step": 10, "train_loss": 5.7}, {"step": 20, "train_loss": 5.1},
              {"step": 20, "eval_loss": 4.9, "eval_top1_error": 97.0}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(e) for e in events))
    fig, ax = plt.subplots()
    plot.plot_runs([str(tmp_path)], "unused.png", ax=ax, metric="loss", classes=200)
    lines = {line.get_label(): list(line.get_ydata()) for line in ax.get_lines()}
    assert lines["chance: ln 200"] == [np.log(200)] * 2
    assert [5.7, 5.1] in lines.values() and lines[tmp_path.name] == [4.9]
    plt.close(fig)
    output = tmp_path / "loss.png"
    plot.main([str(tmp_path), "--metric=loss", "--classes=200", f"--output={output}"])
    assert output.stat().st_size > 0


def test_the_shortcuts_study_judges_table_3s_readings_at_every_depth(tmp_path):
    from resnet_jax.reproduce import shortcuts

    def row(val):
        return {"train_error": 50.0, "10": {"top1_error": val}}

    lines = shortcuts.claims_text({"plain34": [row(90)], "resnet34_A": [row(80)], "resnet34_B": [row(81)],
                                   "resnet34_C": [row(79)]})
    assert "ResNet-34 A vs plain-34" in lines[0] and "(paper: -3.51 points" in lines[0] and ": holds" in lines[0]
    assert "ResNet-34 B vs ResNet-34 A" in lines[1] and "(paper: -0.51" in lines[1] and "does not show" in lines[1]
    assert "ResNet-34 C vs ResNet-34 B" in lines[2] and "(paper: -0.33" in lines[2] and ": holds" in lines[2]
    assert len(shortcuts.claims_text({"resnet18_B": [row(80)], "resnet18_C": [row(81)]})) == 1
    assert shortcuts.network("resnet34_C") == ("resnet34", "C") and shortcuts.network("plain34") == ("plain34", "A")
    with pytest.raises(SystemExit, match="resnet34_D"):
        shortcuts.run(shortcuts_args(tmp_path, models="resnet34_D"))


def shortcuts_args(tmp_path, **flags):
    import argparse

    from resnet_jax.reproduce import shortcuts

    p = argparse.ArgumentParser()
    shortcuts.add_arguments(p)
    return p.parse_args([f"--dataset=folder:{tmp_path}", f"--workdir={tmp_path}"] +
                        [f"--{k}={v}" for k, v in flags.items()])


def test_a_study_on_a_missing_folder_says_so_in_one_line(tmp_path):
    from resnet_jax import reproduce

    with pytest.raises(SystemExit, match=r"error: image folder .* has no split 'train'"):
        reproduce.main(["degradation", f"--dataset=folder:{tmp_path / 'none'}", "--steps=2",
                        f"--workdir={tmp_path / 'w'}", "--models=cifar_resnet20"])
