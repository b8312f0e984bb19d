"""Zero-shot class weights with OpenAI's prompt ensemble, against open_clip's build_zero_shot_classifier.

Tolerance: 1e-5 absolute on the unit-norm class weights, float32 with matmul precision "highest". Text
features agree with open_clip to 2e-6 (tests/test_parity.py); the mean over templates and the
renormalization do not amplify that. Averaging unnormalized template embeddings instead (a common
slip) moves the weights by 2e-4 here (a random model's templates have similar norms; real ones differ
more), which the test checks the tolerance would catch.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

import clip_jax
from clip_jax.checkpoint.torch_names import from_torch
from clip_jax.parallel import ShardedCLIP
from clip_jax.tokenizer import tokenize
from clip_jax.zeroshot import IMAGENET_TEMPLATES, classify, read_templates, top_k, zeroshot_classifier

from .tiny import tiny_model

ATOL = 1e-5
CLASSES = ["golden retriever", "tabby cat", "fire truck"]


def test_templates_are_openais_80_in_order():
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    assert len(IMAGENET_TEMPLATES) == 80
    assert list(IMAGENET_TEMPLATES) == [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]


@pytest.fixture(scope="module")
def reference():
    import torch

    from .reference import reference_model

    ref = reference_model("ViT-B-32", vision_layers=1, text_layers=1)
    config, params = from_torch({k: v.numpy() for k, v in ref.state_dict().items()})
    return ref, clip_jax.build(config, params), torch


def test_weights_match_open_clip(reference):
    import open_clip
    from open_clip.zero_shot_classifier import build_zero_shot_classifier

    ref, model, torch = reference
    want = build_zero_shot_classifier(ref, open_clip.get_tokenizer("ViT-B-32"), CLASSES, IMAGENET_TEMPLATES,
                                      num_classes_per_batch=2, device="cpu").numpy()
    with jax.default_matmul_precision("highest"):
        got = zeroshot_classifier(model, CLASSES, classes_per_batch=2)
    assert got.shape == (512, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(got, axis=0), 1, atol=1e-6)

    # The tolerance catches the unnormalized-mean slip.
    with jax.default_matmul_precision("highest"):
        raw = np.asarray(model.encode_text(tokenize([t.format(CLASSES[0]) for t in IMAGENET_TEMPLATES]))).mean(0)
    assert np.abs(raw / np.linalg.norm(raw) - want[:, 0]).max() > 10 * ATOL  # measured 2.2e-4


def test_sharded_model_gives_the_same_weights():
    model = tiny_model()
    plain = zeroshot_classifier(model, CLASSES, ["a photo of a {}.", "art of the {}."])
    sharded = zeroshot_classifier(ShardedCLIP(model, batch_size=16), CLASSES, ["a photo of a {}.", "art of the {}."])
    np.testing.assert_allclose(sharded, plain, atol=ATOL, rtol=0)


def test_classify_top_k():
    model = tiny_model()
    weights = zeroshot_classifier(model, CLASSES, ["a photo of a {}."])
    images = np.random.RandomState(0).randint(0, 256, (4, 32, 32, 3)).astype(np.uint8)
    probs, idx = classify(model, images, weights, k=2)
    assert probs.shape == idx.shape == (4, 2)
    feats = np.asarray(clip_jax.l2_normalize(model.encode_image(images)))
    logits = np.exp(np.log(1 / 0.07)) * feats @ weights
    full = np.exp(logits - logits.max(1, keepdims=True))
    full /= full.sum(1, keepdims=True)
    np.testing.assert_array_equal(idx, np.argsort(-full, axis=1)[:, :2])
    np.testing.assert_allclose(probs, np.sort(full, axis=1)[:, ::-1][:, :2], atol=1e-5)


def test_top_k_probabilities():
    feats = np.eye(3, dtype=np.float32)
    probs, idx = top_k(feats, np.eye(3, dtype=np.float32), 100.0, k=5)  # k capped at the class count
    assert idx.tolist() == [[0, 1, 2], [1, 0, 2], [2, 0, 1]]  # ties keep class order
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-6)
    assert probs[0, 0] > 0.999


def test_read_templates(tmp_path):
    assert read_templates("imagenet") is IMAGENET_TEMPLATES
    assert read_templates("a photo of a {}.") == ("a photo of a {}.",)
    f = tmp_path / "t.txt"
    f.write_text("a {}.\n\nart of {}\n")
    assert read_templates(str(f)) == ("a {}.", "art of {}")
    with pytest.raises(ValueError, match="must each contain"):
        read_templates("a photo")
    with pytest.raises(ValueError, match="no class names"):
        zeroshot_classifier(None, [])
