"""load() by name, from the Hugging Face Hub and from files: the registry, verified downloads from a
local server on 127.0.0.1, a fake Hugging Face cache read offline, the converted-params cache.

The weights are small random open_clip models (one layer a tower); features are compared with open_clip
to 2e-6, as in test_parity.py. No test touches the internet.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib.util
import json
import math
import os
import time
from pathlib import Path

import jax
import numpy as np
import open_clip
import pytest
import torch

import clip_jax
import clip_jax.hub as hub
from clip_jax import pretrained
from clip_jax.checkpoint import store
from clip_jax.config import OPENAI_MEAN, config_from_open_clip
from clip_jax.pretrained import OPENAI, Pretrained, resolve, with_url

from .local_server import QuietHandler, closed_port, count_connections, serve as serve_http
from .tiny import OPEN_CLIP_TINY as TINY

FEATURE_ATOL = 2e-6  # as test_parity.py: float32 rounding over the layers
ROOT = Path(__file__).resolve().parents[1]
TOKENS = open_clip.tokenize(["a photo of a dog", "a diagram"]).numpy().astype(np.int32)
INCEPTION = (0.5, 0.5, 0.5)


def open_clip_tiny(quick_gelu: bool, seed: int = 0, **vision) -> torch.nn.Module:
    """open_clip's CLIP of OPEN_CLIP_TINY (vision fields changed), LayerNorms moved off their init."""
    cfg = copy.deepcopy(TINY)
    cfg["vision_cfg"].update(vision)
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(**cfg, quick_gelu=quick_gelu).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.add_(0.2 * torch.randn(m.weight.shape))
                m.bias.add_(0.2 * torch.randn(m.bias.shape))
        model.logit_scale.fill_(math.log(50.0))
    return model


def zip_bytes(model: torch.nn.Module, tmp_path: Path) -> bytes:
    path = tmp_path / "tmp.pt"
    torch.save(model.state_dict(), path)
    return path.read_bytes()


def safetensors_bytes(model: torch.nn.Module) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in model.state_dict().items()})


def assert_matches(model: clip_jax.CLIP, ref: torch.nn.Module):
    size = model.config.vision.image_size
    images = np.random.RandomState(0).randn(2, size, size, 3).astype(np.float32)
    with torch.no_grad():
        want_img = ref.encode_image(torch.from_numpy(images).permute(0, 3, 1, 2), normalize=True).numpy()
        want_txt = ref.encode_text(torch.from_numpy(TOKENS).long(), normalize=True).numpy()
    with jax.default_matmul_precision("highest"):
        img = clip_jax.l2_normalize(model.encode_image(images))
        txt = clip_jax.l2_normalize(model.encode_text(TOKENS))
    np.testing.assert_allclose(img, want_img, atol=FEATURE_ATOL, rtol=0)
    np.testing.assert_allclose(txt, want_txt, atol=FEATURE_ATOL, rtol=0)


# --- the registry ---------------------------------------------------------------------------------


def test_available_models_lists_openai_first():
    names = clip_jax.available_models()
    assert names[:9] == ["RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B/32", "ViT-B/16", "ViT-L/14",
                         "ViT-L/14@336px"]
    for name in ("ViT-B-32/laion2b_s34b_b79k", "ViT-B-32/datacomp_xl_s13b_b90k", "ViT-B-32/laion400m_e32",
                 "ViT-L-14/laion2b_s32b_b82k", "ViT-H-14/laion2b_s32b_b79k", "ViT-g-14/laion2b_s34b_b88k",
                 "ViT-bigG-14/laion2b_s39b_b160k", "ViT-B-16-plus-240/laion400m_e32"):
        assert name in names
        assert resolve(name).name == name
    assert len(names) == len(set(names))


