"""clip_jax.load: a model and its preprocessing from a name, the Hugging Face Hub, or a file.

    load("ViT-B/32")                                  OpenAI's weights, from OpenAI's URL, SHA-256 verified
    load("ViT-B-32/laion2b_s34b_b79k")                an open_clip pretrained tag (see available_models())
    load("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K")   any open_clip repo on the Hub (@revision optional)
    load("ViT-B-32.pt"), load("model.safetensors")    a PyTorch checkpoint or a converted clip_jax file
    load("folder/"), load("hf-hub:openai/clip-vit-base-patch32")   transformers' format (config.json):
                                                      a CLIPModel, or a single tower (towers.py)
    load("hf-hub:org/repo", subfolder="text_encoder_2")            a folder inside a repo or a folder

Downloads land in the cache (cache_dir=, else $CLIP_JAX_CACHE, else ~/.cache/clip_jax); Hub files in
Hugging Face's own cache (HF_HUB_CACHE, HF_HUB_OFFLINE honoured, for OpenAI's URLs too). A host that can't
be connected to is tried once, briefly (download.CONNECT_TIMEOUT), then the caches are used; if they don't
hold the files, one line names the hosts tried and the ways out. A fallback to another host is a warning.
The converted params are cached as a clip_jax .safetensors named after the source's SHA-256, so a second
load skips the conversion and a changed source is converted again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import time
import traceback
import urllib.parse
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from huggingface_hub import constants as hf_constants, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError

from . import pretrained
from .checkpoint import Checkpoint, check_param_dtypes, hf_format, read_params, siglip_hf, store
from .checkpoint.config_source import (
    OPEN_CLIP_CONFIG,
    ConfigArg,
    ConfigSource,
    read_open_clip_config,
    resolve_config,
)
from .checkpoint.torch_files import LazyArray
from .checkpoint.vocabulary import with_vocabulary
from .config import CLIPConfig
from .download import (
    ENV_CACHE,
    ChecksumError,
    DownloadError,
    UnreachableError,
    default_cache_dir,
    download,
    host_of,
    reach,
    sha256_file,
)
from .errors import InputError, SourceFallbackWarning
from .families import family_of
from .model import CLIP, build
from .pos_embed import resize_pos_embed
from .pretrained import Pretrained
from .siglip_config import VOCABULARY_FILES, SiglipConfig

HF_PREFIX = "hf-hub:"
HF_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # open_clip's order
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")

Params = dict[str, np.ndarray]
_OPENAI_WEIGHTS = ConfigSource(None, "OpenAI's weights (clip_jax registry)")


def available_models() -> list[str]:
    """The names `load` downloads: OpenAI's nine models first, then open_clip's tags as "arch/tag"."""
    return pretrained.available_models()


def load(
    name_or_path: str | os.PathLike | tuple[str, str] | Pretrained,
    *,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    attention: str | None = None,
    config: ConfigArg = None,
    model: str | None = None,
    image_size: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    subfolder: str | None = None,
    tokenizer: str | os.PathLike | None = None,
) -> tuple[CLIP, Callable]:
    """-> (model, preprocess), like `clip.load`.

    name_or_path: a name from available_models() (or another accepted spelling, see clip_jax.pretrained),
      an (architecture, tag) pair, "hf-hub:org/repo[@revision]", a Pretrained entry, or a file: a
      converted clip_jax .safetensors, or a PyTorch checkpoint (OpenAI's TorchScript .pt, open_clip's
      .bin/.pt/.safetensors) converted in memory; or transformers' format: a folder with config.json
      and model.safetensors / pytorch_model.bin / flax_model.msgpack (whole or sharded), or an
      "hf-hub:" repo holding one (the repo's format is found from its files). A text-only or
      vision-only checkpoint loads as a clip_jax.TextTower or VisionTower.
    subfolder: the folder inside the repo (or the local folder) that holds the checkpoint, e.g.
      "text_encoder_2" in a Stable Diffusion XL repository.
    config: the architecture of a PyTorch checkpoint file, for what its shapes don't show (exact GELU,
      head width, pooling): a CLIPConfig, an open_clip config dict or JSON file (open_clip_config.json
      or a bare model config). model: instead, an open_clip architecture name ("ViT-B-32",
      "ViT-B-32-quickgelu", ...). Default: an open_clip_config.json beside the file if there is one,
      else inferred as OpenAI's build_model does (QuickGELU, with a warning unless the file is one of
      OpenAI's TorchScript archives). The same rules as clip_jax.convert.
    image_size: run a ViT at another resolution; its positional embedding is resized bicubically as
      open_clip's resize_pos_embed does (see model.resize_pos_embed).
    dtype: compute dtype; param_dtype: storage dtype.
    tokenizer: a SigLIP's vocabulary (a spiece.model or tokenizer.json, or a checkpoint folder) where the
      checkpoint came without one (a big_vision .npz); by default the one its folder or repo ships, or
      the one beside the file. clip_jax.get_tokenizer(model) then tokenizes with it.
    SigLIP checkpoints load as clip_jax.Siglip: transformers' SiglipModel folders and hf-hub: repos,
      open_clip/timm's (open_clip_config.json; names like "ViT-B-16-SigLIP" as model=), big_vision .npz.
    preprocess: PIL image -> float32 [n_px, n_px, 3], with the weights' own mean, std, resize mode and
      interpolation.
    """
    config, params, kind, projection, _ = read_any(
        name_or_path, config=config, model=model, cache_dir=cache_dir, progress=progress, subfolder=subfolder)
    if tokenizer is not None:
        config = with_vocabulary(config, None, tokenizer)
    if image_size is not None:
        config, params = with_image_size(config, params, image_size)
    # Each weight read (or, already in memory, handed over) as build places it, then let go: the model's
    # arrays are the only full copy, at most one tensor more at any time.
    params = {k: v if isinstance(v, LazyArray) else LazyArray.once(np.asarray(v)) for k, v in params.items()}
    family = family_of(config)
    model = build(config, params, dtype=dtype, param_dtype=param_dtype, attention=attention,
                  **family.build_args(kind, projection))
    return model, family.transform(config)


def get_tokenizer(name_or_path: Any, *, tokenizer: str | os.PathLike | None = None,
                  cache_dir: str | os.PathLike | None = None, subfolder: str | None = None) -> Callable:
    """The tokenizer of a model (open_clip's get_tokenizer): `tok(texts) -> int32 [N, context_length]`,
    exactly as the checkpoint's own reference tokenizes. name_or_path: a model (its config names the
    vocabulary), a config, or anything `load` takes (read for its config only: a safetensors file's
    header, a folder's config.json; a pretrained name's registry entry; a hub repo's files are fetched).
    CLIP: OpenAI's BPE; SigLIP: its SentencePiece or Gemma vocabulary with its reference's settings.
    tokenizer: a SigLIP vocabulary file or folder, for a checkpoint without one."""
    config = getattr(name_or_path, "config", None)
    if config is None and isinstance(name_or_path, (CLIPConfig, SiglipConfig)):
        config = name_or_path
    named = isinstance(name_or_path, tuple) or isinstance(name_or_path, str) and not (
        Path(name_or_path).exists() or name_or_path.startswith(HF_PREFIX))
    entry = pretrained.resolve(name_or_path) if config is None and named else None
    if entry is not None:  # the registry's models are CLIPs: OpenAI's BPE at 77 tokens
        config = entry.config() or CLIPConfig()
    if config is None:
        config = read_any(name_or_path, cache_dir=cache_dir, progress=False, subfolder=subfolder).config
    config = with_vocabulary(config, None, tokenizer)
    return family_of(config).tokenizer(config)


def load_params(
    name_or_path: str | os.PathLike | tuple[str, str] | Pretrained,
    *,
    config: ConfigArg = None,
    model: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    subfolder: str | None = None,
) -> tuple[CLIPConfig, Params]:
    """What `load` builds a full CLIP from: (config, flat clip_jax params as numpy arrays). A single
    tower is refused (load builds it)."""
    checkpoint = read_any(name_or_path, config=config, model=model, cache_dir=cache_dir, progress=progress,
                          subfolder=subfolder)
    if checkpoint.kind != "clip":
        raise InputError(f"{name_or_path}: a single {checkpoint.kind} tower; clip_jax.load builds it "
                         "(load_params gives the params of full CLIP models)")
    return checkpoint.config, {k: np.asarray(v) for k, v in checkpoint.params.items()}


def read_any(
    name_or_path: str | os.PathLike | tuple[str, str] | Pretrained,
    *,
    config: ConfigArg = None,
    model: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    subfolder: str | None = None,
) -> Checkpoint:
    """Anything `load` takes -> Checkpoint (config, params, kind, projection, origin). Every source's params
    are checked here to be floating point before anything is built from them (CheckpointError naming the
    tensor and its dtype). A safetensors file's params are LazyArrays (torch_files): their names, shapes
    and dtypes from its header, each tensor read (np.asarray) when it is used."""
    checkpoint = _read_any(name_or_path, config, model, cache_dir, progress, subfolder)
    check_param_dtypes(checkpoint.params, name_or_path if isinstance(name_or_path, (str, os.PathLike)) else
                       getattr(name_or_path, "name", str(name_or_path)))
    return checkpoint


def _read_any(name_or_path, config, model, cache_dir, progress, subfolder) -> Checkpoint:
    if subfolder is not None and not (isinstance(name_or_path, (str, os.PathLike))
                                      and (str(name_or_path).startswith(HF_PREFIX) or Path(name_or_path).is_dir())):
        raise InputError("subfolder= is for hf-hub: repositories and local folders")
    if isinstance(name_or_path, (str, os.PathLike)) and not str(name_or_path).startswith(HF_PREFIX):
        folder = Path(name_or_path) / (subfolder or "")
        if folder.is_dir():
            if config is not None or model is not None:
                raise InputError("config= is for checkpoint files; a transformers folder brings its config.json")
            return _read_folder(folder)
        if subfolder is not None:
            raise FileNotFoundError(f"{folder}: no such folder (subfolder={subfolder!r} of {name_or_path})")
    read = _read(name_or_path, config, model, cache_dir, progress, subfolder)
    read = read if isinstance(read, Checkpoint) else Checkpoint(*read, "clip", True, "")
    if isinstance(name_or_path, (str, os.PathLike)) and Path(name_or_path).is_file():
        # a vocabulary beside the file (a relative one named by a converted file: relative to it)
        return read._replace(config=with_vocabulary(read.config, Path(name_or_path).parent))
    return read


def _read_folder(folder: Path) -> Checkpoint:
    """A transformers folder (CLIP's or SigLIP's config.json) -> Checkpoint, a SigLIP's with its vocabulary."""
    if siglip_hf.is_siglip_folder(folder):
        checkpoint = siglip_hf.read_siglip_folder(folder, lazy=True)
        return checkpoint._replace(config=with_vocabulary(checkpoint.config, folder))
    return hf_format.read_folder(folder, lazy=True)


def _read(name_or_path, config, model, cache_dir, progress, subfolder):
    """(config, params) of a full CLIP, or a transformers Checkpoint from the Hub."""
    is_file = isinstance(name_or_path, (str, os.PathLike)) and Path(name_or_path).is_file()
    if (config is not None or model is not None) and not is_file:
        raise InputError("config= is for checkpoint files; a model name or hf-hub: repo brings its own config")
    if isinstance(name_or_path, Pretrained):
        return _from_pretrained(name_or_path, cache_dir, progress)
    if isinstance(name_or_path, str) and name_or_path.startswith(HF_PREFIX):
        repo_id, _, revision = name_or_path[len(HF_PREFIX):].partition("@")
        return _from_hub(repo_id, revision or None, cache_dir, subfolder)
    if isinstance(name_or_path, tuple) or not Path(name_or_path).is_file():
        entry = pretrained.resolve(name_or_path if isinstance(name_or_path, tuple) else str(name_or_path))
        if entry is not None:
            return _from_pretrained(entry, cache_dir, progress)
    if isinstance(name_or_path, tuple):
        raise InputError(f"unknown pretrained model {name_or_path!r}; {pretrained.suggest('/'.join(name_or_path))}"
                         "clip_jax.available_models() lists them")
    path = Path(name_or_path)
    if path.is_file():
        return _from_file(path, config, model)
    if path.suffix in CHECKPOINT_SUFFIXES or path.parent.is_dir() and str(path.parent) != ".":
        raise FileNotFoundError(f"{path}: no such file")
    raise InputError(
        f"unknown model {str(name_or_path)!r} (and no such file); {pretrained.suggest(name_or_path)}"
        f"clip_jax.available_models() lists the names, '{HF_PREFIX}org/repo' loads from the Hugging Face Hub"
    )


def with_image_size(config: CLIPConfig, params: Params, image_size: int) -> tuple[CLIPConfig, Params]:
    """A ViT's config and params for another input resolution (positional embedding resized)."""
    v = config.vision
    if image_size == v.image_size:
        return config, params
    if v.is_resnet:
        raise InputError(f"image_size={image_size}: only a ViT's resolution can be changed (this is a ResNet)")
    if image_size <= 0 or image_size % v.patch_size:
        raise InputError(f"image_size={image_size} is not a positive multiple of the patch size {v.patch_size}")
    params = dict(params)
    key = "visual.positional_embedding"
    params[key] = resize_pos_embed(params[key], image_size // v.patch_size)
    return dataclasses.replace(config, vision=dataclasses.replace(v, image_size=image_size)), params


# --- sources --------------------------------------------------------------------------------------


def _from_file(path: Path, config: ConfigArg, model: str | None) -> tuple[CLIPConfig, Params]:
    if store.is_converted(path):
        stored, params = store.load(path, lazy=True)
        if (config is not None or model is not None) and _given(path, config, model) != stored:
            raise InputError(f"{path}: a converted file carries its own config, and it differs from config=")
        return stored, params
    return read_params(path, config, model=model, lazy=True)  # config=, model=, open_clip_config.json beside, inferred


def _given(path: Path, config: ConfigArg, model: str | None) -> CLIPConfig | None:
    return resolve_config(path, config, model).config


def _from_pretrained(entry: Pretrained, cache_dir, progress: bool) -> tuple[CLIPConfig, Params]:
    config = entry.config()
    url_error = None
    if entry.url:
        directory = default_cache_dir(cache_dir)
        try:
            path, digest = download(entry.url, entry.sha256, cache_dir=directory, progress=progress,
                                    offline=_offline())
            return _converted(path, digest, config, directory)
        except DownloadError as e:
            # Not at the URL (a checksum mismatch is not tried elsewhere): the Hub copy, said out loud.
            if isinstance(e, UnreachableError) and not entry.hf_hub:
                raise _unreachable(entry, cache_dir, e, None) from None
            if not entry.hf_hub or isinstance(e, ChecksumError):
                raise
            url_error = e
            source = f"cache instead ({entry.hf_hub})" if _offline() else \
                f"Hub instead ({host_of(hf_constants.ENDPOINT)}: {entry.hf_hub})"
            warnings.warn(f"{entry.name}: {e}; loading it from the Hugging Face {source}", SourceFallbackWarning,
                          stacklevel=_caller_stacklevel())
    if entry.hf_hub:
        names = (entry.filename,) if entry.filename else HF_WEIGHTS
        if entry.filename and Path(entry.filename).suffix in (".bin", ".pth", ".pt"):
            names = (str(Path(entry.filename).with_suffix(".safetensors")), entry.filename)  # as open_clip
        with _hub_unreachable_error(lambda why: _unreachable(entry, cache_dir, url_error, why)):
            path = _hf_weights(entry.hf_hub, None, names)
        return _converted(path, _content_digest(path), config, _hub_dir(cache_dir, entry.hf_hub))
    raise InputError(f"{entry.name}: the registry entry has neither a url nor an hf_hub repo")


def _from_hub(repo_id: str, revision: str | None, cache_dir, subfolder: str | None = None):
    """An open_clip repo -> (config, params); a transformers one (config.json) -> Checkpoint."""
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id):
        raise InputError(f"{HF_PREFIX}{repo_id}: expected {HF_PREFIX}org/repo")
    where = f"{HF_PREFIX}{repo_id}" + (f" (subfolder {subfolder})" if subfolder else "")
    with _hub_unreachable_error(lambda why: _hub_unreachable_message(where, repo_id, why)):
        try:
            if subfolder:  # open_clip's repos keep their files at the top: a subfolder is transformers'
                raise EntryNotFoundError(f"{OPEN_CLIP_CONFIG} is not looked for in a subfolder")
            config_path = _hf_file(repo_id, OPEN_CLIP_CONFIG, revision)
        except EntryNotFoundError as e:
            try:
                return _from_hub_transformers(repo_id, revision, subfolder, where)
            except EntryNotFoundError as e2:
                raise FileNotFoundError(
                    f"{where}: no {OPEN_CLIP_CONFIG} ({type(e).__name__}) and no transformers {hf_format.CONFIG} "
                    f"({type(e2).__name__}): not an open_clip or transformers repo, or not in the local cache in "
                    "offline mode") from None
        config = read_open_clip_config(config_path, where)  # before the weights: an unsupported model fetches none
        path = _hf_weights(repo_id, revision, HF_WEIGHTS)
        if isinstance(config, SiglipConfig):
            _fetch_vocabulary(lambda name: Path(_hf_file(repo_id, name, revision)))
    config, params = _converted(path, _content_digest(path), config, _hub_dir(cache_dir, repo_id))
    return with_vocabulary(config, Path(config_path).parent), params


def _fetch_vocabulary(fetch: Callable[[str], Path]) -> None:
    for name in VOCABULARY_FILES:
        with contextlib.suppress(EntryNotFoundError):
            fetch(name)


def _from_hub_transformers(repo_id: str, revision: str | None, subfolder: str | None, where: str):
    """Fetch a transformers checkpoint's files (config.json, preprocessor_config.json if there, the
    weights transformers would pick, every shard of an index) -> Checkpoint, read from the snapshot."""
    fetch = lambda name: Path(_hf_file(repo_id, name, revision, subfolder))
    config_path = fetch(hf_format.CONFIG)  # EntryNotFoundError: not a transformers repo either
    try:
        fetch(hf_format.PREPROCESSOR_CONFIG)
    except EntryNotFoundError:
        pass  # optional: OpenAI's mean and std
    errors = []
    for name in hf_format.WEIGHTS:
        for candidate in (name, name + hf_format.INDEX_SUFFIX):
            try:
                path = fetch(candidate)
            except EntryNotFoundError as e:
                errors.append(f"{candidate}: {type(e).__name__}")
                continue
            if candidate.endswith(hf_format.INDEX_SUFFIX):
                for shard in hf_format.shard_files(path):
                    fetch(shard)
            _fetch_vocabulary(fetch)
            return _read_folder(config_path.parent)
    offline = " in the local cache (offline mode)" if _offline() else ""
    raise FileNotFoundError(f"{where}: no weights{offline}: {'; '.join(errors)}")


# --- the Hugging Face Hub -------------------------------------------------------------------------


def _offline() -> bool:
    # huggingface_hub reads these variables once, at import; read them again so a later setting counts.
    return hf_constants.HF_HUB_OFFLINE or _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")


PROBE_TTL = 60.0  # seconds a probe's answer is kept: one probe serves a load's files; a network back is seen
_probes: dict[str, tuple[float, str | None]] = {}


def _hub_unreachable() -> str | None:
    """Why the Hub's host can't be connected to (a few words), None if it can or offline mode is on: one
    short attempt (download.reach), its answer kept PROBE_TTL s. Unreachable, huggingface_hub reads only
    its cache: it would otherwise retry each file five times, backing off, before saying the same."""
    if _offline():
        return None
    endpoint, now = hf_constants.ENDPOINT, time.monotonic()
    if endpoint not in _probes or now - _probes[endpoint][0] > PROBE_TTL:
        _probes[endpoint] = (now, reach(endpoint))
    return _probes[endpoint][1]


@contextlib.contextmanager
def _hub_unreachable_error(error: Callable[[str], Exception]):
    """Inside: a file the Hugging Face cache lacks while the Hub can't be reached is error(why), one line;
    "not in the repo" can't be told from there."""
    try:
        yield
    except (FileNotFoundError, EntryNotFoundError):
        why = _hub_unreachable()
        if why is None:
            raise
        raise error(why) from None


def _hf_file(repo_id: str, filename: str, revision: str | None, subfolder: str | None = None) -> str:
    return hf_hub_download(
        repo_id, filename, subfolder=subfolder or None, revision=revision,
        cache_dir=os.environ.get("HF_HUB_CACHE") or None,
        local_files_only=_offline() or _hub_unreachable() is not None, library_name="clip_jax",
    )


def _hf_weights(repo_id: str, revision: str | None, names: tuple[str, ...]) -> Path:
    errors = []
    for name in names:
        try:
            return Path(_hf_file(repo_id, name, revision))
        except EntryNotFoundError as e:  # not in the repo, or (offline) not in the local cache
            errors.append(f"{name}: {type(e).__name__}")
    offline = " in the local cache (offline mode)" if _offline() else ""
    raise FileNotFoundError(f"{HF_PREFIX}{repo_id}: no weights{offline}: {'; '.join(errors)}")


def _hf_cache() -> str:
    return os.environ.get("HF_HUB_CACHE") or hf_constants.HF_HUB_CACHE


def _ways_out(*ways: str) -> str:
    ways = ("load a local file instead", *ways)
    return ", ".join(ways[:-1]) + ", or " + ways[-1]


def _hub_way_out(repo_id: str) -> str:
    return f"point HF_HUB_CACHE at a Hugging Face cache holding {repo_id} (HF_HUB_OFFLINE=1 then skips the network)"


def _hub_unreachable_message(where: str, repo_id: str, why: str) -> UnreachableError:
    host = host_of(hf_constants.ENDPOINT)
    return UnreachableError(host, why, f"{where}: can't reach {host} ({why}), and the Hugging Face cache "
                                       f"({_hf_cache()}) doesn't hold it: {_ways_out(_hub_way_out(repo_id))}")


def _unreachable(entry: Pretrained, cache_dir, url_error: DownloadError | None,
                 hub_why: str | None) -> UnreachableError:
    """A registry entry none of whose sources could be reached: one line naming each host tried, why, and
    the ways out (a local file, the file in CLIP_JAX_CACHE, the Hub's files in HF_HUB_CACHE)."""
    tried, ways = [], []
    if entry.url:
        if isinstance(url_error, UnreachableError):
            tried.append(f"{url_error.host} ({url_error.why})")
        name = Path(urllib.parse.unquote(urllib.parse.urlparse(entry.url).path)).name  # the name download gives it
        ways.append(f"copy {name} into {default_cache_dir(cache_dir)} (set by {ENV_CACHE})")
    if hub_why is not None:
        tried.append(f"{host_of(hf_constants.ENDPOINT)} ({hub_why}) for {entry.hf_hub}")
        ways.append(_hub_way_out(entry.hf_hub))
    host = url_error.host if isinstance(url_error, UnreachableError) else host_of(hf_constants.ENDPOINT)
    why = url_error.why if isinstance(url_error, UnreachableError) else hub_why
    return UnreachableError(host, why, f"{entry.name}: can't reach {' nor '.join(tried)}: {_ways_out(*ways)}")


def _caller_stacklevel() -> int:
    """The stacklevel, for a warning raised by the function that calls this, of the first frame outside
    clip_jax: the warning then shows the caller's own line, whichever entry point it came through."""
    package = str(Path(__file__).parent) + os.sep
    stack = traceback.extract_stack()[:-1]  # innermost last; this function's own frame dropped
    return next((level for level, frame in enumerate(reversed(stack), 1) if not frame.filename.startswith(package)),
                1)


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _hub_dir(cache_dir, repo_id: str) -> Path:
    # Our converted files stay out of Hugging Face's cache, which its own tools manage.
    return default_cache_dir(cache_dir) / "hf-hub" / repo_id.replace("/", "--")


def _content_digest(path: Path) -> str:
    """The SHA-256 of a file. Hugging Face's cache names a large (LFS) file's blob by its SHA-256, so a
    snapshot link to a 64-hex blob name gives it without reading the file."""
    blob = Path(os.path.realpath(path)).name
    return blob if re.fullmatch(r"[0-9a-f]{64}", blob) else sha256_file(path)


# --- the converted-params cache -------------------------------------------------------------------


def _converted(src: Path, digest: str, config: CLIPConfig | None, directory: Path) -> tuple[CLIPConfig, Params]:
    """read_params(src, config), cached as <directory>/<src stem>.<digest[:16]>.safetensors."""
    stem = src.stem
    dst = directory / f"{stem}.{digest[:16]}.safetensors"
    if dst.is_file():
        try:
            cached_config, params = store.load(dst, lazy=True)
            if config is None or cached_config == config:
                return cached_config, params
        except (OSError, ValueError):
            pass  # unreadable (e.g. cut short by a full disk): convert again
    # config None: one of OpenAI's registry entries, whose weights are QuickGELU however they're stored.
    config, params = read_params(src, config or _OPENAI_WEIGHTS)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        store.save(dst, params, config)
    except OSError as e:  # a full or read-only cache still loads, only slower next time
        warnings.warn(f"not caching the converted params ({e}); loading without caching", stacklevel=3)
        return config, params
    stale = re.compile(re.escape(stem) + r"\.[0-9a-f]{16}\.safetensors")
    for old in directory.iterdir():
        if old != dst and stale.fullmatch(old.name):
            old.unlink(missing_ok=True)  # converted from a source that has since changed
    return config, params
