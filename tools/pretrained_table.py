"""Regenerate clip_jax/assets/pretrained.json from the installed open_clip.

    python tools/pretrained_table.py            # writes clip_jax/assets/pretrained.json
    python tools/pretrained_table.py --check    # exits 1 if the committed file is out of date

The library reads the JSON and never imports open_clip. Kept: the pretrained tags of the architectures
clip_jax builds (open_clip's plain CLIP class with OpenAI's BPE tokenizer; config_from_open_clip decides),
each with where its weights live and the preprocessing it was trained with, and those architectures'
model configs. "-quickgelu" architectures are left out: open_clip derives their tags from the base
architecture's QuickGELU tags, and clip_jax.pretrained resolves them the same way.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import open_clip
from open_clip import pretrained as oc_pretrained

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from clip_jax.config import OPENAI_MEAN, OPENAI_STD, config_from_open_clip  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "clip_jax" / "assets" / "pretrained.json"
PREPROCESS_DEFAULTS = {"mean": OPENAI_MEAN, "std": OPENAI_STD, "interpolation": "bicubic", "resize_mode": "shortest"}


def sha256_of(url: str) -> str | None:
    """The digest a URL publishes: OpenAI's whole SHA-256 as the second-to-last path segment; the
    first 8 hex digits at the end of open_clip's release file names (as open_clip checks them)."""
    parts = url.split("/")
    if "openaipublic" in url and re.fullmatch(r"[0-9a-f]{64}", parts[-2]):
        return parts[-2]
    m = re.search(r"-([0-9a-f]{8,64})\.\w+$", parts[-1])
    return m.group(1) if "mlfoundations" in url and m else None


def entry(model: str, tag: str, cfg: dict) -> dict:
    e: dict = {"model": model, "tag": tag}
    url, hf_hub = cfg.get("url") or "", cfg.get("hf_hub") or ""
    # OpenAI's files come from OpenAI's URLs with their SHA-256, as clip.load does (the Hub copy is a
    # fallback); the others from the Hub where open_clip has them there (its default), else from the URL.
    if url and (tag == "openai" or not hf_hub):
        e["url"] = url
        if sha256_of(url):
            e["sha256"] = sha256_of(url)
    if hf_hub and (tag == "openai" or "url" not in e):
        # open_clip: 'org/repo/' is a repo with the default file names, 'org/repo/file.bin' names the file.
        org, repo, *rest = hf_hub.split("/")
        e["hf_hub"] = f"{org}/{repo}"
        if "/".join(rest):
            e["filename"] = "/".join(rest)
    if cfg.get("quick_gelu"):
        e["quick_gelu"] = True
    for key, default in PREPROCESS_DEFAULTS.items():
        value = cfg.get(key, default)
        if tuple(value) != tuple(default) if isinstance(default, tuple) else value != default:
            e[key] = list(value) if isinstance(value, tuple) else value
    return e


def table() -> dict:
    models, entries = {}, []
    for model, tags in oc_pretrained._PRETRAINED.items():
        if model.endswith("-quickgelu"):
            continue
        cfg = open_clip.get_model_config(model)
        if cfg is None:
            continue
        try:
            config_from_open_clip(cfg)
        except ValueError:
            continue  # an architecture clip_jax doesn't build
        models[model] = cfg
        entries += [entry(model, tag, tag_cfg) for tag, tag_cfg in tags.items()]
    return {"open_clip_version": open_clip.__version__, "models": models, "pretrained": entries}


def render(data: dict) -> str:
    # One line per entry and per model config: small, and diffs read well.
    lines = ["{", f'  "open_clip_version": {json.dumps(data["open_clip_version"])},', '  "models": {']
    items = list(data["models"].items())
    lines += [f"    {json.dumps(k)}: {json.dumps(v, sort_keys=True)}" + ("," if i < len(items) - 1 else "")
              for i, (k, v) in enumerate(items)]
    lines += ["  },", '  "pretrained": [']
    entries = data["pretrained"]
    lines += [f"    {json.dumps(e)}" + ("," if i < len(entries) - 1 else "") for i, e in enumerate(entries)]
    lines += ["  ]", "}", ""]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="compare with the committed file instead of writing")
    args = p.parse_args()
    text = render(table())
    if args.check:
        same = OUT.is_file() and OUT.read_text() == text
        print(f"{OUT}: {'up to date' if same else 'OUT OF DATE: rerun tools/pretrained_table.py'}")
        return 0 if same else 1
    OUT.write_text(text)
    print(f"wrote {OUT} ({len(text)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
