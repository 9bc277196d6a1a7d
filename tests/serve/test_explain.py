"""Grad-CAM heatmaps of the served model: sanity checks in process, then V1 :explain and V2 over real HTTP."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import requests
from scipy.stats import spearmanr

from core.imaging import decode_for_model, decode_upload
from core.layers import with_temperature
from core.modelstore import download_model, load_model_dir
from serving.explain import ExplainError, build_explainer, expose_activations

TIMEOUT = 120
SIZE = 32
# The FAKE evidence of the constructed model: a red square off the image's vertical axis, so a map that is
# not mirrored back from the flip branch would light up its mirror image instead (or as well).
PATCH_ROWS, PATCH_COLS = slice(4, 10), slice(20, 26)
MIRROR_COLS = slice(SIZE - 26, SIZE - 20)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def flip_averaged(model):  # -> keras.Model
    from core.layers import with_flip_averaging

    return with_flip_averaging(model)


def probe_pixels(sample_images) -> np.ndarray:
    return np.stack([decode_for_model(data, SIZE) for data in sample_images.probe])


# ---- in process -------------------------------------------------------------------------------------------


def test_maps_have_the_input_size_and_lie_in_0_1(tiny_model, sample_images):
    images = probe_pixels(sample_images)
    explainer = build_explainer(flip_averaged(tiny_model), SIZE)
    maps = explainer(images, np.arange(len(images)) % 2 == 0)
    assert maps.shape == (len(images), SIZE, SIZE) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    peaks = maps.max(axis=(1, 2))
    assert np.all((peaks == 0.0) | np.isclose(peaks, 1.0)), "each map is scaled to its own peak"
    assert np.count_nonzero(peaks) >= len(images) // 2, "most probe images have some evidence"
    assert explainer.stages == 2, "both the image's and the mirror's branch are explained"


def _patch_model(weight: float = 30.0, calibrated: bool = True):  # -> keras.Model
    """A served-format model whose only FAKE evidence is red: uint8 in, flip averaged, a calibration on top.

    Conv (a red detector at full resolution) -> max-pool -> 1x1 conv (the last convolutional stage, 16x16)
    -> global average -> sigmoid; wrapped like train wraps the trained net, plus (``calibrated``) a
    temperature layer that a calibrated model puts above the flip average. ``weight`` scales the evidence:
    200 (a logit of about 33) makes P(FAKE) exactly 1.0 in float32.
    """
    import keras
    from keras import layers

    inputs = keras.Input((SIZE, SIZE, 3), dtype="uint8", name="image")
    x = layers.Rescaling(1.0 / 255.0)(inputs)
    red = np.zeros((3, 3, 3, 4), dtype="float32")
    red[:, :, 0, 0], red[:, :, 1, 0], red[:, :, 2, 0] = 1.0, -1.0, -1.0  # 9 * (R - G - B)
    red[1, 1, :, 1:] = 0.3  # brightness channels: activations the output does not use
    x = layers.Conv2D(4, 3, padding="same", activation="relu", name="detect")(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(4, 1, activation="relu", name="stage")(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(1, activation="sigmoid", name="fake_probability")(x)
    net = keras.Model(inputs, outputs, name="RedPatchNet")
    net.get_layer("detect").set_weights([red, np.array([-4.0, 0, 0, 0], dtype="float32")])
    net.get_layer("stage").set_weights([np.eye(4, dtype="float32")[None, None], np.zeros(4, dtype="float32")])
    net.get_layer("fake_probability").set_weights(
        [np.array([[weight], [0], [0], [0]], dtype="float32"), np.array([-2.5], dtype="float32")]
    )
    served = flip_averaged(net)
    if not calibrated:
        return served
    return with_temperature(served, 1.5)  # the calibration layer train puts on top (core/layers.py)


def _backgrounds(count: int) -> np.ndarray:
    """Grey textured images with no red in them."""
    rng = np.random.default_rng(11)
    grey = rng.integers(60, 200, (count, SIZE, SIZE, 1))
    return np.clip(grey + rng.integers(-15, 16, (count, SIZE, SIZE, 3)), 0, 255).astype(np.uint8)


def _patched(images: np.ndarray) -> np.ndarray:
    patched = images.copy()
    patched[:, PATCH_ROWS, PATCH_COLS] = (255, 0, 0)
    return patched


def _assert_peaks_on_the_patch(maps: np.ndarray) -> None:
    for heatmap in maps:
        row, col = np.unravel_index(np.argmax(heatmap), heatmap.shape)
        assert PATCH_ROWS.start <= row < PATCH_ROWS.stop and PATCH_COLS.start <= col < PATCH_COLS.stop
        assert heatmap[PATCH_ROWS, PATCH_COLS].mean() > 0.5
        assert heatmap[PATCH_ROWS, MIRROR_COLS].max() < 0.05, "the flip branch's map was not mirrored back"


def test_map_peaks_on_the_patch_that_makes_the_image_fake():
    model = _patch_model()
    clean = _backgrounds(4)
    patched = _patched(clean)
    probabilities = model.predict_on_batch(np.concatenate([clean, patched])).reshape(-1)
    assert np.all(probabilities[:4] < 0.2) and np.all(probabilities[4:] > 0.8), probabilities

    explainer = build_explainer(model, SIZE)
    _assert_peaks_on_the_patch(explainer(patched, np.ones(4, dtype=bool)))
    # Clean images are REAL with no red anywhere: no evidence for REAL in these channels, so no map at all.
    assert explainer(clean, np.zeros(4, dtype=bool)).max() == 0.0


def test_a_real_label_is_explained_by_the_evidence_for_real():
    """For REAL the map shows what lowers P(FAKE): here the red patch, which a negative weight makes REAL."""
    model = _patch_model(weight=-30.0)
    patched = _patched(_backgrounds(4))
    assert np.all(model.predict_on_batch(patched) < 0.2)
    explainer = build_explainer(model, SIZE)
    _assert_peaks_on_the_patch(explainer(patched, np.zeros(4, dtype=bool)))
    # The same images explained as FAKE: the patch is evidence against it, and there is no other.
    assert explainer(patched, np.ones(4, dtype=bool)).max() == 0.0


def test_a_probability_of_exactly_one_still_has_a_map():
    """TensorFlow's sigmoid gradient is 0 at P(FAKE) == 1.0; the most confident fakes must not go blank."""
    model = _patch_model(weight=200.0, calibrated=False)
    patched = _patched(_backgrounds(2))
    assert np.all(model.predict_on_batch(patched) == 1.0)
    _assert_peaks_on_the_patch(build_explainer(model, SIZE)(patched, np.ones(2, dtype=bool)))