def test_openai_entries_have_sha256_urls():
    """OpenAI's URLs carry the file's SHA-256 as their second-to-last path segment."""
    for name, arch in OPENAI.items():
        entry = resolve(name)
        assert entry.model == arch and entry.tag == "openai" and entry.config() is None  # inferred, as clip.load
        assert entry.url.startswith("https://openaipublic.") and entry.url.split("/")[-2] == entry.sha256
        assert len(entry.sha256) == 64


@pytest.mark.parametrize("spelling",
                         ["ViT-L/14@336px", "ViT-L-14-336px", "ViT-L-14-336/openai", ("ViT-L-14-336", "openai")])
def test_openai_spellings(spelling):
    assert resolve(spelling).name == "ViT-L/14@336px"


@pytest.mark.parametrize("spelling", ["ViT-B-32/laion2b_s34b_b79k", "ViT-B-32:laion2b_s34b_b79k",
                                      ("ViT-B-32", "laion2b_s34b_b79k"), "ViT-B/32/LAION2B-s34B-b79K"])
def test_open_clip_spellings(spelling):
    entry = resolve(spelling)
    want = ("ViT-B-32", "laion2b_s34b_b79k", "laion/CLIP-ViT-B-32-laion2B-s34B-b79K")
    assert (entry.model, entry.tag, entry.hf_hub) == want


def test_tags_carry_their_preprocessing_and_activation():
    assert resolve("ViT-L-14/laion2b_s32b_b82k").config().image_mean == INCEPTION  # open_clip's INCEPTION_MEAN
    assert resolve("ViT-L-14/laion2b_s32b_b82k").config().image_std == INCEPTION
    assert resolve("ViT-B-32/laion2b_s34b_b79k").config().image_mean == OPENAI_MEAN
    assert resolve("ViT-H-14/dfn5b").config().resize_mode == "squash"
    # QuickGELU follows the weights: the tag's flag, under either architecture name.
    assert resolve("ViT-B-32/laion400m_e32").config().activation == "quick_gelu"
    assert resolve("ViT-B-32-quickgelu/laion400m_e32").config().activation == "quick_gelu"
    assert resolve("ViT-B-32/laion2b_s34b_b79k").config().activation == "gelu"
    assert resolve("ViT-B-32-quickgelu/laion2b_s34b_b79k") is None  # as open_clip: only QuickGELU tags
    bigg = resolve("ViT-bigG-14/laion2b_s39b_b160k").config()
    assert (bigg.vision.heads, bigg.vision.mlp_width, bigg.vision.layers) == (16, 8192, 48)


