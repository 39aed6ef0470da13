"""The networks against the paper: parameter counts, multiply-adds (Table 1), shortcut options, BN state."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import resnet_jax
from resnet_jax.models import ResNet, abstract_variables, convert_layout, create_model, list_models, multiply_adds
from resnet_jax.models import count_params as num_params


def image_size(name):
    return 32 if name.startswith("cifar") else 224


PARAMS = {
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032, "resnet101": 44_549_160,
    "resnet152": 60_192_808, "cifar_resnet20": 269_722, "cifar_resnet32": 464_154, "cifar_resnet44": 658_586,
    "cifar_resnet56": 853_018, "cifar_resnet110": 1_727_962, "cifar_resnet1202": 19_421_274,
}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "cifar_resnet1202" else n
                                  for n in sorted(PARAMS)])
def test_parameter_counts(name):
    variables = abstract_variables(create_model(name), image_size(name))
    assert num_params(variables["params"]) == PARAMS[name]


@pytest.mark.parametrize("name", ["cifar_plain20", "cifar_plain56", "plain18", "plain34"])
def test_plain_nets_have_residual_twins_parameters_minus_projections(name):
    twin = name.replace("plain", "resnet")
    plain = num_params(abstract_variables(create_model(name), image_size(name))["params"])
    residual = num_params(abstract_variables(create_model(twin), image_size(name))["params"])
    if name.startswith("cifar"):
        assert plain == residual  # option A shortcuts have no parameters
    else:
        assert 0 < residual - plain < 0.02 * residual  # option B projections only


# Paper Table 1, multiply-adds (the paper's "FLOPs") per 224x224 image, x10^9.
TABLE1_MACS = {"resnet18": 1.8, "resnet34": 3.6, "resnet50": 3.8, "resnet101": 7.6, "resnet152": 11.3}


@pytest.mark.parametrize("name", sorted(TABLE1_MACS))
def test_multiply_adds_match_table1(name):
    macs = multiply_adds(create_model(name)) / 1e9
    assert macs == pytest.approx(TABLE1_MACS[name], rel=0.02)  # Table 1 gives 0.1 G (3.66 -> 3.6, 7.57 -> 7.6)


def test_multiply_adds_by_hand_and_under_scan():
    # cifar_resnet20 at 32x32: 3x3 stem conv, 3 stages of 6 3x3 convs (the first of stages 2-3 strided, from
    # half the channels; option-A shortcuts have no multiply-adds), then 64 -> 10
    stem = 32 * 32 * 16 * 27
    stage1 = 6 * 32 * 32 * 16 * 16 * 9
    later = (16 * 16 * 32 * 16 * 9 + 5 * 16 * 16 * 32 * 32 * 9) + (8 * 8 * 64 * 32 * 9 + 5 * 8 * 8 * 64 * 64 * 9)
    assert multiply_adds(create_model("cifar_resnet20"), 32) == stem + stage1 + later + 64 * 10
    assert multiply_adds(create_model("cifar_resnet20", scan=True, remat=True), 32) == stem + stage1 + later + 640


@pytest.mark.parametrize("name", ["plain18", "plain34"])
def test_plain_multiply_adds_equal_residual_twin(name):
    plain = multiply_adds(create_model(name))
    residual = multiply_adds(create_model(name.replace("plain", "resnet")))
    assert plain == pytest.approx(residual, rel=0.02)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "cifar_resnet1202" else n
                                  for n in list_models()])
def test_output_and_feature_shapes(name):
    model = create_model(name, num_classes=7)
    size = image_size(name)
    variables = abstract_variables(model, size)
    logits, feats = jax.eval_shape(lambda v, x: model.apply(v, x, features=True), variables,
                                   jnp.zeros((2, size, size, 3)))
    assert logits.shape == (2, 7) and logits.dtype == jnp.float32
    stages = [k for k in feats if k.startswith("stage")]
    expansion = 4 if model.bottleneck else 1
    for i, key in enumerate(stages):
        stride = (4 if model.stem == "imagenet" else 1) * 2**i
        assert feats[key].shape == (2, size // stride, size // stride, model.widths[i] * expansion)
    assert feats["pre_logits"].shape == (2, model.widths[-1] * expansion)


def test_resnet50_stage_features_as_a_backbone():
    model = create_model("resnet50")
    variables = abstract_variables(model, 224)
    _, feats = jax.eval_shape(lambda v, x: model.apply(v, x, features=True), variables, jnp.zeros((1, 224, 224, 3)))
    assert feats["stem"].shape == (1, 56, 56, 64)
    assert [feats[f"stage{i}"].shape[1:] for i in range(1, 5)] == [
        (56, 56, 256), (28, 28, 512), (14, 14, 1024), (7, 7, 2048)]


@pytest.fixture(scope="module")
def r20():
    model = create_model("cifar_resnet20")
    x = jax.random.normal(jax.random.key(1), (8, 32, 32, 3))
    return model, model.init(jax.random.key(0), x), x


def test_train_mode_updates_batch_stats_and_eval_is_pure(r20):
    model, variables, x = r20
    assert set(variables) == {"params", "batch_stats"}
    y_train, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), variables["batch_stats"], updates["batch_stats"])
    assert all(jax.tree.leaves(changed))
    # Momentum 0.9 (Sec. 3.4 follows [16]): new mean = 0.9 * old + 0.1 * batch mean.
    old = variables["batch_stats"]["bn1"]["mean"]
    new = updates["batch_stats"]["bn1"]["mean"]
    stem = jax.lax.conv_general_dilated(x, variables["params"]["conv1"]["kernel"], (1, 1), ((1, 1), (1, 1)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(new, 0.9 * old + 0.1 * stem.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-5)
    y_eval = model.apply(variables, x, train=False)
    np.testing.assert_array_equal(y_eval, model.apply(variables, x, train=False))
    assert not np.allclose(y_train, y_eval)  # batch statistics vs running statistics


def test_shortcut_options():
    counts = {}
    for option in "ABC":
        variables = abstract_variables(create_model("cifar_resnet20", shortcut=option), 32)
        paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(variables["params"])]
        counts[option] = (num_params(variables["params"]), sum("shortcut" in p for p in paths))
    assert counts["A"][1] == 0
    assert counts["A"][0] < counts["B"][0] < counts["C"][0]
    # B projects only the two blocks that change dimensions; C projects all nine.
    assert counts["B"][1] == 2 * 3 and counts["C"][1] == 9 * 3


def test_option_a_pads_channels_equally_on_both_sides():
    from resnet_jax.models import Shortcut

    x = jnp.arange(1 * 4 * 4 * 2, dtype=jnp.float32).reshape(1, 4, 4, 2) + 1
    y = Shortcut(6, 2, "A", None, None).apply({}, x)
    assert y.shape == (1, 2, 2, 6)
    np.testing.assert_array_equal(y[..., 2:4], x[:, ::2, ::2])
    assert not jnp.any(y[..., :2]) and not jnp.any(y[..., 4:])


@pytest.mark.slow
def test_v1_and_v1_5_differ_only_in_stride_placement():
    kw = dict(stage_sizes=(1, 1), widths=(4, 8), stem="cifar", bottleneck=True, num_classes=3)
    x = jax.random.normal(jax.random.key(0), (1, 16, 16, 3))
    v1, v15 = ResNet(**kw, version="v1"), ResNet(**kw, version="v1.5")
    variables = v1.init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, variables) == jax.tree.map(jnp.shape, v15.init(jax.random.key(0), x))

    def conv_shapes(model):
        _, state = model.apply(variables, x, capture_intermediates=lambda mdl, _: isinstance(mdl, nn.Conv),
                               mutable=["intermediates"])
        block = state["intermediates"]["stage2"]["block0"]
        return [block[f"conv{i}"]["__call__"][0].shape[1] for i in (1, 2, 3)]

    assert conv_shapes(v1) == [8, 8, 8]  # stride 2 in the first 1x1 convolution
    assert conv_shapes(v15) == [16, 8, 8]  # stride 2 in the 3x3 convolution
    assert not np.allclose(v1.apply(variables, x), v15.apply(variables, x))


def test_zero_init_residual():
    variables = abstract_variables(create_model("resnet50", zero_init_residual=True), 224)
    model = create_model("cifar_resnet20", zero_init_residual=True)
    params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    assert not jnp.any(params["stage1"]["block0"]["bn2"]["scale"])
    assert jnp.all(params["stage1"]["block0"]["bn1"]["scale"] == 1)
    assert "bn3" in variables["params"]["stage1"]["block0"]
    default = create_model("cifar_resnet20").init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    assert jnp.all(default["stage1"]["block0"]["bn2"]["scale"] == 1)


def test_he_initialisation():
    params = create_model("cifar_resnet20").init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    kernel = params["stage3"]["block1"]["conv1"]["kernel"]  # 3x3x64x64
    assert float(jnp.std(kernel)) == pytest.approx(np.sqrt(2 / (3 * 3 * 64)), rel=0.05)


def test_bfloat16_forward_is_close_to_float32(r20):
    _, variables, x = r20
    model16 = create_model("cifar_resnet20", dtype="bfloat16")
    y32 = create_model("cifar_resnet20").apply(variables, x)
    y16 = model16.apply(variables, x)
    assert y16.dtype == jnp.float32
    params16 = model16.init(jax.random.key(0), x)["params"]
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params16))
    assert float(jnp.max(jnp.abs(y16 - y32))) < 0.05 * float(jnp.max(jnp.abs(y32))) + 0.05


def test_scanned_blocks_match_unrolled_numerics(r20):
    model, variables, x = r20
    scanned = create_model("cifar_resnet20", scan=True)
    stacked = convert_layout(variables, scan=True)
    assert stacked["params"]["stage2"]["blocks"]["conv1"]["kernel"].shape == (2, 3, 3, 32, 32)
    assert jax.tree.map(jnp.shape, stacked) == jax.tree.map(jnp.shape, scanned.init(jax.random.key(0), x))
    np.testing.assert_allclose(scanned.apply(stacked, x), model.apply(variables, x), rtol=1e-5, atol=1e-5)
    y1, s1 = model.apply(variables, x, train=True, mutable=["batch_stats"])
    y2, s2 = scanned.apply(stacked, x, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(y1, y2, rtol=1e-5, atol=1e-5)
    back = convert_layout(s2, scan=False)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), s1, back)
    assert jax.tree.structure(convert_layout(stacked, scan=False)) == jax.tree.structure(variables)


def test_create_model_errors():
    with pytest.raises(ValueError, match=r"unknown model 'resnet51'.*resnet50"):
        create_model("resnet51")
    with pytest.raises(ValueError, match=r"unknown option.*widht.*valid options.*num_classes"):
        create_model("resnet50", widht=3)
    with pytest.raises(ValueError, match="shortcut must be one of"):
        create_model("resnet50", shortcut="D")
    with pytest.raises(ValueError, match="version must be one of"):
        create_model("resnet50", version="v2")
    with pytest.raises(ValueError, match=r"stage_sizes and widths need one entry per stage.*\(4, 8\)"):
        create_model("cifar_resnet20", widths=(4, 8))
    with pytest.raises(ValueError, match="widths must be positive integers"):
        create_model("cifar_resnet20", widths=(4, 0, 16))


def test_architecture_overrides_build_networks_outside_the_table():
    tiny = create_model("cifar_resnet20", stage_sizes=[1, 1, 1], widths=[4, 8, 16])  # lists, as from JSON
    assert (tiny.stage_sizes, tiny.widths) == ((1, 1, 1), (4, 8, 16))
    shapes = abstract_variables(tiny, 8)["params"]
    assert shapes["conv1"]["kernel"].shape == (3, 3, 3, 4) and "block1" not in shapes["stage1"]
    wide = abstract_variables(create_model("resnet50", stage_sizes=(1, 2), widths=(8, 16), stem_width=12), 32)
    assert wide["params"]["conv1"]["kernel"].shape == (7, 7, 3, 12)
    assert wide["params"]["stage2"]["block1"]["conv3"]["kernel"].shape == (1, 1, 16, 64)  # bottleneck: 4x
    assert wide["params"]["fc"]["kernel"].shape == (64, 1000)


def test_public_api():
    assert resnet_jax.list_models() == sorted(resnet_jax.list_models())
    assert {"resnet18", "resnet152", "plain34", "cifar_resnet1202", "cifar_plain110"} <= set(resnet_jax.list_models())
    assert "cifar_plain1202" not in resnet_jax.list_models()
    assert isinstance(resnet_jax.create_model("resnet18"), resnet_jax.ResNet)
