"""Reference models for parity tests: random-init open_clip CLIPs, written to disk in every format.

LayerNorm/BatchNorm parameters and BatchNorm statistics are moved away from their init (gains 1, biases 0,
mean 0, var 1) so that eps, the statistics and the affine parts all show in the outputs.
"""

from __future__ import annotations

import math

import numpy as np
import open_clip
import torch
from safetensors.torch import save_file

CAPTIONS = ["a photo of a dog", "a diagram", "two cats sleeping on a red sofa next to an open window, at night"]


def reference_model(name: str, vision_layers=None, text_layers=None, seed: int = 0) -> torch.nn.Module:
    """open_clip's config for `name` ("RN50", "ViT-B-32", ...) with QuickGELU, optionally fewer layers."""
    cfg = open_clip.get_model_config(name)
    cfg = {**cfg, "vision_cfg": dict(cfg["vision_cfg"]), "text_cfg": dict(cfg["text_cfg"])}
    if vision_layers is not None:
        cfg["vision_cfg"]["layers"] = vision_layers
    if text_layers is not None:
        cfg["text_cfg"]["layers"] = text_layers
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(**cfg, quick_gelu=True).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.LayerNorm, torch.nn.BatchNorm2d)):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=gen))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=gen))
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.5 + 1.5 * torch.rand(m.running_var.shape, generator=gen))
        model.logit_scale.fill_(math.log(50.0))
    return model


def inputs(model: torch.nn.Module, n_images: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(NHWC float32 normalized-looking images, int32 tokens [3, 77])."""
    size = model.visual.image_size
    size = size[0] if isinstance(size, tuple) else size
    images = np.random.RandomState(seed).randn(n_images, size, size, 3).astype(np.float32)
    return images, open_clip.tokenize(CAPTIONS).numpy().astype(np.int32)


@torch.no_grad()
def reference_outputs(model: torch.nn.Module, images: np.ndarray, tokens: np.ndarray) -> dict[str, np.ndarray]:
    x = torch.from_numpy(images).permute(0, 3, 1, 2)  # torch is NCHW
    img = model.encode_image(x, normalize=True)
    txt = model.encode_text(torch.from_numpy(tokens).long(), normalize=True)
    per_image = model.logit_scale.exp() * img @ txt.T
    return {"image": img.numpy(), "text": txt.numpy(), "logits_per_image": per_image.numpy()}


def state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def to_openai_fp16(model: torch.nn.Module) -> None:
    """OpenAI's release mix, in place: conv/linear/attention weights and projections fp16, the rest fp32."""
    open_clip.model.convert_weights_to_lp(model, torch.float16)


def round_to_fp16_mix(model: torch.nn.Module) -> torch.nn.Module:
    """The fp32 model whose weights equal the fp16-mix ones (the reference for a file saved in the mix)."""
    to_openai_fp16(model)
    return model.float()


def save_torchscript(model: torch.nn.Module, path, fp16_mix: bool = True) -> None:
    """Like OpenAI's released .pt: a traced archive, fp16 mix, with input_resolution/context_length/vocab_size."""
    size = model.visual.image_size
    size = size[0] if isinstance(size, tuple) else size
    for key, value in (("input_resolution", size), ("context_length", 77), ("vocab_size", 49408)):
        if hasattr(model, key):
            delattr(model, key)  # open_clip keeps these as ints; OpenAI's archive has them as tensors
        model.register_buffer(key, torch.tensor(value))
    example = (torch.zeros(1, 3, size, size), torch.zeros(1, 77, dtype=torch.long))
    traced = torch.jit.trace(model, example, strict=False, check_trace=False)
    if fp16_mix:
        to_openai_fp16(model)  # in place: the trace shares the model's parameter tensors
        dtypes = {v.dtype for v in traced.state_dict().values()}
        assert {torch.float16, torch.float32} <= dtypes, dtypes
    torch.jit.save(traced, str(path))


def save(model_or_sd, path, fmt: str) -> None:
    """Write a state dict in one of the formats open_clip users meet."""
    sd = state_dict(model_or_sd) if isinstance(model_or_sd, torch.nn.Module) else model_or_sd
    if fmt == "zip":
        torch.save(sd, path)
    elif fmt == "legacy":
        torch.save(sd, path, _use_new_zipfile_serialization=False)
    elif fmt == "training":  # open_clip's training checkpoint of a DDP-wrapped, torch.compile'd model
        sd = {f"module._orig_mod.{k}": v for k, v in sd.items()}
        torch.save({"epoch": 3, "name": "run", "state_dict": sd, "optimizer": {"state": {}, "param_groups": []}}, path)
    elif fmt == "compiled":
        torch.save({f"_orig_mod.{k}": v for k, v in sd.items()}, path)
    elif fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        raise ValueError(fmt)