def test_registry_is_open_clips_table():
    """clip_jax/assets/pretrained.json is what tools/pretrained_table.py makes from the installed open_clip,
    and every one of its tags resolves."""
    spec = importlib.util.spec_from_file_location("pretrained_table", ROOT / "tools" / "pretrained_table.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    data = tool.table()
    committed = (ROOT / "clip_jax" / "assets" / "pretrained.json").read_text()
    assert tool.render(data) == committed, "out of date: run python tools/pretrained_table.py"
    for e in data["pretrained"]:
        oc = open_clip.get_pretrained_cfg(e["model"], e["tag"])
        assert resolve((e["model"], e["tag"])).quick_gelu == bool(oc.get("quick_gelu"))


def test_unknown_names():
    with pytest.raises(ValueError,
                       match="unknown model 'ViT-B-32/laion2b_s34b'.*did you mean 'ViT-B-32/laion2b_s34b_b79k'"):
        clip_jax.load("ViT-B-32/laion2b_s34b")
    with pytest.raises(FileNotFoundError, match="missing.pt: no such file"):
        clip_jax.load("missing.pt")
    with pytest.raises(ValueError, match="unknown pretrained model"):
        clip_jax.load(("ViT-B-32", "nope"))


# --- downloads by name, from a local server -------------------------------------------------------


class Files(QuietHandler):
    files: dict[str, bytes] = {}  # by a path that holds the body's SHA-256 (serve): the same for every test

    def do_GET(self):
        self.count()
        body = Files.files.get(self.path)
        if body is None:
            return self.send_error(404)
        self.send_body(body)


@pytest.fixture
def server(hits):
    with serve_http(Files, hits) as url:
        yield url


def serve(server: str, data: bytes, name: str = "ViT-B-32.pt") -> tuple[str, str]:
    """Put `data` on the server under OpenAI's URL layout. -> (url, sha256)."""
    sha = hashlib.sha256(data).hexdigest()
    Files.files[f"/clip/models/{sha}/{name}"] = data
    return f"{server}/clip/models/{sha}/{name}", sha


def test_load_openai_name_downloads_verifies_and_caches(server, hits, tmp_path, monkeypatch):
    """load("ViT-B/32") fetches the registry's URL (here a local mirror), checks the SHA-256, converts once
    and caches the converted params beside the download; a changed source is converted again."""
    ref = open_clip_tiny(quick_gelu=True)
    url, sha = serve(server, zip_bytes(ref, tmp_path))
    table = pretrained.registry()
    monkeypatch.setitem(table, ("ViT-B-32", "openai"), with_url(table[("ViT-B-32", "openai")], url, sha))
    cache = tmp_path / "cache"

    model, preprocess = clip_jax.load("ViT-B/32", cache_dir=cache, progress=False)
    assert model.config.activation == "quick_gelu" and preprocess.mean == OPENAI_MEAN
    assert_matches(model, ref)
    converted = cache / f"ViT-B-32.{sha[:16]}.safetensors"
    assert sorted(p.name for p in cache.iterdir()) == sorted(["ViT-B-32.pt", converted.name])
    assert store.load(converted)[0] == model.config

    # Second load: no request, no conversion.
    monkeypatch.setattr(hub, "read_params", lambda *a, **k: pytest.fail("converted again"))
    model2, _ = clip_jax.load("ViT-B-32", cache_dir=cache, progress=False)
    assert hits[url.removeprefix(server)] == 1
    assert_matches(model2, ref)
    monkeypatch.undo()

    # The source changes (a new release at a new URL and digest): downloaded and converted again, and the
    # stale converted file is removed.
    ref2 = open_clip_tiny(quick_gelu=True, seed=1)
    url2, sha2 = serve(server, zip_bytes(ref2, tmp_path))
    monkeypatch.setitem(table, ("ViT-B-32", "openai"), with_url(table[("ViT-B-32", "openai")], url2, sha2))
    with pytest.warns(UserWarning, match="doesn't match"):
        model3, _ = clip_jax.load("ViT-B/32", cache_dir=cache, progress=False)
    assert_matches(model3, ref2)
    assert sorted(p.name for p in cache.iterdir()) == sorted(["ViT-B-32.pt", f"ViT-B-32.{sha2[:16]}.safetensors"])


def test_load_checksum_failure_leaves_cache_empty(server, tmp_path, monkeypatch):
    url, sha = serve(server, b"not the published bytes", name="RN50.pt")
    table = pretrained.registry()
    entry = with_url(table[("RN50", "openai")], url, "0" * 64)
    with pytest.raises(clip_jax.download.ChecksumError, match="SHA-256 mismatch"):
        clip_jax.load(entry, cache_dir=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


# --- the Hugging Face Hub, from a fake cache, offline ---------------------------------------------


def fake_hub(cache: Path, repo_id: str, files: dict[str, bytes], commit: str) -> None:
    """Hugging Face's cache layout: refs/main -> commit; snapshots/<commit>/<file> -> ../../blobs/<sha256>."""
    base = cache / f"models--{repo_id.replace('/', '--')}"
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / "main").write_text(commit)
    for name, data in files.items():
        blob = base / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = base / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))


def open_clip_config(**preprocess) -> bytes:
    cfg = {"model_cfg": TINY, "preprocess_cfg": {"mean": list(INCEPTION), "std": list(INCEPTION), **preprocess}}
    return json.dumps(cfg).encode()


COMMIT1, COMMIT2 = "1" * 40, "2" * 40


def test_hf_hub_safetensors(hf_cache, tmp_path):
    """open_clip_config.json gives the architecture (exact GELU here, which the weights can't show) and
    the preprocessing; the weights come from open_clip_model.safetensors."""
    ref = open_clip_tiny(quick_gelu=False)
    fake_hub(hf_cache, "org/tiny", {"open_clip_config.json": open_clip_config(resize_mode="squash"),
                                    "open_clip_model.safetensors": safetensors_bytes(ref)}, COMMIT1)
    model, preprocess = clip_jax.load("hf-hub:org/tiny", cache_dir=tmp_path / "c")
    assert model.config.activation == "gelu"
    assert (preprocess.mean, preprocess.resize_mode, preprocess.n_px) == (INCEPTION, "squash", 64)
    assert_matches(model, ref)
    assert len(list((tmp_path / "c" / "hf-hub" / "org--tiny").glob("open_clip_model.*.safetensors"))) == 1


def test_hf_hub_bin_fallback_revision_and_change(hf_cache, tmp_path, monkeypatch):
    """Without a .safetensors the .bin is read; "@revision" picks a snapshot; a new snapshot (new blob)
    is converted again, an unchanged one is not."""
    ref1, ref2 = open_clip_tiny(quick_gelu=False), open_clip_tiny(quick_gelu=False, seed=1)
    cfg = open_clip_config()
    files = {"open_clip_config.json": cfg, "open_clip_pytorch_model.bin": zip_bytes(ref1, tmp_path)}
    fake_hub(hf_cache, "org/bin", files, COMMIT1)
    cache = tmp_path / "c"
    assert_matches(clip_jax.load("hf-hub:org/bin", cache_dir=cache)[0], ref1)
    files = {"open_clip_config.json": cfg, "open_clip_pytorch_model.bin": zip_bytes(ref2, tmp_path)}
    fake_hub(hf_cache, "org/bin", files, COMMIT2)  # refs/main now points here
    assert_matches(clip_jax.load("hf-hub:org/bin", cache_dir=cache)[0], ref2)
    converted = sorted((cache / "hf-hub" / "org--bin").iterdir())
    assert len(converted) == 1  # the first conversion, now stale, was removed
    monkeypatch.setattr(hub, "read_params", lambda *a, **k: pytest.fail("converted again"))
    assert_matches(clip_jax.load(f"hf-hub:org/bin@{COMMIT2}", cache_dir=cache)[0], ref2)


def test_hf_hub_errors(hf_cache, tmp_path):
    with pytest.raises(FileNotFoundError, match="hf-hub:org/absent: no open_clip_config.json"):
        clip_jax.load("hf-hub:org/absent", cache_dir=tmp_path)
    fake_hub(hf_cache, "org/noweights", {"open_clip_config.json": open_clip_config()}, COMMIT1)
    with pytest.raises(FileNotFoundError, match="hf-hub:org/noweights: no weights in the local cache"):
        clip_jax.load("hf-hub:org/noweights", cache_dir=tmp_path)
    siglip = json.dumps({"model_cfg": {**TINY, "init_logit_bias": -10}}).encode()
    fake_hub(hf_cache, "org/siglip", {"open_clip_config.json": siglip}, COMMIT1)
    with pytest.raises(ValueError, match="hf-hub:org/siglip: not supported: init_logit_bias=-10"):
        clip_jax.load("hf-hub:org/siglip", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="expected hf-hub:org/repo"):
        clip_jax.load("hf-hub:no-slash", cache_dir=tmp_path)


def test_open_clip_tag_from_the_hub(hf_cache, tmp_path, monkeypatch):
    """A tag whose weights live on the Hub ("ViT-B-32/laion2b_s34b_b79k"; its architecture shrunk to the
    tiny one here): the tag's preprocessing and activation, the weights from the Hub cache."""
    table = pretrained.registry()
    key = ("ViT-B-32", "laion2b_s34b_b79k")
    monkeypatch.setitem(table, key, dataclasses.replace(table[key], model_cfg=TINY, preprocess={"mean": INCEPTION}))
    ref = open_clip_tiny(quick_gelu=False)
    fake_hub(hf_cache, table[key].hf_hub, {"open_clip_model.safetensors": safetensors_bytes(ref)}, COMMIT1)
    model, preprocess = clip_jax.load("ViT-B-32/laion2b_s34b_b79k", cache_dir=tmp_path)
    assert model.config.activation == "gelu" and preprocess.mean == INCEPTION
    assert_matches(model, ref)


# --- files ----------------------------------------------------------------------------------------


def test_file_with_open_clip_config_beside_it(tmp_path):
    """A checkpoint in a Hub snapshot (or open_clip local-dir) layout takes its config from the
    open_clip_config.json beside it; inferring from the weights alone would take QuickGELU."""
    ref = open_clip_tiny(quick_gelu=False)
    (tmp_path / "open_clip_model.safetensors").write_bytes(safetensors_bytes(ref))
    (tmp_path / "open_clip_config.json").write_bytes(open_clip_config())
    model, preprocess = clip_jax.load(tmp_path / "open_clip_model.safetensors")
    assert model.config.activation == "gelu" and preprocess.mean == INCEPTION
    assert_matches(model, ref)


def test_file_with_explicit_config(tmp_path):
    ref = open_clip_tiny(quick_gelu=False, head_width=32)  # 4 heads: not what width // 64 infers
    path = tmp_path / "model.pt"
    path.write_bytes(zip_bytes(ref, tmp_path))
    inferred, _ = clip_jax.load(path)
    assert (inferred.config.activation, inferred.config.vision.heads) == ("quick_gelu", 2)
    cfg = copy.deepcopy(TINY)
    cfg["vision_cfg"]["head_width"] = 32
    model, _ = clip_jax.load(path, config=config_from_open_clip(cfg))
    assert_matches(model, ref)
    with pytest.raises(ValueError, match="config= is for checkpoint files"):
        clip_jax.load("ViT-B/32", config=model.config)


def test_image_size_needs_a_vit(tmp_path):
    rn = open_clip.model.CLIP(
        embed_dim=64, vision_cfg={"image_size": 64, "layers": [1, 1, 1, 1], "width": 16}, text_cfg=TINY["text_cfg"]
    )
    path = tmp_path / "rn.pt"
    torch.save(rn.state_dict(), path)
    with pytest.raises(ValueError, match="only a ViT's resolution can be changed"):
        clip_jax.load(path, image_size=96)


def test_pretrained_entry_needs_a_source():
    with pytest.raises(ValueError, match="neither a url nor an hf_hub"):
        clip_jax.load(Pretrained(model="ViT-B-32", tag="x"))


def test_converted_file_keeps_its_config(tmp_path):
    from clip_jax.checkpoint.torch_names import from_torch

    ref = open_clip_tiny(quick_gelu=False)
    config = config_from_open_clip(TINY)
    _, params = from_torch({k: v.numpy() for k, v in ref.state_dict().items()}, config)
    path = tmp_path / "tiny.safetensors"
    store.save(path, params, config)
    model, _ = clip_jax.load(path)
    assert model.config == config
    assert_matches(model, ref)
    with pytest.raises(ValueError, match="carries its own config"):
        clip_jax.load(path, config=dataclasses.replace(config, activation="quick_gelu"))


