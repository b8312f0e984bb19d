"""A SigLIP's vocabulary travels with its weights: copied beside a converted file (or into a transformers
folder written), and named by the config relative to that file, as Hugging Face repositories ship it
beside their weights."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from ..fileio import atomic_write
from ..siglip_config import VOCABULARY_FILES, SiglipConfig
from ..siglip_tokenizer import find_vocabulary

__all__ = ["VOCABULARY_SUFFIX", "carry_vocabulary"]

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
