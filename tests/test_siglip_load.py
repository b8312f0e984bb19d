"""SigLIP through the public path, file to logits: `clip_jax.load` of a transformers folder (weights,
config.json, preprocessor and tokenizer files as save_pretrained writes them), of an open_clip SigLIP
file with its open_clip_config.json, of a big_vision .npz with and without a vocabulary; then
`clip_jax.get_tokenizer`, the returned preprocess and `clip_logits`, compared with transformers'
SiglipProcessor + SiglipModel on real photographs.

Tolerance: 1e-5 on logits of size ~10 (float32 "highest" on both sides; the tokens and pixels are
identical, the towers differ in summation order only, measured ~2e-6).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import clip_jax
from clip_jax import model as M
from clip_jax.errors import InputError
from clip_jax.siglip import Siglip
from tests.siglip_vocab import train_spiece

transformers = pytest.importorskip("transformers")

TEXTS = ["a photo of an astronaut", "A CAT, sleeping!", "coffee", "rocket launch at night", ""]


def _moved(hf: torch.nn.Module) -> None:
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name or name.endswith("bias") or "logit" in name or "probe" in name:
                p.add_(0.3 * torch.randn_like(p))


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A small SiglipModel with a SentencePiece vocabulary trained here, saved as transformers saves one."""
    folder = tmp_path_factory.mktemp("siglip_hf")
    spiece = train_spiece(folder.parent / "spiece_for_hf.model", vocab_size=1500)
    tokenizer = transformers.SiglipTokenizer(vocab_file=str(spiece), model_max_length=16)
    config = transformers.SiglipConfig(
        text_config=dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=80,
                         vocab_size=1500, max_position_embeddings=16, projection_size=64),
        vision_config=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                           image_size=32, patch_size=8))
    torch.manual_seed(0)
    hf = transformers.SiglipModel(config).eval()
    _moved(hf)
    hf.save_pretrained(folder)
    processor = transformers.SiglipProcessor(
        image_processor=transformers.SiglipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer)
    processor.save_pretrained(folder)
    return folder, hf, processor


def _photos(tmp_path) -> list:
    from PIL import Image
    skimage = pytest.importorskip("skimage")
    paths = []
    for name in ("astronaut", "coffee", "chelsea"):
        path = tmp_path / f"{name}.jpg"
        Image.fromarray(getattr(skimage.data, name)()).save(path, quality=90)
        paths.append(path)
    return paths


def test_transformers_folder_file_to_logits(hf_folder, tmp_path):
    """load(folder) -> preprocess, get_tokenizer(model), clip_logits == SiglipProcessor + SiglipModel."""
    from PIL import Image
    folder, hf, processor = hf_folder
    model, preprocess = clip_jax.load(folder)
    assert type(model) is Siglip and model.config.tokenizer == str(folder)
    paths = _photos(tmp_path)
    tokens = clip_jax.get_tokenizer(model)(TEXTS)
    images = np.stack([preprocess(p) for p in paths])
    inputs = processor(text=TEXTS, images=[Image.open(p) for p in paths], padding="max_length", max_length=16,
                       truncation=True, return_tensors="pt")
    np.testing.assert_array_equal(tokens, inputs["input_ids"].numpy())
    np.testing.assert_array_equal(images, inputs["pixel_values"].numpy().transpose(0, 2, 3, 1))
    # SigLIP attends to its padding (trained so, as big_vision and open_clip run it): transformers called on
    # input_ids alone. Its tokenizer also returns an attention_mask, and passing it changes the text
    # features (the padding masked out): not the model as trained.
    with torch.no_grad():
        want = hf(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"]).logits_per_image.numpy()
        masked = hf(**inputs).logits_per_image.numpy()
    assert np.abs(masked - want).max() > 1e-3
    np.testing.assert_allclose(np.asarray(clip_jax.clip_logits(model, images, tokens)[0]), want, atol=1e-5)
    # uint8 pixels normalized on the device: the same logits
    pixels = np.stack([preprocess.pixels(p) for p in paths])
    np.testing.assert_allclose(np.asarray(clip_jax.clip_logits(model, pixels, tokens)[0]), want, atol=1e-5)
    # the folder as a name for get_tokenizer (its config only), equal ids
    np.testing.assert_array_equal(clip_jax.get_tokenizer(folder)(TEXTS), tokens)


def test_converted_siglip_keeps_its_vocabulary(hf_folder, tmp_path):
    folder, _, _ = hf_folder
    out = clip_jax.convert(folder, tmp_path / "siglip.safetensors")
    model, _ = clip_jax.load(out)
    reference, _ = clip_jax.load(folder)
    np.testing.assert_array_equal(clip_jax.get_tokenizer(model)(TEXTS), clip_jax.get_tokenizer(reference)(TEXTS))
    tokens = clip_jax.get_tokenizer(model)(TEXTS)
    np.testing.assert_array_equal(np.asarray(model.encode_text(tokens)), np.asarray(reference.encode_text(tokens)))


@pytest.mark.slow  # budget: the full-size ViT-B-16-SigLIP2-256; tests/test_siglip_formats.py reads open_clip files too
def test_open_clip_file_with_its_config(tmp_path):
    """An open_clip SigLIP's weights (timm names) with open_clip_config.json beside them load as open_clip
    builds the model (exact GELU image tower): features equal open_clip's."""
    open_clip = pytest.importorskip("open_clip")
    from safetensors.torch import save_file
    ref = open_clip.create_model("ViT-B-16-SigLIP2-256").eval()
    _moved(ref)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, tmp_path / "open_clip_model.safetensors")
    (tmp_path / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": open_clip.get_model_config("ViT-B-16-SigLIP2-256"),
         "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic", "resize_mode": "squash"}}))
    model, preprocess = clip_jax.load(tmp_path / "open_clip_model.safetensors")
    assert model.config.vision.activation == "gelu" and model.config.text.activation == "gelu_tanh"
    assert preprocess.processor == "open_clip"
    images = np.random.default_rng(0).standard_normal((1, 256, 256, 3)).astype(np.float32)
    with torch.no_grad():
        want = ref.encode_image(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
    np.testing.assert_allclose(np.asarray(model.encode_image(images)), want, atol=1e-5)


def test_npz_without_a_vocabulary_says_what_to_pass(hf_folder, tmp_path):
    from clip_jax.checkpoint.big_vision import write_big_vision
    folder, hf, _ = hf_folder
    model, _ = clip_jax.load(folder)
    npz = write_big_vision(tmp_path / "siglip.npz", M.flat_params(model), model.config)
    bare, _ = clip_jax.load(npz)
    with pytest.raises(InputError, match="pass tokenizer=FILE"):
        clip_jax.get_tokenizer(bare)
    given, _ = clip_jax.load(npz, tokenizer=folder / "spiece.model")
    np.testing.assert_array_equal(clip_jax.get_tokenizer(given)(TEXTS), clip_jax.get_tokenizer(model)(TEXTS))
    tokens = clip_jax.get_tokenizer(model)(TEXTS)
    np.testing.assert_allclose(np.asarray(given.encode_text(tokens)), np.asarray(model.encode_text(tokens)),
                               atol=1e-6)


def test_tokenizer_argument_is_for_siglip(tmp_path):
    with pytest.raises(InputError, match="tokenizer= is for SigLIP"):
        clip_jax.get_tokenizer("ViT-B/32", tokenizer=tmp_path)


@pytest.mark.parametrize("target", ["model.safetensors", pytest.param("model.pt", marks=pytest.mark.slow),
                                    "model.npz", "folder"])  # slow: budget (the .pt writer is CLIP's, tested there)
def test_export_round_trips_exactly(hf_folder, tmp_path, target):
    """export -> load gives the same model (params bit for bit, same config but where the vocabulary is),
    with its vocabulary, in open_clip's, big_vision's and transformers' formats."""
    folder, _, _ = hf_folder
    model, _ = clip_jax.load(folder)
    fmt = "transformers" if target == "folder" else "torch"
    out = clip_jax.export(model, tmp_path / target, format=fmt)
    back, _ = clip_jax.load(out)
    assert type(back) is Siglip
    want, got = M.flat_params(model), M.flat_params(back)
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(want[name]), err_msg=name)
    same = ("vision", "text", "embed_dim", "layer_norm_eps", "image_mean", "image_std")
    assert all(getattr(back.config, f) == getattr(model.config, f) for f in same)
    np.testing.assert_array_equal(clip_jax.get_tokenizer(back)(TEXTS), clip_jax.get_tokenizer(model)(TEXTS))


