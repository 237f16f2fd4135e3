"""VGG- and Inception-style preprocessing and the training augmentation."""

import numpy as np
import pytest
import tensorflow as tf

from deepbc.jobs.errors import UserError
from deepbc.training import settings
from deepbc.training.preprocessing import (
    RGB_FROM_HED,
    VGG_MEANS,
    get_preprocessing,
    hed_jitter,
    hed_to_rgb,
    rgb_to_hed,
)

RNG = np.random.default_rng(0)
# A histology-sized, asymmetric image: a gradient plus noise, so every flip/rotation differs.
IMAGE = np.clip(np.linspace(0, 200, 700)[None, :, None] + np.linspace(0, 50, 460)[:, None, None]
                + RNG.integers(0, 6, (460, 700, 3)), 0, 255).astype(np.uint8)
NO_AUG = {"rotate": False, "flip": False, "random_crop": False, "color_jitter": False, "hed": None}


def run(style, is_training, image=IMAGE, size=(64, 64), augment=None, seed=(1, 2)):
    fn = get_preprocessing(style, is_training, augment)
    return fn(tf.constant(image), *size, seed=tf.constant(seed, tf.int64)).numpy()


@pytest.mark.parametrize("style", ["vgg", "inception"])
@pytest.mark.parametrize("size", [(64, 64), (299, 299), (48, 80)])
@pytest.mark.parametrize("in_shape", [(460, 700), (30, 20)])
def test_shapes_and_ranges(style, size, in_shape):
    image = IMAGE[:in_shape[0], :in_shape[1]]
    for is_training, augment in [(False, None), (True, None),
                                 (True, {"random_crop": True, "color_jitter": True})]:
        out = run(style, is_training, image, size, augment)
        assert out.shape == (*size, 3) and out.dtype == np.float32
        if style == "inception":
            assert -1.0 <= out.min() and out.max() <= 1.0
        else:
            assert (out >= -np.array(VGG_MEANS) - 1e-3).all() and (out <= 255 - np.array(VGG_MEANS) + 1e-3).all()


def test_normalisation_values():
    grey = np.full((100, 150, 3), 128, np.uint8)
    np.testing.assert_allclose(run("vgg", False, grey), np.broadcast_to(128 - np.array(VGG_MEANS), (64, 64, 3)),
                               atol=1e-3)
    np.testing.assert_allclose(run("inception", False, np.full((50, 50, 3), 255, np.uint8)), 1.0, atol=1e-6)
    np.testing.assert_allclose(run("inception", False, np.zeros((50, 50, 3), np.uint8)), -1.0, atol=1e-6)


def framed(width: int) -> np.ndarray:
    image = np.full((224, 224, 3), 255, np.uint8)
    image[width:-width, width:-width] = 0
    return image


def test_eval_crops_the_centre():
    # Both styles keep the central 87.5% of each side (VGG: resize to 256/224, crop 224), so a
    # bright frame 7 px wide around a dark centre is cut away, and one 28 px wide is not.
    assert run("inception", False, framed(7), (224, 224)).max() == -1.0
    assert run("vgg", False, framed(7), (224, 224)).max() < -100
    assert run("inception", False, framed(28), (224, 224)).max() == 1.0
    assert run("vgg", False, framed(28), (224, 224)).max() > 100


def dihedral(image):
    """The 8 symmetries of a square image."""
    rots = [np.rot90(image, k) for k in range(4)]
    return rots + [np.fliplr(r) for r in rots]


@pytest.mark.parametrize("style", ["vgg", "inception"])
def test_rotations_and_flips_give_the_symmetries_of_the_eval_image(style):
    reference = run(style, False)
    seen = set()
    for i in range(24):
        out = run(style, True, augment=None, seed=(i, 7))
        matches = [k for k, d in enumerate(dihedral(reference)) if np.allclose(out, d, atol=1e-4)]
        assert matches, "training output is not a flip/rotation of the evaluation output"
        seen.add(matches[0])
    assert len(seen) >= 6  # 24 draws over 8 equally likely symmetries


def test_non_square_outputs_rotate_by_half_turns_only():
    reference = run("inception", False, size=(48, 80))
    allowed = [reference, np.fliplr(reference), np.flipud(reference), np.rot90(reference, 2)]
    for i in range(8):
        out = run("inception", True, size=(48, 80), seed=(i, 3))
        assert any(np.allclose(out, a, atol=1e-4) for a in allowed)


def test_augmentations_switch_off_and_never_apply_at_eval():
    reference = run("vgg", False)
    np.testing.assert_allclose(run("vgg", True, augment=NO_AUG), reference, atol=1e-4)
    everything = {"rotate": True, "flip": True, "random_crop": True, "color_jitter": True, "hed": {"sigma": 0.5, "bias": 0.5}}
    np.testing.assert_array_equal(run("vgg", False, augment=everything), reference)


