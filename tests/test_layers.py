"""The package's dependencies point one way (docs/ARCHITECTURE.md): each module has a layer, and a
module imports only from layers below its own, or from its own layer without a cycle. Function-local
imports count too: they hide a cycle, they don't remove it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "clip_jax"

# docs/ARCHITECTURE.md's layers, lowest first. A new module gets a line here (and there).
LAYERS: dict[str, int] = {}
for layer, names in enumerate([
    # foundations: no clip_jax imports
    "errors fileio roles config_fields config siglip_config dtypes ftfy_fast synthetic",
    # inputs and outputs of the model, without the model
    "families tokenizer siglip_tokenizer resample image_hf image checks pretrained download param_check pos_embed "
    "checkpoint.torch_pickle checkpoint.torch_save_reader checkpoint.torch_files checkpoint.torch_writer "
    "checkpoint.store",
    # the model's parts: layers and jitted calls, then the towers and heads built from the layers
    "layers calls",
    "pooling vit resnet states text",
    "model",
    "towers",
    "clip_family siglip siglip_family",  # the families: CLIP's declaration; SigLIP's model and declaration
    # around the model: checkpoints, devices, training, start-up
    "checkpoint.declared checkpoint.config_source checkpoint.result checkpoint.torch_names "
    "checkpoint.hf_format checkpoint.siglip_names checkpoint.siglip_hf checkpoint.big_vision checkpoint.vocabulary "
    "checkpoint.export "
    "checkpoint parallel losses lit gradient_cache train compilation",
    "hub",
    "zeroshot",
    "__init__",
    # applications (the jobs extra): data sets from anywhere, then the jobs, then the command line
    "data data.braces data.tarstream data.storage",
    "data.sources",
    "data.loader",  # the training input, over the sources
    "jobs jobs.search jobs.eval_data jobs.results jobs.embed_folder jobs.embed_shards jobs.embed jobs.eval "
    "jobs.train_log jobs.train_model jobs.train",
    "cli cli.common",
    "cli.eval cli.demo cli.train",  # the demo shows the public API: `import clip_jax`
    "cli.main",
    "cli.__main__",
]):
    for name in names.split():
        LAYERS[name] = layer


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """The clip_jax modules `path` imports, anywhere in it (function-local imports included)."""
    me = module_name(path)
    package = list(path.relative_to(PACKAGE).parent.parts)  # where `from .` points
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("clip_jax"):
                target = node.module[len("clip_jax."):] if node.module != "clip_jax" else "__init__"
            else:
                continue
            for alias in node.names:  # `from . import x` imports the module x
                sub = f"{target}.{alias.name}" if target else alias.name
                found.add(sub if sub in modules else (target or "__init__"))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "clip_jax":
                    found.add("__init__")
                elif alias.name.startswith("clip_jax."):
                    found.add(alias.name[len("clip_jax."):])
    return {m for m in found if m in modules and m != me}


def graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports(p, modules) for p in paths}


def test_every_module_has_a_layer():
    missing = sorted(set(graph()) - set(LAYERS))
    assert not missing, f"no layer for {missing}: add it here and in docs/ARCHITECTURE.md"


def test_imports_point_down():
    wrong = [f"{a} (layer {LAYERS[a]}) imports {b} (layer {LAYERS[b]})"
             for a, deps in graph().items() for b in deps if LAYERS[b] > LAYERS[a]]
    assert not wrong, wrong


def test_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(g[node]):
            if state.get(dep) == 1:
                cycles.append(" -> ".join(path[path.index(dep):] + [dep]) if dep in path else f"{node} -> {dep}")
            elif dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles
