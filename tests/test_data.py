"""Input pipelines on generated image folders, a tiny real TFDS dataset, and the real CIFAR-10 JPEGs."""

import logging

import numpy as np
import pytest
from PIL import Image

from resnet_jax import data, training

tf = pytest.importorskip("tensorflow")
tfds = pytest.importorskip("tensorflow_datasets")


def pattern(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_folder(root, split="train", classes=("cat", "dog", "eel"), per_class=3, size=(32, 32), fmt="png"):
    for c, name in enumerate(classes):
        folder = root / split / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(pattern(*size, seed=100 * c + i)).save(folder / f"{i}.{fmt}")
    return root


def encode_png(array):
    return tf.io.encode_png(array)


# ----------------------------------------------------------------------------------------------- sources


def test_training_batches_are_whole_batches_of_each_epochs_order():
    source = data.Source(name="toy", split="train", num_examples=10, class_names=["a"])
    epoch0, epoch1 = (np.random.default_rng([3, e]).permutation(10) for e in (0, 1))
    batches = [source.batch_indices(3, step, 4) for step in range(5)]  # 2 whole batches an epoch; 2 left out
    np.testing.assert_array_equal(np.concatenate(batches[:2]), epoch0[:8])
    np.testing.assert_array_equal(np.concatenate(batches[2:4]), epoch1[:8])
    assert not np.array_equal(epoch0, epoch1)
    # the kept epoch order follows the seed and epoch asked for, whatever was asked before
    np.testing.assert_array_equal(source.batch_indices(3, 1, 4), epoch0[4:8])
    np.testing.assert_array_equal(source.batch_indices(4, 1, 4), np.random.default_rng([4, 0]).permutation(10)[4:8])
    np.testing.assert_array_equal(source.order(3, 0, shuffle=False), np.arange(10))


def test_folder_source_orders_classes_and_converts_modes_to_rgb(tmp_path):
    write_folder(tmp_path, classes=("zebra", "ant"), per_class=1)
    odd = tmp_path / "train" / "ant"
    Image.fromarray(pattern(32, 32)[..., 0]).save(odd / "gray.png")                 # L
    Image.fromarray(pattern(32, 32)).convert("CMYK").save(odd / "cmyk.jpg")           # CMYK JPEG
    Image.fromarray(pattern(32, 32)).convert("P").save(odd / "palette.png")           # palette
    Image.fromarray(np.dstack([pattern(32, 32), np.full((32, 32), 9, np.uint8)])).save(odd / "rgba.png")
    src = data.get_source(f"folder:{tmp_path}", "train")
    assert src.class_names == ["ant", "zebra"]
    assert src.num_examples == 6
    assert list(src.labels) == [0] * 5 + [1]
    images = {p.split("/")[-1]: b["image"] for p, b in zip(src.paths, data.eval_batches(
        src, 1, "cifar", 32, process_index=0, process_count=1))}
    for name, image in images.items():
        assert image.shape == (1, 32, 32, 3) and image.dtype == np.uint8, name
    gray = images["gray.png"][0]
    np.testing.assert_array_equal(gray[..., 0], pattern(32, 32)[..., 0])
    np.testing.assert_array_equal(gray[..., 0], gray[..., 2])
    cmyk_pil = np.asarray(Image.open(odd / "cmyk.jpg").convert("RGB")).astype(int)
    assert np.abs(images["cmyk.jpg"][0].astype(int) - cmyk_pil).max() <= 2
    np.testing.assert_array_equal(images["rgba.png"][0], pattern(32, 32))


def test_non_image_files_are_skipped_with_a_warning_or_raise(tmp_path, caplog):
    write_folder(tmp_path)
    (tmp_path / "train" / "dog" / "notes.txt").write_text("not an image")
    (tmp_path / "train" / "dog" / "fake.jpg").write_bytes(b"GIF? no, garbage")
    with caplog.at_level(logging.WARNING):
        src = data.get_source(f"folder:{tmp_path}", "train")
    assert src.num_examples == 9
    assert "fake.jpg" in caplog.text and "notes.txt" in caplog.text and "skipped 2 unreadable" in caplog.text
    with pytest.raises(data.DataError, match=r"2 file.*not readable images"):
        data.get_source(f"folder:{tmp_path}", "train", on_bad_file="raise")
    # a truncated JPEG has a valid header: only full verification finds it
    good = tmp_path / "train" / "cat" / "0.png"
    Image.open(good).save(tmp_path / "train" / "cat" / "whole.jpg")
    data_bytes = (tmp_path / "train" / "cat" / "whole.jpg").read_bytes()
    (tmp_path / "train" / "cat" / "truncated.jpg").write_bytes(data_bytes[: len(data_bytes) // 2])
    assert data.get_source(f"folder:{tmp_path}", "train").num_examples == 11
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert data.get_source(f"folder:{tmp_path}", "train", verify=True).num_examples == 10
    assert "truncated.jpg: truncated" in caplog.text and "skipped 3 unreadable" in caplog.text


def test_folder_errors_name_the_problem(tmp_path):
    write_folder(tmp_path)
    with pytest.raises(data.DataError, match=r"no split 'val'.*splits found: \['train'\]"):
        data.get_source(f"folder:{tmp_path}", "val")
    (tmp_path / "train" / "empty").mkdir()
    with pytest.raises(data.DataError, match="empty holds no images"):
        data.get_source(f"folder:{tmp_path}", "train")


def test_unprepared_tfds_dataset_says_what_to_do(tmp_path, monkeypatch):
    from resnet_jax import prepare

    monkeypatch.setattr(prepare, "unreachable", lambda name: "www.cs.toronto.edu is unreachable: offline")
    with pytest.raises(data.DataError, match=r"not prepared.*cannot be downloaded here \(www.cs.toronto.edu is "
                                             r"unreachable.*python -m resnet_jax.prepare cifar10 --data_dir="):
        data.get_source("cifar10", "train", data_dir=str(tmp_path))
    # where the host answers, cifar10 is prepared on first use (here the download itself fails, in one line)
    calls = []

    def fake_prepare(name, data_dir=None, manual_dir=None):
        calls.append((name, data_dir))
        raise prepare.PrepareError(f"downloading {name} failed (ConnectionError: reset)")

    monkeypatch.setattr(prepare, "unreachable", lambda name: None)
    monkeypatch.setattr(prepare, "prepare", fake_prepare)
    with pytest.raises(data.DataError, match=r"^downloading cifar10 failed"):
        data.get_source("cifar10", "train", data_dir=str(tmp_path))
    assert calls == [("cifar10", str(tmp_path))]
    with pytest.raises(data.DataError, match="manual"):
        data.get_source("imagenet2012", "train", data_dir=str(tmp_path))


class TinyImages(tfds.core.GeneratorBasedBuilder):
    """A real (tiny) TFDS dataset, prepared locally by the test."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(32, 32, 3)),
            "label": tfds.features.ClassLabel(names=["a", "b", "c"])}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(20), "test": self._generate_examples(7)}

    def _generate_examples(self, n):
        for i in range(n):
            yield i, {"image": pattern(32, 32, seed=i), "label": i % 3}


@pytest.fixture(scope="module")
def tiny_tfds(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    TinyImages(data_dir=data_dir).download_and_prepare()
    return data_dir


def test_tfds_source_with_split_syntax(tiny_tfds):
    src = data.get_source("tiny_images", "train[:15]", data_dir=tiny_tfds)
    assert (src.num_examples, src.class_names) == (15, ["a", "b", "c"])
    batches = list(data.eval_batches(data.get_source("tiny_images", "test", data_dir=tiny_tfds), 4, "cifar", 32,
                                     process_index=0, process_count=1))
    images = np.concatenate([b["image"] for b in batches])
    masks = np.concatenate([b["mask"] for b in batches])
    assert images.shape == (8, 32, 32, 3) and masks.sum() == 7 and not masks[-1]
    np.testing.assert_array_equal(np.sort(images[:7].reshape(7, -1).sum(1)),
                                  np.sort([pattern(32, 32, seed=i).sum() for i in range(7)]))
    with pytest.raises(data.DataError, match="no split 'validation'"):
        data.get_source("tiny_images", "validation", data_dir=tiny_tfds)
    # training: deterministic and resumable on TFDS too
    train = data.get_source("tiny_images", "train", data_dir=tiny_tfds)
    a = data.train_batches(train, 4, "cifar", 32, seed=3, process_index=0, process_count=1)
    first = [next(a)["label"] for _ in range(8)]
    resumed = data.train_batches(train, 4, "cifar", 32, seed=3, start_step=6, process_index=0, process_count=1)
    np.testing.assert_array_equal(next(resumed)["label"], first[6])


# ------------------------------------------------------------------------------------------- geometry


def padded_crops(image) -> dict:
    """Every crop the cifar preset can take of a 32x32 image: {(row, column, flipped): pixels} of the image
    padded with 4 zero pixels on each side."""
    padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
    crops = {(y, x, 0): padded[y:y + 32, x:x + 32] for y in range(9) for x in range(9)}
    return crops | {(y, x, 1): crop[:, ::-1] for (y, x, _), crop in crops.items()}


def test_cifar_augmentation_is_a_padded_crop_maybe_flipped():
    image = pattern(32, 32)
    windows = padded_crops(image)
    seen = set()
    for i in range(40):
        out = data.train_preprocess(encode_png(image), tf.constant([0, i], tf.int64), "cifar", 32).numpy()
        match = [window for window, crop in windows.items() if np.array_equal(out, crop)]
        assert match, f"example {i} is not a flipped/unflipped crop of the padded image"
        seen.update(match)
    assert len({m[2] for m in seen}) == 2 and len({m[:2] for m in seen}) > 10


def test_cifar_batches_of_an_image_folder_are_padded_crops_maybe_flipped(tmp_path):
    """The cifar preset on an image folder (PIL and numpy, no TensorFlow): every training image is a crop of a
    file of its class padded with 4 zero pixels, flipped or not; over 10 epochs the offsets spread and both flips
    occur."""
    source = data.get_source(f"folder:{write_folder(tmp_path, per_class=4)}", "train")  # 12 PNGs, 32x32
    files = [(padded_crops(np.asarray(Image.open(p))), label) for p, label in zip(source.paths, source.labels)]
    batches = data.train_batches(source, 4, "cifar", 32, seed=5, process_index=0, process_count=1)
    seen = set()
    for _ in range(30):
        batch = next(batches)
        assert batch["image"].dtype == np.uint8 and batch["image"].shape == (4, 32, 32, 3)
        for image, label in zip(batch["image"], batch["label"]):
            match = [(k, *window) for k, (crops, of) in enumerate(files) if of == label
                     for window, crop in crops.items() if np.array_equal(image, crop)]
            assert len(match) == 1, "not one padded crop (flipped or not) of one file of its class"
            seen.add(match[0][1:])
    assert {f for _, _, f in seen} == {0, 1} and len({(y, x) for y, x, _ in seen}) > 30


def test_ten_crop_views_of_a_known_image():
    image = pattern(256, 320)
    views = data.eval_preprocess(encode_png(image), "10", 224).numpy()
    assert views.shape == (10, 224, 224, 3)
    corners = [(0, 0), (0, 96), (32, 0), (32, 96), (16, 48)]  # by hand: 256-224=32, 320-224=96
    assert data.ten_crop_boxes(256, 320, 224) == corners
    for k, (y, x) in enumerate(corners):
        np.testing.assert_array_equal(views[k], image[y:y + 224, x:x + 224])
        np.testing.assert_array_equal(views[k + 5], image[y:y + 224, x:x + 224][:, ::-1])


def test_center_view_is_the_central_crop_after_resizing_the_shorter_side():
    image = pattern(256, 320)
    view = data.eval_preprocess(encode_png(image), "center", 224).numpy()
    np.testing.assert_array_equal(view, image[16:240, 48:272])
    small = data.eval_preprocess(encode_png(pattern(128, 160)), "center", 112).numpy()
    assert small.shape == (112, 112, 3)


@pytest.mark.parametrize("preset", ["imagenet", "inception"])
def test_imagenet_train_presets_shape_and_determinism(preset):
    raw = encode_png(pattern(300, 400))
    a = data.train_preprocess(raw, tf.constant([1, 5], tf.int64), preset, 224).numpy()
    b = data.train_preprocess(raw, tf.constant([1, 5], tf.int64), preset, 224).numpy()
    c = data.train_preprocess(raw, tf.constant([1, 6], tf.int64), preset, 224).numpy()
    assert a.shape == (224, 224, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


# ---------------------------------------------------------------------------- order, resume, shards, padding


@pytest.fixture()
def folder(tmp_path):
    write_folder(tmp_path, per_class=7, size=(36, 36))
    return data.get_source(f"folder:{tmp_path}", "train")


def collect(it, n):
    return [next(it) for _ in range(n)]


def test_training_batches_are_deterministic_and_resume_exactly(folder):
    kw = dict(batch_size=4, preset="cifar", image_size=32, process_index=0, process_count=1)
    run = collect(data.train_batches(folder, seed=1, **kw), 12)  # 21 examples: 5 steps/epoch, > 2 epochs
    again = collect(data.train_batches(folder, seed=1, **kw), 12)
    for x, y in zip(run, again):
        np.testing.assert_array_equal(x["image"], y["image"])
    other = collect(data.train_batches(folder, seed=2, **kw), 1)
    assert not np.array_equal(other[0]["image"], run[0]["image"])
    for start in (3, 5, 7):  # mid-epoch, epoch boundary, next epoch
        resumed = collect(data.train_batches(folder, seed=1, start_step=start, **kw), 12 - start)
        for x, y in zip(resumed, run[start:]):
            np.testing.assert_array_equal(x["image"], y["image"])
            np.testing.assert_array_equal(x["label"], y["label"])
    # every epoch visits distinct examples, in a new order
    epoch0 = np.concatenate([b["label"] for b in run[:5]])
    epoch1 = np.concatenate([b["label"] for b in run[5:10]])
    assert sorted(np.bincount(epoch0)) == sorted(np.bincount(epoch1)) or not np.array_equal(epoch0, epoch1)


def test_process_shards_are_disjoint_and_make_the_same_global_batch(folder):
    kw = dict(batch_size=4, preset="cifar", image_size=32, seed=0)
    single = collect(data.train_batches(folder, process_index=0, process_count=1, **kw), 6)
    parts = [collect(data.train_batches(folder, process_index=p, process_count=2, **kw), 6) for p in (0, 1)]
    for step in range(6):
        assert parts[0][step]["image"].shape[0] == 2
        joined = np.concatenate([parts[0][step]["image"], parts[1][step]["image"]])
        np.testing.assert_array_equal(joined, single[step]["image"])
    with pytest.raises(ValueError, match="not divisible by 3 processes"):
        next(data.train_batches(folder, process_index=0, process_count=3, **kw))


@pytest.mark.parametrize("processes", [1, 2])
def test_eval_scores_every_example_exactly_once(folder, processes):
    # 21 examples (a multiple of a prime), batch 4 -> 6 batches, 3 padded slots
    seen = []
    for p in range(processes):
        for b in data.eval_batches(folder, 4, "cifar", 32, process_index=p, process_count=processes):
            assert len(b["mask"]) == 4 // processes
            seen += [img.tobytes() for img, m in zip(b["image"], b["mask"]) if m]
            assert (b["label"][~b["mask"]] == -1).all()
    assert len(seen) == 21 and len(set(seen)) == 21
    images, labels = data.load_arrays(folder)  # the same batches from a split held in memory (36x36 images)
    for p in range(processes):
        pairs = zip(data.array_batches(images, labels, 4, process_index=p, process_count=processes),
                    data.eval_batches(folder, 4, "cifar", 36, process_index=p, process_count=processes), strict=True)
        for from_memory, from_files in pairs:
            for key in ("image", "label", "mask"):
                np.testing.assert_array_equal(from_memory[key], from_files[key])


def test_folder_cifar_views_are_tensorflows_crop_or_pad(tmp_path):
    # the PIL path for image folders must give TensorFlow's pixels: central crop / zero padding, odd sizes too
    for i, (h, w) in enumerate([(40, 36), (20, 27), (32, 32), (33, 50)]):
        write_folder(tmp_path, classes=(f"c{i}",), per_class=1, size=(h, w), fmt="jpg")
    src = data.get_source(f"folder:{tmp_path}", "train")
    batch = next(data.eval_batches(src, 4, "cifar", 32, process_index=0, process_count=1))
    want = np.stack([data.eval_preprocess(tf.io.read_file(p), "cifar", 32).numpy() for p in src.paths])
    np.testing.assert_array_equal(batch["image"], want)
    with pytest.raises(data.DataError, match=r"c1/0.jpg is 27x20 but .*c0/0.jpg is 36x40"):
        data.load_arrays(src)
    (tmp_path / "train" / "c0" / "0.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(data.DataError, match=r"cannot read image .*c0/0.jpg"):
        next(data.eval_batches(src, 4, "cifar", 32, process_index=0, process_count=1))


def test_center_and_ten_crop_views_without_tensorflow_are_tensorflows(tmp_path, monkeypatch):
    """Where TensorFlow is not installed (the GPU machines), ImageNet-style folders are evaluated with PIL and
    numpy: the same views as TensorFlow's, odd sizes, both orientations and a resize before the crop included."""
    for i, (h, w) in enumerate([(90, 70), (61, 100), (80, 80), (73, 120)]):
        write_folder(tmp_path, classes=(f"c{i}",), per_class=2, size=(h, w))
    src = data.get_source(f"folder:{tmp_path}", "train")
    for preset, size, resize in (("center", 64, 73), ("10", 64, 73), ("center", 56, None), ("10", 32, 40)):
        with_tf = list(data.eval_batches(src, 3, preset, size, resize, process_index=0, process_count=1))
        monkeypatch.setattr(data.pipelines, "has_tensorflow", lambda: False)
        without = list(data.eval_batches(src, 3, preset, size, resize, process_index=0, process_count=1))
        monkeypatch.undo()
        assert len(with_tf) == len(without) == 3  # 8 examples: the last batch padded
        for a, b in zip(with_tf, without, strict=True):
            for key in ("image", "label", "mask"):
                np.testing.assert_array_equal(a[key], b[key], err_msg=f"{preset} {size} {key}")


def test_center_and_ten_crop_views_of_real_photographs_match_tensorflow(tmp_path):
    """On real JPEGs the 10-crop views are TensorFlow's bit for bit; the center view differs in a few pixels
    (TensorFlow decodes the crop window fused with the JPEG, whose chroma upsampling at the window's edge differs
    from decoding the whole image)."""
    import tarfile

    from tests.conftest import shared_file

    with tarfile.open(shared_file("data/imagenet-samples.tar")) as tar:
        members = [m for m in tar.getmembers() if m.isfile()][:6]
        tar.extractall(tmp_path, members=members, filter="data")
    paths = sorted(str(p) for p in tmp_path.rglob("*.JPEG"))
    for preset in ("center", "10"):
        want = np.stack([data.eval_preprocess(tf.io.read_file(p), preset, 224).numpy() for p in paths])
        got = data.eval_views(paths, preset, 224)
        differ = np.abs(got.astype(int) - want.astype(int))
        if preset == "10":
            np.testing.assert_array_equal(got, want)
        else:
            assert (differ == 0).mean() > 0.999 and differ.max() <= 16, (differ.max(), (differ == 0).mean())


def test_to_global_shards_the_batch_over_devices():
    import jax

    mesh = training.make_mesh()
    batch = {"image": np.zeros((8, 4, 4, 3), np.uint8), "label": np.arange(8, dtype=np.int32)}
    out = data.to_global(batch, mesh)
    assert out["label"].shape == (8,) and len(out["label"].sharding.device_set) == jax.device_count()
    np.testing.assert_array_equal(np.asarray(out["label"]), np.arange(8))
    np.testing.assert_allclose(data.normalize(np.full((1, 1, 1, 3), 255, np.uint8), (255, 0, 0), (1, 255, 1)),
                               [[[[0, 1, 255]]]])


# ---------------------------------------------------------------------------------------------- real data


def test_real_cifar10_jpegs(cifar10_root):
    train = data.get_source(f"folder:{cifar10_root}", "train")
    test = data.get_source(f"folder:{cifar10_root}", "test")
    assert (train.num_examples, test.num_examples) == (50_000, 10_000)
    assert test.class_names == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                                "truck"]
    batch = next(data.train_batches(train, 256, "cifar", 32, process_index=0, process_count=1))
    assert batch["image"].shape == (256, 32, 32, 3) and len(set(batch["label"])) == 10
    # folders are evaluated through PIL; TensorFlow's accurate IDCT (TFDS datasets) gives the same pixels
    first = next(data.eval_batches(test, 64, "cifar", 32, process_index=0, process_count=1))
    pil = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in test.paths[:64]])
    np.testing.assert_array_equal(first["image"], pil)
    tf = data.backend.tensorflow()
    via_tf = np.stack([data.eval_preprocess(tf.io.read_file(p), "cifar", 32).numpy() for p in test.paths[:64]])
    np.testing.assert_array_equal(via_tf, pil)
    mean = data.pixel_mean(test)  # CIFAR-10's well-known channel means: 125.3, 123.0, 113.9
    assert mean.shape == (32, 32, 3)
    np.testing.assert_allclose(mean.mean(axis=(0, 1)), [125.3, 123.0, 113.9], atol=3)


def test_folder_split_slices_are_balanced_and_complementary(tmp_path):
    write_folder(tmp_path, per_class=10, size=(8, 8))
    whole = data.get_source(f"folder:{tmp_path}", "train")
    head = data.get_source(f"folder:{tmp_path}", "train[:21]")
    tail = data.get_source(f"folder:{tmp_path}", "train[21:]")
    assert (head.num_examples, tail.num_examples) == (21, 9)
    assert sorted(set(head.paths) | set(tail.paths)) == sorted(whole.paths)
    assert not set(head.paths) & set(tail.paths)
    assert len(set(head.labels)) == 3
    with pytest.raises(data.DataError, match="empty"):
        data.get_source(f"folder:{tmp_path}", "train[40:]")