def test_command_line_npz_with_a_vocabulary_then_classify(hf_folder, tmp_path, capsys):
    """clip-jax convert X.npz --tokenizer FILE -> a converted file carrying it; clip-jax classify with it
    prints each label's sigmoid probability, the logits' ranking."""
    from PIL import Image

    from clip_jax.checkpoint.big_vision import write_big_vision
    from clip_jax.cli import main as cli
    folder, _, _ = hf_folder
    model, _ = clip_jax.load(folder)
    npz = write_big_vision(tmp_path / "bv.npz", M.flat_params(model), model.config)
    out = tmp_path / "bv.safetensors"
    assert cli.main(["convert", str(npz), "-o", str(out), "--tokenizer", str(folder / "spiece.model")]) in (0, None)
    assert (tmp_path / "bv.tokenizer" / "spiece.model").is_file()
    image = tmp_path / "gray.png"
    Image.new("RGB", (40, 30), (120, 130, 140)).save(image)
    capsys.readouterr()
    assert cli.main(["classify", str(image), "--labels", "cat,dog,car", "--templates", "a photo of a {}.",
                     "--model", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    probs = [float(line.split("%")[0]) / 100 for line in lines[1:]]
    assert len(probs) == 3 and probs == sorted(probs, reverse=True) and not np.isclose(sum(probs), 1.0)
    tok = clip_jax.get_tokenizer(model)
    img = np.asarray(M.l2_normalize(model.encode_image(np.stack([clip_jax.load(out)[1](image)]))))
    txt = np.asarray(M.l2_normalize(model.encode_text(tok([f"a photo of a {c}." for c in ("cat", "dog", "car")]))))
    logits = np.exp(float(model.logit_scale[...])) * img @ txt.T + float(model.logit_bias[...])
    np.testing.assert_allclose(sorted(probs, reverse=True), np.sort(1 / (1 + np.exp(-logits[0])))[::-1], atol=1e-4)


def test_hub_repos_bring_their_vocabulary(hf_folder, hf_cache, tmp_path):
    """hf-hub: a transformers SigLIP repo (config.json, weights, tokenizer files) and an open_clip/timm one
    (open_clip_config.json, open_clip_model.safetensors, tokenizer files), from Hugging Face's cache."""
    from tests.test_hub import COMMIT1, fake_hub
    folder, _, _ = hf_folder
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    fake_hub(hf_cache, "google/siglip-tiny", files, COMMIT1)
    model, _ = clip_jax.load("hf-hub:google/siglip-tiny")
    reference, _ = clip_jax.load(folder)
    tokens = clip_jax.get_tokenizer(model)(TEXTS)
    np.testing.assert_array_equal(tokens, clip_jax.get_tokenizer(reference)(TEXTS))
    np.testing.assert_array_equal(np.asarray(model.encode_text(tokens)), np.asarray(reference.encode_text(tokens)))

    out = clip_jax.export(reference, tmp_path / "open_clip_model.safetensors")
    vocab = {n: (folder / n).read_bytes() for n in ("spiece.model", "tokenizer_config.json") if (folder / n).exists()}
    fake_hub(hf_cache, "timm/tiny-siglip", {"open_clip_config.json": (tmp_path / "open_clip_config.json").read_bytes(),
                                            "open_clip_model.safetensors": out.read_bytes(), **vocab}, COMMIT1)
    timm, _ = clip_jax.load("hf-hub:timm/tiny-siglip", cache_dir=tmp_path / "cache")
    assert type(timm) is Siglip and timm.config.tokenizer is not None
    np.testing.assert_array_equal(np.asarray(timm.encode_text(tokens)), np.asarray(reference.encode_text(tokens)))


def test_embed_then_search_with_a_siglip(hf_folder, tmp_path, capsys):
    """clip-jax embed (images and captions) and search by text with a converted SigLIP: the best hit of a
    caption's own text is its image's row, scored as the model scores it."""
    pytest.importorskip("pyarrow")
    from PIL import Image

    from clip_jax.cli import main as cli
    from clip_jax.jobs.embed import embed
    folder, _, _ = hf_folder
    model_file = clip_jax.convert(folder, tmp_path / "siglip.safetensors")
    images = tmp_path / "images"
    images.mkdir()
    colors = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220)}
    for name, rgb in colors.items():
        Image.new("RGB", (48, 40), rgb).save(images / f"{name}.png")
    embed([str(images)], tmp_path / "emb", str(model_file), batch_size=4)
    img = np.load(tmp_path / "emb" / "img_emb" / "img_emb_0.npy").astype(np.float32)
    model, preprocess = clip_jax.load(model_file)
    want = np.asarray(M.l2_normalize(model.encode_image(np.stack([preprocess(images / f"{n}.png") for n in
                                                                   sorted(colors)]))))
    np.testing.assert_allclose(img, want, atol=2e-3)  # stored float16
    capsys.readouterr()
    assert cli.main(["search", str(tmp_path / "emb"), "a photo of red", "-k", "3", "--json"]) in (0, None)
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    tokens = clip_jax.get_tokenizer(model)(["a photo of red"])
    query = np.asarray(M.l2_normalize(model.encode_text(tokens)))[0]
    assert [h["score"] for h in hits] == pytest.approx(sorted(img @ query, reverse=True), abs=2e-3)


