"""A SigLIP's vocabulary travels with its weights: copied beside a converted file (or into a transformers
folder written), and named by the config relative to that file, as Hugging Face repositories ship it
beside their weights."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..fileio import atomic_write
from ..siglip_config import VOCABULARY_FILES, SiglipConfig
from ..siglip_tokenizer import find_vocabulary

__all__ = ["VOCABULARY_SUFFIX", "carry_vocabulary", "with_vocabulary"]

VOCABULARY_SUFFIX = ".tokenizer"  # the folder beside a converted SigLIP that holds its vocabulary


def carry_vocabulary(config: SiglipConfig, src: Path, folder: Path) -> SiglipConfig:
    """A SigLIP's vocabulary files copied into `folder` (beside a converted file, or a transformers folder
    written), and the config naming them relative to the converted file: the vocabulary it names, else
    the one in src (a folder) or beside it (a file). None found: the config as it is (its tokenizer
    says how to give one)."""
    source = Path(config.tokenizer) if config.tokenizer else (src if src.is_dir() else src.parent)
    files = [source] if source.is_file() else [source / n for n in VOCABULARY_FILES if (source / n).is_file()]
    if not source.is_file() and find_vocabulary(source, config.tokenizer_style) is None:
        return config
    folder.mkdir(parents=True, exist_ok=True)
    for file in files:
        if file.resolve() != (folder / file.name).resolve():
            atomic_write(folder / file.name, lambda tmp, file=file: shutil.copyfile(file, tmp))
    name = folder.name if source.is_dir() else f"{folder.name}/{source.name}"
    return dataclasses.replace(config, tokenizer=name)


def with_vocabulary(config: Any, folder: Path | None, given: str | os.PathLike | None = None) -> Any:
    """A SigLIP config naming its vocabulary: `given` (load's tokenizer=), else the one it names (relative
    to `folder`), else the one in `folder` (a repository snapshot, or beside a file), else none (its
    tokenizer then says how to give one). A CLIP's config as it is (its BPE comes with clip_jax)."""
    if not isinstance(config, SiglipConfig):
        if given is not None:
            raise InputError("tokenizer= is for SigLIP models; CLIP's BPE vocabulary comes with clip_jax")
        return config
    if given is not None:
        if not Path(given).exists():
            raise FileNotFoundError(f"{given}: no such file or folder (tokenizer=)")
        return dataclasses.replace(config, tokenizer=os.path.abspath(given))
    if config.tokenizer is not None:
        if folder is None or os.path.isabs(config.tokenizer):
            return config
        return dataclasses.replace(config, tokenizer=os.path.abspath(folder / config.tokenizer))
    if folder is not None and find_vocabulary(folder, config.tokenizer_style) is not None:
        return dataclasses.replace(config, tokenizer=os.path.abspath(folder))
    return config