@pytest.fixture
def network_down(hf_cache, monkeypatch):
    """No offline mode, and neither the Hub nor any URL a test names reachable: the Hub's endpoint is a
    closed port on 127.0.0.1 (hf_cache blocks every other host). -> (endpoint, the connections made)."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    endpoint = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(hub, "_probes", {})
    return endpoint, count_connections(monkeypatch)


def test_openai_url_unreachable_falls_back_to_the_hub(server, network_down, hf_cache, tmp_path):
    """OpenAI's entries also name the Hub copy open_clip keeps (timm/...openai); a URL that can't be
    fetched (here a 404) falls back to it, with a warning naming both hosts. A checksum mismatch does not.
    The Hub can't be reached either: its cached copy loads, after one try to connect."""
    endpoint, connections = network_down
    ref = open_clip_tiny(quick_gelu=True)
    fake_hub(hf_cache, "timm/tiny.openai", {"open_clip_model.safetensors": safetensors_bytes(ref)}, COMMIT1)
    entry = dataclasses.replace(resolve("ViT-B/32"), url=f"{server}/gone/ViT-B-32.pt", hf_hub="timm/tiny.openai")
    hub_host = endpoint.removeprefix("http://")
    announced = rf"^ViT-B/32: {server}/gone/ViT-B-32.pt: HTTP 404 .*; loading it from the Hugging Face Hub instead " \
                rf"\({hub_host}: timm/tiny.openai\)$"
    with pytest.warns(hub.SourceFallbackWarning, match=announced):
        model, _ = clip_jax.load(entry, cache_dir=tmp_path, progress=False)
    assert model.config.activation == "quick_gelu"
    assert_matches(model, ref)
    assert [c[:2] for c in connections] == [("127.0.0.1", int(server.rsplit(":", 1)[1])),
                                            ("127.0.0.1", int(hub_host.rsplit(":", 1)[1]))]
    url, _ = serve(server, b"tampered", name="ViT-B-16.pt")
    with pytest.raises(clip_jax.download.ChecksumError):
        clip_jax.load(dataclasses.replace(entry, url=url), cache_dir=tmp_path, progress=False)


def test_no_network_fails_fast_naming_each_host_and_the_ways_out(network_down, tmp_path):
    """load("ViT-B/32") with no network: one connection to OpenAI's host, a warning naming the fallback,
    one to the Hub's, then one line naming both hosts and the ways out, in well under the minutes that
    retrying with backoff would take."""
    endpoint, connections = network_down
    hub_host, url_port = endpoint.removeprefix("http://"), closed_port()
    entry = dataclasses.replace(resolve("ViT-B/32"), url=f"http://127.0.0.1:{url_port}/x/ViT-B-32.pt",
                                hf_hub="timm/absent.openai")
    start = time.monotonic()
    with pytest.warns(hub.SourceFallbackWarning) as warned, pytest.raises(clip_jax.download.UnreachableError) as e:
        clip_jax.load(entry, cache_dir=tmp_path / "c", progress=False)
    assert time.monotonic() - start < 5
    assert [str(w.message) for w in warned] == [
        f"ViT-B/32: can't reach 127.0.0.1:{url_port} (Connection refused); loading it from the Hugging Face Hub "
        f"instead ({hub_host}: timm/absent.openai)"]
    assert warned[0].filename == __file__  # shown at the caller's line, not inside clip_jax
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"ViT-B/32: can't reach 127.0.0.1:{url_port} (Connection refused) nor {hub_host} "
                              "(Connection refused) for timm/absent.openai: load a local file instead, copy "
                              f"ViT-B-32.pt into {tmp_path / 'c'} (set by CLIP_JAX_CACHE), or point HF_HUB_CACHE at")
    assert "HF_HUB_OFFLINE=1" in message
    assert [c[:2] for c in connections] == [("127.0.0.1", url_port), ("127.0.0.1", int(hub_host.split(":")[1]))]
    assert not (tmp_path / "c").exists() or list((tmp_path / "c").iterdir()) == []