def test_zeroshot_eval_ranks_by_the_sigmoid_logits(hf_folder, tmp_path):
    """clip_jax.jobs.eval's zero-shot classification of a SigLIP: its acc1 is the share of images whose
    largest logit exp(t) * cos + b (the class's sigmoid probability) is their label's, as CLIP_benchmark
    ranks sigmoid models."""
    import clip_jax.jobs.eval as ev
    from clip_jax import synthetic
    from clip_jax.jobs import eval_data
    folder, _, _ = hf_folder
    images, samples = synthetic.generate(12, seed=3, image_size=40)
    for i, (im, s) in enumerate(zip(images, samples)):
        (tmp_path / "data" / "test" / s.label).mkdir(parents=True, exist_ok=True)
        im.save(tmp_path / "data" / "test" / s.label / f"{i:03d}.png")
    model, preprocess = clip_jax.load(folder)
    data = eval_data.classification_data(tmp_path / "data", "test")
    templates = ["a photo of a {}."]
    result = ev.zeroshot_classification(model, preprocess, data, templates, batch_size=8, progress=False)
    tok = clip_jax.get_tokenizer(model)
    txt = np.asarray(M.l2_normalize(model.encode_text(tok([templates[0].format(c) for c in data.classnames]))))
    img = np.asarray(M.l2_normalize(model.encode_image(np.stack([preprocess(p) for p in data.images]))))
    logits = np.exp(float(model.logit_scale[...])) * img @ txt.T + float(model.logit_bias[...])
    assert result["acc1"] == pytest.approx(np.mean(logits.argmax(1) == np.asarray(data.labels)))