@pytest.mark.parametrize("key", ["random_crop", "color_jitter"])
def test_random_crop_and_colour_jitter(key):
    augment = dict(NO_AUG, **{key: True})
    reference = run("inception", False)
    outs = [run("inception", True, augment=augment, seed=(i, 0)) for i in range(4)]
    assert all(not np.allclose(o, reference, atol=1e-3) for o in outs)
    assert len({o.tobytes() for o in outs}) == 4
    if key == "color_jitter":  # mild: the image stays close to the original
        assert max(np.abs(o - reference).mean() for o in outs) < 0.3


def test_random_crops_follow_tf_slim_per_family():
    """TF-Slim's Inception training distorts colour after its random box (brightness +-32/255,
    saturation x0.5..1.5), its VGG training does not; random_crop did not for either."""
    augment = dict(NO_AUG, random_crop=True)
    flat = np.empty((100, 150, 3), np.uint8)
    flat[...] = (200, 100, 150)
    np.testing.assert_allclose(run("vgg", True, flat, augment=augment), run("vgg", False, flat), atol=1e-2)
    reference = run("inception", False, flat)[0, 0]
    colours = [run("inception", True, flat, augment=augment, seed=(i, 0))[0, 0] for i in range(8)]
    assert len({c.round(3).tobytes() for c in colours}) == 8 and not any(np.allclose(c, reference) for c in colours)
    grey = np.full((100, 150, 3), 128, np.uint8)  # saturation leaves grey alone; brightness shifts it
    for i in range(8):
        out = run("inception", True, grey, augment=augment, seed=(i, 0))
        assert np.ptp(out) < 1e-5 and abs(out.mean() - (128 / 255 - 0.5) * 2) <= 2 * 32 / 255 + 1e-5


def test_same_seed_same_output():
    augment = {"random_crop": True, "color_jitter": True}
    a = run("vgg", True, augment=augment, seed=(5, 5))
    np.testing.assert_array_equal(a, run("vgg", True, augment=augment, seed=(5, 5)))
    assert not np.array_equal(a, run("vgg", True, augment=augment, seed=(5, 6)))


def test_runs_in_a_tf_data_map_inside_a_graph():
    fn = get_preprocessing("inception", True, {"random_crop": True, "color_jitter": True})
    with tf.Graph().as_default():
        images = tf.data.Dataset.from_tensor_slices(np.stack([IMAGE[:100, :120]] * 6))
        ds = images.enumerate().map(lambda i, x: fn(x, 32, 32, seed=tf.stack([i, i])),
                                    num_parallel_calls=2).batch(3)
        batch = tf.compat.v1.data.make_one_shot_iterator(ds).get_next()
        assert batch.shape.as_list() == [None, 32, 32, 3]
        with tf.compat.v1.Session() as sess:
            first, second = sess.run(batch), sess.run(batch)
    assert first.shape == second.shape == (3, 32, 32, 3)


def test_bad_input_is_clear():
    with pytest.raises(UserError, match="unknown preprocessing 'resnet'"):
        get_preprocessing("resnet", True)
    # The augmentation is checked by the schema, which also gives its defaults.
    with pytest.raises(UserError, match="'rotation' was unexpected"):
        get_preprocessing("vgg", True, {"rotation": True})
    with pytest.raises(UserError, match="'yes' is not of type 'boolean'"):
        settings.augment({"flip": "yes"})
    assert settings.as_dict(settings.augment()) == {"rotate": True, "flip": True, "random_crop": False,
                                                    "color_jitter": False, "hed": None}
    with pytest.raises(UserError, match="True is not of type 'object', 'null'"):
        settings.augment({"hed": True})
    with pytest.raises(UserError, match="'bias' is a required property"):
        settings.augment({"hed": {"sigma": 0.05}})
    with pytest.raises(UserError, match="1.5 is greater than or equal to the maximum of 1"):
        settings.augment({"hed": {"sigma": 1.5, "bias": 0.05}})
    assert settings.augment({"hed": {"sigma": 0, "bias": 0.1}}).hed.bias == 0.1
    with pytest.raises(ValueError, match="uint8"):
        get_preprocessing("vgg", False)(tf.zeros([10, 10, 3]), 8, 8)


def test_min_source_side_is_what_the_crop_needs_before_shrinking():
    vgg = get_preprocessing("vgg", is_training=False)
    assert vgg.min_source_side(224, 224) == 256 and vgg.min_source_side(128, 128) == 146
    inception = get_preprocessing("inception", is_training=True, augment={"random_crop": False})
    assert inception.min_source_side(299, 299) == 342  # 87.5% central crop of 342 px covers 299
    cropping = get_preprocessing("vgg", is_training=True, augment={"random_crop": True})
    assert cropping.min_source_side(224, 224) is None  # a random crop may take a small part: full size


HED_LIGHT = {"sigma": 0.05, "bias": 0.05}
PIXELS = tf.constant(IMAGE[:64, :64] / 255.0, tf.float32)