def test_a_saturated_score_under_the_calibration_layer_still_has_a_map():
    """The temperature layer clips P(FAKE) before its logit, a zero gradient at saturation: the explainer
    passes the gradient through it (a positive factor the map's scaling removes)."""
    model = _patch_model(weight=200.0, calibrated=True)
    patched = _patched(_backgrounds(2))
    # The net's P(FAKE) is exactly 1.0; the layer's clip keeps the calibrated score just below it.
    assert np.all(model.predict_on_batch(patched) > 0.9999)
    _assert_peaks_on_the_patch(build_explainer(model, SIZE)(patched, np.ones(2, dtype=bool)))


def test_a_model_without_a_convolution_cannot_be_explained():
    import keras

    inputs = keras.Input((SIZE, SIZE, 3), dtype="uint8", name="image")
    x = keras.layers.Flatten()(keras.layers.Rescaling(1.0 / 255.0)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x), name="NoConv")
    with pytest.raises(ExplainError, match="NoConv"):
        expose_activations(model)


# ---- over HTTP against the real predictor ------------------------------------------------------------------


@pytest.fixture(scope="module")
def champion(registered_model, tmp_path_factory):
    """The champion the predictor serves, loaded in this process with its own explainer."""
    import mlflow

    mlflow.set_tracking_uri(registered_model.tracking_uri)
    dest = tmp_path_factory.mktemp("explain-ref")
    model, metadata = load_model_dir(download_model(f"models:/deepguard/{registered_model.version}", dest))
    return model, metadata, build_explainer(model, metadata.image_size)