def test_no_network_hub_repo(network_down, hf_cache, tmp_path):
    """An hf-hub: repo with no network: one connection, then the Hugging Face cache; what it lacks is one
    line naming the host, the cache and the ways out."""
    endpoint, connections = network_down
    hub_host = endpoint.removeprefix("http://")
    ref = open_clip_tiny(quick_gelu=False)
    fake_hub(hf_cache, "org/tiny", {"open_clip_config.json": open_clip_config(),
                                    "open_clip_model.safetensors": safetensors_bytes(ref)}, COMMIT1)
    start = time.monotonic()
    assert_matches(clip_jax.load("hf-hub:org/tiny", cache_dir=tmp_path)[0], ref)
    with pytest.raises(clip_jax.download.UnreachableError) as e:
        clip_jax.load("hf-hub:org/absent", cache_dir=tmp_path)
    assert time.monotonic() - start < 5
    assert str(e.value) == (
        f"hf-hub:org/absent: can't reach {hub_host} (Connection refused), and the Hugging Face cache ({hf_cache}) "
        "doesn't hold it: load a local file instead, or point HF_HUB_CACHE at a Hugging Face cache holding "
        "org/absent (HF_HUB_OFFLINE=1 then skips the network)")
    assert len(connections) == 1  # the probe's answer served both loads


def test_cached_openai_file_loads_without_any_connection(server, network_down, tmp_path, monkeypatch):
    """The file in CLIP_JAX_CACHE: load("ViT-B/32") makes no connection at all."""
    ref = open_clip_tiny(quick_gelu=True)
    url, sha = serve(server, zip_bytes(ref, tmp_path))
    table = pretrained.registry()
    monkeypatch.setitem(table, ("ViT-B-32", "openai"), with_url(table[("ViT-B-32", "openai")], url, sha))
    monkeypatch.setenv("CLIP_JAX_CACHE", str(tmp_path / "env"))
    clip_jax.load("ViT-B/32", progress=False)  # fills the cache
    _, connections = network_down
    connections.clear()
    unreachable = f"http://127.0.0.1:{closed_port()}/{sha}/ViT-B-32.pt"
    monkeypatch.setitem(table, ("ViT-B-32", "openai"), with_url(table[("ViT-B-32", "openai")], unreachable, sha))
    assert_matches(clip_jax.load("ViT-B/32", progress=False)[0], ref)
    assert connections == []


def test_offline_mode_skips_openai_url(server, hits, hf_cache, tmp_path):
    """HF_HUB_OFFLINE=1 holds for OpenAI's URLs too: no request; the Hub's cached copy, announced."""
    ref = open_clip_tiny(quick_gelu=True)
    fake_hub(hf_cache, "timm/tiny.openai", {"open_clip_model.safetensors": safetensors_bytes(ref)}, COMMIT1)
    url, sha = serve(server, zip_bytes(ref, tmp_path))
    entry = dataclasses.replace(resolve("ViT-B/32"), url=url, sha256=sha, hf_hub="timm/tiny.openai")
    with pytest.warns(UserWarning, match=r"ViT-B-32\.pt: no verified copy in the cache .* and offline; loading it "
                                         r"from the Hugging Face cache instead \(timm/tiny\.openai\)"):
        assert_matches(clip_jax.load(entry, cache_dir=tmp_path, progress=False)[0], ref)
    assert hits == {}


def test_load_when_the_cache_has_no_room_for_the_converted_copy(server, tmp_path, monkeypatch):
    """The download fits, the converted copy doesn't: one warning naming the file, the model loads,
    and nothing half-written stays in the cache."""
    from safetensors import SafetensorError

    ref = open_clip_tiny(quick_gelu=True, seed=3)
    url, sha = serve(server, zip_bytes(ref, tmp_path), name="RN101.pt")
    entry = with_url(pretrained.registry()[("RN101", "openai")], url, sha)

    def full(tensors, filename, metadata=None):  # what safetensors raises on ENOSPC
        Path(filename).write_bytes(b"part")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(store, "save_file", full)
    with pytest.warns(UserWarning, match=r"no space left on device.*loading without caching"):
        model, _ = clip_jax.load(entry, cache_dir=tmp_path / "cache", progress=False)
    assert_matches(model, ref)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["RN101.pt"]
