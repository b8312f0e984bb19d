"""Checkpoints: the torch-free reader, the name-rule converter, and the converted file format."""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

import numpy as np

from ..config import CLIPConfig
from ..errors import ClipJaxError, InputError
from ..siglip_config import VOCAB, SiglipConfig, siglip_config_from_state_dict, timm_activation
from . import big_vision, hf_format, siglip_hf, siglip_names, store
from .config_source import (
    AssumedActivationWarning,
    ConfigArg,
    ConfigSource,
    assumed_activation_message,
    is_openai_archive,
    resolve_config,
)
from .result import Checkpoint, check_weight_dtype
from .siglip_names import is_open_clip_siglip
from .torch_files import CheckpointError, load_state_dict
from .torch_names import ConversionError, from_torch, to_torch_state_dict
from .vocabulary import VOCABULARY_SUFFIX, carry_vocabulary, with_vocabulary


def read_params(
    path: str | os.PathLike, config: ConfigArg = None, *, model: str | None = None, lazy: bool = False
) -> tuple[CLIPConfig, dict[str, np.ndarray]]:
    """Any supported file -> (config, flat clip_jax params): a converted .safetensors as it is; a PyTorch
    checkpoint (TorchScript, torch.save zip or legacy, open_clip .bin/.safetensors) converted in memory,
    with the config resolve_config finds (config=, model=, the open_clip config clip_jax's export wrote
    into the file, an open_clip_config.json beside it, or inferred from the weights). lazy: a .safetensors
    file's params as LazyArrays, read when used."""
    config, params, _ = read_checkpoint(path, config, model=model, lazy=lazy)
    return config, params