def tellez_hed(rgb, alpha, beta):
    """Tellez et al.'s HED augmentation of one draw (DIAG's digitalpathology HedColorAugmenter.transform,
    alpha = 1 + its sigma, beta its bias) with scikit-image's rgb2hed and hed2rgb as they were before
    0.19, when it was used (separate_stains: -log(rgb + 2) @ hed_from_rgb; combine_stains:
    exp(-stains @ rgb_from_hed) - 2, within [-1, 1]; the augmenter clips to [0, 1]), in numpy."""
    stains = (-np.log(rgb.reshape(-1, 3) + 2)) @ np.linalg.inv(RGB_FROM_HED)
    rgb2 = np.exp(-(stains * alpha + beta) @ RGB_FROM_HED) - 2
    return np.clip(np.clip(rgb2, -1, 1), 0, 1).reshape(rgb.shape)


def test_hed_known_colours():
    # By hand, in scikit-image < 0.19's units: rgb2hed(x) = -log(x + 2) @ inv(RGB_FROM_HED).
    np.testing.assert_allclose(rgb_to_hed(tf.constant([200 / 255, 100 / 255, 150 / 255])).numpy(),
                               [-1.2931727, 0.4990203, -0.8087801], atol=1e-6)
    np.testing.assert_allclose(rgb_to_hed(tf.ones([3])).numpy(), [-1.3295047, 0.3882084, -0.9689216], atol=1e-6)


def test_hed_jitter_is_tellez_et_als_in_their_units():
    """The strengths were claimed to be Tellez et al.'s HED-light/strong, but the densities were
    scikit-image's since 0.19, on which the same sigma and bias change an image about twice as much;
    now it computes what their augmenter computed, so their settings mean the same here."""
    pixels = PIXELS.numpy().astype(np.float64)
    key = tf.constant([3, 4], tf.int64)
    for sigma, bias in ((0.05, 0.05), (0.2, 0.2)):
        alpha_key, beta_key = tf.unstack(tf.random.experimental.stateless_split(key, num=2))
        alpha = tf.random.stateless_uniform([3], alpha_key, 1 - sigma, 1 + sigma).numpy()
        beta = tf.random.stateless_uniform([3], beta_key, -bias, bias).numpy()
        np.testing.assert_allclose(hed_jitter(PIXELS, sigma, bias, key).numpy(), tellez_hed(pixels, alpha, beta),
                                   atol=2e-5)


def test_hed_round_trip_and_identity_jitter():
    np.testing.assert_allclose(hed_to_rgb(rgb_to_hed(PIXELS)).numpy(), PIXELS.numpy(), atol=2e-5)
    key = tf.constant([3, 4], tf.int64)
    np.testing.assert_allclose(hed_jitter(PIXELS, 0.0, 0.0, key).numpy(), PIXELS.numpy(), atol=2e-5)
    # The folded matrix is the three steps: perturbing in HED space with the same draws gives the same.
    alpha_key, beta_key = tf.unstack(tf.random.experimental.stateless_split(key, num=2))
    alpha = tf.random.stateless_uniform([3], alpha_key, 0.8, 1.2)
    beta = tf.random.stateless_uniform([3], beta_key, -0.2, 0.2)
    np.testing.assert_allclose(hed_jitter(PIXELS, 0.2, 0.2, key).numpy(),
                               hed_to_rgb(rgb_to_hed(PIXELS) * alpha + beta).numpy(), atol=1e-5)


def test_hed_jitter_is_keyed_mild_and_in_range():
    a = hed_jitter(PIXELS, 0.05, 0.05, tf.constant([3, 4], tf.int64)).numpy()
    np.testing.assert_array_equal(a, hed_jitter(PIXELS, 0.05, 0.05, tf.constant([3, 4], tf.int64)).numpy())
    b = hed_jitter(PIXELS, 0.05, 0.05, tf.constant([3, 5], tf.int64)).numpy()
    assert not np.allclose(a, b, atol=1e-3) and not np.allclose(a, PIXELS.numpy(), atol=1e-3)
    strong = hed_jitter(PIXELS, 0.9, 3.0, tf.constant([3, 4], tf.int64)).numpy()
    assert 0.0 <= min(a.min(), strong.min()) and max(a.max(), strong.max()) <= 1.0
    assert np.abs(a - PIXELS.numpy()).mean() < np.abs(strong - PIXELS.numpy()).mean()


def test_hed_augmentation_in_training_preprocessing_only():
    augment = dict(NO_AUG, hed=HED_LIGHT)
    reference = run("vgg", False)
    a = run("vgg", True, augment=augment, seed=(5, 5))
    np.testing.assert_array_equal(a, run("vgg", True, augment=augment, seed=(5, 5)))
    assert not np.allclose(a, run("vgg", True, augment=augment, seed=(5, 6)), atol=1e-3)
    assert not np.allclose(a, reference, atol=1e-3)
    np.testing.assert_array_equal(run("vgg", False, augment=augment), reference)
    # Adding HED leaves the other augmentations' draws as they were: flips come out the same.
    flip = dict(NO_AUG, flip=True)
    np.testing.assert_allclose(run("vgg", True, augment=dict(flip, hed={"sigma": 0, "bias": 0})),
                               run("vgg", True, augment=flip), atol=1e-2)