def test_maps_depend_on_the_learned_weights(champion, sample_images):
    """Adebayo et al. 2018 model-randomisation check on the champion (the pipeline's flip-averaged net).

    A method whose maps stay the same when the weights are re-initialised shows the image, not the model.
    A coarse last stage (8x8; 4x4 for DeepGuardCNN) makes one image's rank correlation noisy,
    so it is averaged over images and 3 draws.
    """
    import keras

    model, _, explainer = champion
    images = probe_pixels(sample_images)
    fake = np.ones(len(images), dtype=bool)  # the same class for both models: explain P(FAKE)
    ours = explainer(images, fake)
    rhos = []
    for seed in (8, 9, 10):
        keras.utils.set_random_seed(seed)
        randomised = keras.models.clone_model(model)  # same architecture, fresh weights
        theirs = build_explainer(randomised, SIZE)(images, fake)
        rhos += [
            spearmanr(a.ravel(), b.ravel()).statistic
            for a, b in zip(ours, theirs, strict=True)
            if a.std() > 0 and b.std() > 0
        ]
    assert len(rhos) >= len(images) // 2, "maps with some evidence to compare"
    assert np.mean(rhos) < 0.5, f"maps barely depend on the weights: mean Spearman {np.mean(rhos):.2f}"


def _v2(url: str, files: list[bytes], parameters: dict | None = None) -> requests.Response:
    body: dict = {
        "inputs": [
            {"name": "image", "datatype": "BYTES", "shape": [len(files)], "data": [b64(f) for f in files]}
        ]
    }
    if parameters is not None:
        body["parameters"] = parameters
    return requests.post(f"{url}/v2/models/deepguard/infer", json=body, timeout=TIMEOUT)


def _outputs(response: requests.Response) -> dict[str, dict]:
    return {output["name"]: output for output in response.json()["outputs"]}


def test_v1_explain_round_trip(predictor, registered_model, sample_images, champion):
    files = sample_images.probe
    body = {"instances": [{"image": {"b64": b64(f)}} for f in files]}
    explained = requests.post(f"{predictor.url}/v1/models/deepguard:explain", json=body, timeout=TIMEOUT)
    assert explained.status_code == 200, explained.text
    predicted = requests.post(f"{predictor.url}/v1/models/deepguard:predict", json=body, timeout=TIMEOUT)
    result, predictions = explained.json(), predicted.json()["predictions"]
    assert result["model_version"] == registered_model.version
    explanations = result["explanations"]
    assert len(explanations) == len(files)
    for explanation, prediction in zip(explanations, predictions, strict=True):
        # The explanation is :predict's whole answer (its note too), and the heatmap.
        assert {key: explanation.get(key) for key in prediction} == prediction
    heatmaps = np.array([explanation["heatmap"] for explanation in explanations], dtype=np.float32)
    assert heatmaps.shape == (len(files), SIZE, SIZE)
    assert heatmaps.min() >= 0.0 and heatmaps.max() <= 1.0

    # The maps are the served model's, from the pixels the predictor decoded for the verdict.
    _, metadata, explainer = champion
    pixels = np.stack([decode_upload(f, metadata.image_size)[0] for f in files])
    fake = np.array([explanation["label"] == "FAKE" for explanation in explanations])
    np.testing.assert_allclose(heatmaps, explainer(pixels, fake), atol=1e-4, rtol=0)


def test_v2_explain_adds_a_heatmap_and_changes_nothing_else(predictor, sample_images):
    files = sample_images.probe[:5]
    plain = _v2(predictor.url, files)
    explained = _v2(predictor.url, files, {"explain": True})
    assert plain.status_code == 200 and explained.status_code == 200, explained.text
    plain_outputs, explained_outputs = _outputs(plain), _outputs(explained)
    assert "heatmap" not in plain_outputs
    assert "heatmap" not in _outputs(_v2(predictor.url, files, {"explain": False}))
    heatmap = explained_outputs.pop("heatmap")
    assert heatmap["datatype"] == "FP32" and heatmap["shape"] == [len(files), SIZE, SIZE]
    values = np.asarray(heatmap["data"], dtype=np.float32)
    assert values.size == len(files) * SIZE * SIZE and values.min() >= 0.0 and values.max() <= 1.0
    assert explained_outputs == plain_outputs, "probabilities, labels and verdicts are those without explain"


@pytest.mark.parametrize("value", ["true", 1, 0, None, [True], {"on": True}])
def test_v2_explain_that_is_not_a_boolean_is_a_400(predictor, sample_images, value):
    response = _v2(predictor.url, sample_images.probe[:1], {"explain": value})
    assert response.status_code == 400, response.text
    assert 'parameter "explain" must be true or false' in response.json()["error"]