def read_checkpoint(
    path: str | os.PathLike, config: ConfigArg = None, *, model: str | None = None, lazy: bool = False
) -> tuple[CLIPConfig, dict[str, np.ndarray], str]:
    """read_params, and where the config came from (what `convert` records in the converted file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if store.is_converted(path):
        config, params = store.load(path, lazy)
        check_param_dtypes(params, path)
        return config, params, "the converted file"
    if big_vision.is_big_vision_npz(path):  # model=: big_vision's variant ("So400m/14-384"), a check
        if config is not None:
            raise InputError(f"{path}: a big_vision .npz is configured from its arrays; pass model=VARIANT "
                             "(e.g. So400m/14-384) to check them")
        checkpoint = big_vision.read_big_vision(path, model, lazy=lazy)
        return checkpoint.config, checkpoint.params, checkpoint.origin
    source = resolve_config(path, config, model)
    state_dict = load_state_dict(path, lazy)
    if isinstance(source.config, SiglipConfig) or is_open_clip_siglip(state_dict):
        return _open_clip_siglip(path, state_dict, source)
    try:
        config, params = from_torch(state_dict, source.config)
    except ConversionError as e:
        given = f" (config: {source.origin})" if source.config is not None else ""
        raise ConversionError(f"{path}: {e}{given}") from None
    except ClipJaxError as e:  # a config inferred from the weights out of range: name the file
        raise type(e)(f"{path}: {e}") from None
    check_param_dtypes(params, path)
    origin = source.origin
    if source.config is None and not source.activation_known:
        if is_openai_archive(path, state_dict):
            origin = "inferred from the weights of OpenAI's TorchScript archive"
        else:  # after a successful conversion: a failing one says only why it failed
            warnings.warn(assumed_activation_message(path), AssumedActivationWarning, stacklevel=3)
            origin = "inferred from the weights' shapes; QuickGELU assumed"
    return config, params, origin


def _open_clip_siglip(path: Path, state_dict: dict, source: ConfigSource) -> tuple[SiglipConfig, dict, str]:
    """open_clip's SigLIP state dict (a timm trunk) -> (config, flat clip_jax params, origin). Without a
    config the shapes give it, with open_clip's activations (timm's exact GELU; the text tower's tanh for
    SigLIP 2's 256k Gemma vocabulary) and heads of the released towers' widths."""
    ours = siglip_names.to_ours(state_dict, siglip_names.OPEN_CLIP, "clip", f"{path}: ")
    config, origin = source.config, source.origin
    if not isinstance(config, (SiglipConfig, type(None))):
        raise InputError(f"{path}: open_clip SigLIP weights, but the config ({origin}) is a CLIP's")
    if config is None:
        try:
            shapes = siglip_config_from_state_dict(ours)
            t = shapes.text
            config = dataclasses.replace(
                shapes, vision=dataclasses.replace(shapes.vision, activation=timm_activation(shapes.vision)),
                text=dataclasses.replace(t, activation="gelu_tanh" if t.vocab_size == VOCAB["siglip2"] else "gelu"),
                image_processor="open_clip", tokenizer_style="open_clip")
        except ClipJaxError as e:
            raise type(e)(f"{path}: {e}") from None
        origin = "inferred from open_clip SigLIP weights' shapes"
    checkpoint = siglip_names.as_checkpoint(ours, config, "clip", origin, path)
    check_param_dtypes(checkpoint.params, path)
    return config, checkpoint.params, origin


def check_param_dtypes(params: dict[str, np.ndarray], where: str | os.PathLike) -> None:
    """Every format's params pass here before a model is built from them (read_checkpoint, and
    clip_jax.hub.read_any for all that load reads): a weight of a non-float dtype (bool, int64, ...) is
    a CheckpointError naming the file, the tensor and the dtype, not a model silently computing with it."""
    for name, value in params.items():
        try:
            check_weight_dtype(name, value if hasattr(value, "dtype") else np.asarray(value))  # a header's dtype
        except CheckpointError as e:
            raise CheckpointError(f"{where}: {e}") from None


FORMATS = ("clip_jax", "transformers")


def convert(
    src: str | os.PathLike,
    dst: str | os.PathLike | None = None,
    dtype: str = "keep",
    *,
    config: ConfigArg = None,
    model: str | None = None,
    format: str = "clip_jax",
    tokenizer: str | os.PathLike | None = None,
) -> Path:
    """Convert a PyTorch CLIP checkpoint to a clip_jax .safetensors (default: beside src). -> dst.

    src may also be a transformers folder (config.json + weights). format="transformers" writes a
    transformers folder instead (default: src without its suffix), which holds single towers too.

    config: a CLIPConfig, an open_clip config dict or JSON file (open_clip_config.json or a bare model
    config); model: an open_clip architecture name ("ViT-B-32", "ViT-B-32-quickgelu", "ViT-H-14", ...), or
    big_vision's variant of a .npz ("So400m/14-384"). tokenizer: a SigLIP's vocabulary (spiece.model,
    tokenizer.json or a folder) where src has none beside it; it is copied beside dst ("<dst>.tokenizer").
    Neither: the config clip_jax's export wrote into src, else the open_clip_config.json beside src if
    there is one, else inferred from the weights (with an AssumedActivationWarning unless src is one of
    OpenAI's TorchScript archives).
    """
    if format not in FORMATS:
        raise InputError(f"format must be one of {', '.join(FORMATS)}; got {format!r}")
    src = Path(src)
    if dst is None:
        dst = src.with_suffix("") if format == "transformers" else src.with_suffix(".safetensors")
        if dst == src:
            dst = src.with_name(src.name + "-transformers")
    dst = Path(dst)
    if dst.resolve() == src.resolve():
        raise InputError(f"{dst}: the output would overwrite the input; pass another output path")
    if src.is_dir():
        if config is not None or model is not None:
            raise InputError(f"{src}: a transformers folder brings its config.json; config= and model= are for files")
        siglip = siglip_hf.is_siglip_folder(src)
        checkpoint = siglip_hf.read_siglip_folder(src) if siglip else hf_format.read_folder(src)
    else:
        read_config, params, origin = read_checkpoint(src, config, model=model)
        checkpoint = Checkpoint(read_config, params, "clip", True, origin)
    checkpoint = checkpoint._replace(config=with_vocabulary(checkpoint.config, None, tokenizer))
    if isinstance(checkpoint.config, SiglipConfig):
        vocabulary = dst if format == "transformers" else dst.with_name(dst.stem + VOCABULARY_SUFFIX)
        checkpoint = checkpoint._replace(config=carry_vocabulary(checkpoint.config, src, vocabulary))
    if format == "transformers":
        params = store.cast_flat(checkpoint.params, dtype)
        if isinstance(checkpoint.config, SiglipConfig):
            return siglip_hf.write_siglip_folder(dst, params, checkpoint.config, checkpoint.kind)
        return hf_format.write_folder(dst, params, checkpoint.config, checkpoint.kind, checkpoint.projection)
    if checkpoint.kind != "clip":
        raise InputError(f"{src}: a single {checkpoint.kind} tower; a converted clip_jax file holds a full CLIP: "
                         "use format='transformers' (--format transformers), or load the folder directly")
    store.save(dst, checkpoint.params, checkpoint.config, dtype, origin=checkpoint.origin)
    return dst


__all__ = ["AssumedActivationWarning", "Checkpoint", "CheckpointError", "ConfigSource", "ConversionError", "convert",
           "check_param_dtypes", "load_state_dict", "read_checkpoint", "read_params", "resolve_config", "store",
           "to_torch_state_dict"]
