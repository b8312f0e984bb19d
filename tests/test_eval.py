"""clip_jax.eval against CLIP_benchmark itself: its metric functions (clip_benchmark.metrics.*) run on the
same weights in torch (the model exported to open_clip's format), the same images (a labelled ImageFolder
drawn with clip_jax.synthetic) and its own dataloader loop, and scikit-learn's LogisticRegression for the
probe.

Tolerances: torch and XLA round float32 matmuls differently (features agree to ~1e-6), so a prediction
may differ only where two scores are that close; the metrics must then agree within 1/N per such row,
and exactly where no two scores are within 1e-4. The probe: within one point of scikit-learn's
(different solvers reach the same optimum to their tolerances, not bit for bit).
"""

from __future__ import annotations

import csv
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

import clip_jax
import clip_jax.jobs.eval as ev
from clip_jax import synthetic
from clip_jax.cli.demo import TINY_CLIP
from clip_jax.jobs import eval_data

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")
try:  # the reference (pip install clip-benchmark: the test extra); the tests of our own code run without it
    import clip_benchmark.metrics.zeroshot_classification as cb_zc
    import clip_benchmark.metrics.zeroshot_retrieval as cb_zr
except ImportError:
    cb_zc = cb_zr = None
needs_cb = pytest.mark.skipif(cb_zc is None, reason="clip_benchmark is not installed")



def _accuracy(output, target, topk=(1,)):
    """clip_benchmark.metrics.zeroshot_classification.accuracy, line for line, but for .item(): its
    float() of a one-element array is an error from NumPy 2.4 on (clip_benchmark 1.6.2)."""
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    n = len(target)
    return [float(correct[:k].reshape(-1).float().sum(0, keepdim=True).cpu().numpy().item()) / n for k in topk]


@pytest.fixture(autouse=True)
def _numpy_2_4_accuracy(monkeypatch):
    if cb_zc is None:
        return
    try:
        cb_zc.accuracy(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))
    except TypeError:
        monkeypatch.setattr(cb_zc, "accuracy", _accuracy)


TEMPLATES = ["a {c}", "a photo of a {c}.", "itap of the {c}."]
MARGIN = 1e-4


def write_folder(root: Path, n: int, seed: int, size: int = 64) -> None:
    images, samples = synthetic.generate(n, seed=seed, image_size=size)
    for i, (im, s) in enumerate(zip(images, samples)):
        d = root / s.label
        d.mkdir(parents=True, exist_ok=True)
        im.save(d / f"{i:04d}.png")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The bundled model, its open_clip twin, and a synthetic data set (train/ and test/ ImageFolders)."""
    tmp = tmp_path_factory.mktemp("eval")
    write_folder(tmp / "shapes" / "test", 150, seed=11)
    write_folder(tmp / "shapes" / "train", 300, seed=12)
    model, preprocess = clip_jax.load(TINY_CLIP)
    return tmp, model, preprocess, torch_twin(model, TINY_CLIP.parent / "open_clip_config.json", tmp)


def torch_twin(model, config_file: Path, tmp: Path):
    """(open_clip model, its preprocess, its tokenizer) with the weights clip_jax.export writes."""
    cfg = json.loads(config_file.read_text())
    clip_jax.export(model, tmp / "twin.pt", dtype="float32")
    m = open_clip.model.CLIP(**cfg["model_cfg"]).eval()
    m.load_state_dict(torch.load(tmp / "twin.pt", weights_only=True), strict=True)
    pp = cfg.get("preprocess_cfg", {})
    transform = open_clip.image_transform(cfg["model_cfg"]["vision_cfg"]["image_size"], is_train=False,
                                          mean=pp.get("mean"), std=pp.get("std"))
    ctx = cfg["model_cfg"]["text_cfg"].get("context_length", 77)
    return m, transform, lambda texts: open_clip.tokenize(texts, context_length=ctx)


def assert_close_metrics(ours: dict, theirs: dict, n: int, ties: int) -> None:
    """Equal where no near-ties; within ties/N (one row per near-tie) otherwise."""
    assert ours.keys() == theirs.keys()
    for k in ours:
        if np.isnan(theirs[k]):
            assert np.isnan(ours[k]), k
        elif ties == 0:
            assert ours[k] == pytest.approx(theirs[k], abs=1e-12), k
        else:
            assert abs(ours[k] - theirs[k]) <= ties / n + 1e-12, k


def near_ties(scores: np.ndarray) -> int:
    """Rows whose two best scores are within MARGIN (where torch and XLA may disagree)."""
    top2 = -np.sort(-scores, axis=1)[:, :2]
    return int(np.sum(top2[:, 0] - top2[:, 1] < MARGIN))


# --- metrics on given features ----------------------------------------------------------------------


@needs_cb
def test_classification_metrics_are_clip_benchmark_s():
    from sklearn.metrics import balanced_accuracy_score

    rng = np.random.default_rng(0)
    for n, c in [(200, 10), (57, 3), (300, 40)]:
        logits = rng.standard_normal((n, c)).astype(np.float32)
        target = rng.integers(0, c, n)
        target[:5] = 0
        ours = ev.classification_metrics(logits, target, with_acc5=c >= 5)
        t_logits, t_target = torch.from_numpy(logits), torch.from_numpy(target)
        if c >= 5:
            acc1, acc5 = cb_zc.accuracy(t_logits, t_target, topk=(1, 5))
        else:
            (acc1,), acc5 = cb_zc.accuracy(t_logits, t_target, topk=(1,)), float("nan")
        mpcr = balanced_accuracy_score(t_target, t_logits.argmax(axis=1))
        assert_close_metrics(ours, {"acc1": acc1, "acc5": acc5, "mean_per_class_recall": mpcr}, n, 0)


def clip_benchmark_recall(images: np.ndarray, texts: np.ndarray, owner: np.ndarray, ks, batch_size=7) -> dict:
    """zeroshot_retrieval.evaluate's metric block, verbatim in effect, on given features."""
    scores = torch.from_numpy(texts) @ torch.from_numpy(images).T
    positive = torch.zeros_like(scores, dtype=bool)
    positive[torch.arange(len(scores)), torch.from_numpy(owner)] = True
    out = {}
    for k in ks:
        recall = lambda s, p: (cb_zr.batchify(cb_zr.recall_at_k, s, p, batch_size, "cpu", k=k) > 0).float().mean()
        out[f"image_retrieval_recall@{k}"] = recall(scores, positive).item()
        out[f"text_retrieval_recall@{k}"] = recall(scores.T, positive.T).item()
    return out


@needs_cb
@pytest.mark.parametrize("blocks", [dict(query_block=8, key_block=16), dict()])
def test_retrieval_metrics_are_clip_benchmark_s(blocks):
    rng = np.random.default_rng(1)
    images = rng.standard_normal((37, 16)).astype(np.float32)
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    owner = np.sort(rng.integers(0, 37, 90))  # 0 to several captions per image, some images with none
    texts = images[owner] + 0.9 * rng.standard_normal((90, 16)).astype(np.float32)
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    ours = ev.retrieval_metrics(images, texts, owner, (1, 5, 10), **blocks)
    theirs = clip_benchmark_recall(images, texts, owner, (1, 5, 10))
    assert list(ours) == list(theirs)
    # recall@k of CLIP_benchmark is a float32 mean; ours float64: equal to float32's rounding
    for k in ours:
        assert ours[k] == pytest.approx(theirs[k], abs=1e-6), k


def test_retrieval_ties_rank_by_index():
    """Equal scores: the earlier key ranks first (CLIP_benchmark's torch.topk order is unspecified there)."""
    images = np.eye(4, dtype=np.float32)[[0, 0, 1, 2]]  # images 0 and 1 identical
    texts = np.eye(4, dtype=np.float32)[[0, 0, 1, 2]]
    ranks = ev.positive_ranks(texts, np.arange(4), images, np.arange(4), query_block=2, key_block=3)
    assert ranks.tolist() == [0, 1, 0, 0]


# --- end to end against CLIP_benchmark's own loops --------------------------------------------------


@needs_cb
def test_zeroshot_classification_matches_clip_benchmark(tiny):
    tmp, model, preprocess, (tmodel, transform, tokenizer) = tiny
    from torchvision.datasets import ImageFolder

    data = eval_data.classification_data(tmp / "shapes", "test")
    ours = ev.zeroshot_classification(model, preprocess, data, TEMPLATES, batch_size=64, progress=False)
    ds = ImageFolder(str(tmp / "shapes" / "test"), transform=transform)
    assert ds.classes == data.classnames and [s[0] for s in ds.samples] == data.images
    loader = torch.utils.data.DataLoader(ds, batch_size=32, shuffle=False)
    theirs = cb_zc.evaluate(tmodel, loader, tokenizer, ds.classes, TEMPLATES, device="cpu", amp=False)
    logits, _ = cb_zc.run_classification(
        tmodel, cb_zc.zero_shot_classifier(tmodel, tokenizer, ds.classes, TEMPLATES, "cpu", amp=False), loader, "cpu",
        amp=False)
    assert_close_metrics(ours, theirs, len(data), near_ties(logits.numpy() / 100))
    assert ours["acc1"] > 0.9  # the bundled model knows its shapes


def retrieval_near_ties(images: np.ndarray, texts: np.ndarray, owner: np.ndarray) -> tuple[int, int]:
    """(text queries, image queries) with some other key scoring within MARGIN of the best positive."""
    scores = texts @ images.T
    positive = owner[:, None] == np.arange(len(images))[None, :]

    def count(s, pos):
        best = np.where(pos, s, -np.inf).max(axis=1)
        close = (np.abs(s - best[:, None]) < MARGIN) & ~(pos & (s == best[:, None]))
        return int(np.sum(close.any(axis=1) & np.isfinite(best)))

    return count(scores, positive), count(scores.T, positive.T)


@needs_cb
def test_zeroshot_retrieval_matches_clip_benchmark(tiny, tmp_path):
    tmp, model, preprocess, (tmodel, transform, tokenizer) = tiny
    from PIL import Image

    data = eval_data.classification_data(tmp / "shapes", "test")
    images = data.images[:60]
    rng = np.random.default_rng(0)
    rows = [["image", "caption"]]
    captions = []
    for i, p in enumerate(images):  # 1 to 3 captions each, of the image's own class, never two alike
        label = data.classnames[data.labels[i]]
        caps = [f"{synthetic.prompt(label)} number {i}", f"a photo of a {label}, {i}", f"{i}: a {label}"]
        captions.append(caps[: 1 + int(rng.integers(3))])
        rows += [[p, c] for c in captions[-1]]
    with open(tmp_path / "pairs.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    pairs = eval_data.retrieval_data(tmp_path / "pairs.csv")
    assert pairs.images == images and pairs.captions == captions
    ours = ev.zeroshot_retrieval(model, preprocess, pairs, batch_size=64, progress=False)

    class Pairs(torch.utils.data.Dataset):
        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            return transform(Image.open(images[i])), captions[i]

    def collate(batch):
        return torch.stack([b[0] for b in batch]), [b[1] for b in batch]

    loader = torch.utils.data.DataLoader(Pairs(), batch_size=16, collate_fn=collate)
    theirs = cb_zr.evaluate(tmodel, loader, tokenizer, "cpu", amp=False, recall_k_list=[1, 5, 10])
    assert list(ours) == list(theirs)
    sharded = ev.sharded_model(model, batch_size=64)
    owner = np.asarray([i for i, c in enumerate(captions) for _ in c])
    img = ev.image_features(sharded, preprocess, images, progress=False)
    txt = ev.text_features(sharded, [t for c in captions for t in c])
    by_text, by_image = retrieval_near_ties(img, txt, owner)
    for k in ours:
        ties, n = (by_text, len(owner)) if k.startswith("image") else (by_image, len(images))
        assert abs(ours[k] - theirs[k]) <= ties / n + 1e-6, (k, ours[k], theirs[k], ties)


@needs_cb
@pytest.mark.slow
def test_shrunk_random_open_clip_model(tmp_path):
    """The code path for open_clip's own checkpoints: a random open_clip CLIP (exact GELU, 77-token context)
    saved with torch, loaded by clip_jax.load from its open_clip_config.json."""
    from torchvision.datasets import ImageFolder

    cfg = {"model_cfg": {"embed_dim": 32, "quick_gelu": False,
                         "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8, "head_width": 32},
                         "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}}
    torch.manual_seed(0)
    tmodel = open_clip.model.CLIP(**cfg["model_cfg"]).eval()
    torch.save(tmodel.state_dict(), tmp_path / "random.pt")
    (tmp_path / "open_clip_config.json").write_text(json.dumps(cfg))
    write_folder(tmp_path / "data", 60, seed=5, size=40)
    model, preprocess = clip_jax.load(tmp_path / "random.pt")
    data = eval_data.image_folder(tmp_path / "data")
    ours = ev.zeroshot_classification(model, preprocess, data, ["a {c}"], batch_size=32, progress=False)
    transform = open_clip.image_transform(32, is_train=False)
    ds = ImageFolder(str(tmp_path / "data"), transform=transform)
    loader = torch.utils.data.DataLoader(ds, batch_size=16)
    theirs = cb_zc.evaluate(tmodel, loader, open_clip.tokenize, ds.classes, ["a {c}"], device="cpu", amp=False)
    clf = cb_zc.zero_shot_classifier(tmodel, open_clip.tokenize, ds.classes, ["a {c}"], "cpu", amp=False)
    logits, _ = cb_zc.run_classification(tmodel, clf, loader, "cpu", amp=False)
    assert_close_metrics(ours, theirs, len(data), near_ties(logits.numpy() / 100))


# --- the linear probe -------------------------------------------------------------------------------


@pytest.mark.slow
def test_probe_within_a_point_of_scikit_learn(tiny):
    """Same features, same validation split, same sweep; scikit-learn's C = 1 / (wd * n)."""
    LogisticRegression = pytest.importorskip("sklearn.linear_model").LogisticRegression

    tmp, model, preprocess, _ = tiny
    sharded = ev.sharded_model(model, batch_size=64)
    train = eval_data.classification_data(tmp / "shapes", "train")
    test = eval_data.classification_data(tmp / "shapes", "test")
    # Harder than the synthetic task: features with noise, so the regularization matters.
    rng = np.random.default_rng(0)

    def noisy(x):
        x = x + 0.06 * rng.standard_normal(x.shape).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    train_x = noisy(ev.image_features(sharded, preprocess, train.images, progress=False))
    test_x = noisy(ev.image_features(sharded, preprocess, test.images, progress=False))
    ours = ev.probe_metrics(train_x, train.labels, test_x, test.labels, 30, max_iter=500)

    tr, va = ev._split_val(len(train_x), 0.2, 0)

    def sk_fit(x, y, c, wd):
        clf = LogisticRegression(C=1 / (wd * len(x)), max_iter=500, tol=1e-6).fit(x, y)
        w = np.zeros((x.shape[1], c), np.float32)
        b = np.full(c, -np.inf, np.float32)
        w[:, clf.classes_], b[clf.classes_] = clf.coef_.T, clf.intercept_
        return w, b

    best_wd, _ = ev.probe_sweep(train_x[tr], train.labels[tr], train_x[va], train.labels[va], 30, fit=sk_fit)
    w, b = sk_fit(train_x, train.labels, 30, best_wd)
    theirs = ev.classification_metrics(test_x @ w + b, test.labels, with_acc5=True)
    print("ours", ours, "scikit-learn", best_wd, theirs)
    assert abs(ours["lp_acc1"] - theirs["acc1"]) <= 0.01 + 1e-9
    assert abs(ours["lp_mean_per_class_recall"] - theirs["mean_per_class_recall"]) <= 0.01 + 1e-9
    assert ours["lp_acc1"] > 0.8


def test_probe_sweep_is_clip_benchmark_s_search():
    """The indices tried: 0, 16, ..., 96 first, then peak -+ 8, 4, 2, 1 around the best; the first best kept."""
    tried = []

    def fit(x, y, c, wd):  # validation acc1 = 1 - |i - 35| / 100 at index i
        i = int(np.argmin(np.abs(ev.WD_LIST - wd)))
        tried.append(i)
        w = np.zeros((100, 2), np.float32)
        right = 100 - abs(i - 35)
        w[:right, 1], w[right:, 0] = 1, 1
        return w, np.zeros(2, np.float32)

    best, accs = ev.probe_sweep(None, None, np.eye(100, dtype=np.float32), np.ones(100, np.int64), 2, fit=fit)
    assert tried == [0, 16, 32, 48, 64, 80, 96, 24, 40, 28, 36, 34, 38, 33, 35]
    assert best == ev.WD_LIST[35] and accs[float(ev.WD_LIST[34])] == 0.99


# --- data layouts, the cache, the command -----------------------------------------------------------


def wds_export(src, write) -> list[int]:
    """CLIP_benchmark's export of `src` in 2 shards: write(relative path, bytes) for each file; -> the
    order the samples are stored in."""
    import io

    write("test/nshards.txt", b"2\n")
    write("classnames.txt", ("\n".join(src.classnames) + "\n").encode())
    write("zeroshot_classification_templates.txt", ("\n".join(TEMPLATES) + "\n").encode())
    for shard in range(2):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for i in range(shard, len(src), 2):
                for ext, data in (("cls", str(src.labels[i]).encode()), ("png", Path(src.images[i]).read_bytes())):
                    info = tarfile.TarInfo(f"s{i:05d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        write(f"test/{shard}.tar", buf.getvalue())
    return [int(i) for s in range(2) for i in range(s, len(src), 2)]


def test_wds_layout(tmp_path, tiny):
    """CLIP_benchmark's export: split/nshards.txt, split/N.tar with cls + image, classnames and templates."""
    tmp, model, preprocess, _ = tiny
    src = eval_data.classification_data(tmp / "shapes", "test")
    root = tmp_path / "wds_shapes"

    def write(rel, data):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)

    order = wds_export(src, write)
    data = eval_data.classification_data(root)
    assert len(data) == len(src) and data.templates == TEMPLATES and data.classnames == src.classnames
    assert data.labels.tolist() == src.labels[order].tolist()
    assert data.images[3] == Path(src.images[order[3]]).read_bytes()
    ours = ev.zeroshot_classification(model, preprocess, data, batch_size=64, progress=False)
    folder = ev.zeroshot_classification(model, preprocess, src, TEMPLATES, batch_size=64, progress=False)
    assert ours == folder  # the same images in another order: the same metrics
    by_url = eval_data.classification_data(f"file://{root}")  # the same shards through fsspec
    assert by_url.labels.tolist() == data.labels.tolist() and by_url.images[7] == data.images[7]


def test_wds_layout_at_an_fsspec_url(tiny):
    """The wds layout on fsspec's in-memory file system: read through clip_jax.data.sources, images read back
    by ranged reads; the same samples and metrics as the local folder."""
    fsspec = pytest.importorskip("fsspec")
    tmp, model, preprocess, _ = tiny
    src = eval_data.classification_data(tmp / "shapes", "test")
    fs = fsspec.filesystem("memory")
    try:
        order = wds_export(src, lambda rel, data: fs.pipe(f"/wds_shapes/{rel}", data))
        data = eval_data.classification_data("memory://wds_shapes")
        assert data.name == "wds_shapes" and data.templates == TEMPLATES and data.classnames == src.classnames
        assert data.labels.tolist() == src.labels[order].tolist()
        assert [data.images[i] for i in (0, 5, len(src) - 1)] == [
            Path(src.images[order[i]]).read_bytes() for i in (0, 5, len(src) - 1)]
        assert data.fingerprint == eval_data.classification_data("memory://wds_shapes/", "test").fingerprint
        ours = ev.zeroshot_classification(model, preprocess, data, batch_size=64, progress=False)
        assert ours == ev.zeroshot_classification(model, preprocess, src, TEMPLATES, batch_size=64, progress=False)
        with pytest.raises(FileNotFoundError, match="wds layout"):  # neither wds shards nor a folder
            eval_data.classification_data("memory://wds_shapes", "train")
    finally:
        fs.rm("/wds_shapes", recursive=True)


def _copy_to_memory(fs, local: Path, at: str) -> None:
    for f in sorted(local.rglob("*")):
        if f.is_file():
            fs.pipe(f"{at}/{f.relative_to(local).as_posix()}", f.read_bytes())


def test_image_folder_at_an_fsspec_url(tiny, tmp_path):
    """The same small ImageFolder tree (a nested subfolder, a non-image file, classnames and templates
    beside the split) locally and on fsspec's in-memory file system: the same samples in the same order,
    images read back through fsspec, the same metrics; the cache key from what the store reports."""
    fsspec = pytest.importorskip("fsspec")
    tmp, model, preprocess, _ = tiny
    src = eval_data.classification_data(tmp / "shapes", "test")
    root = tmp_path / "small_tree"
    first = src.classnames[src.labels[0]]
    for i in range(0, len(src), 10):  # 15 images over most of the classes
        label = src.classnames[src.labels[i]]
        # one nested below the first class's x000.png: a walk lists x000.png first, a sort of paths not
        rel = f"test/{first}/sub/x{i:03d}.png" if i == 30 else f"test/{label}/x{i:03d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(Path(src.images[i]).read_bytes())
    (root / "test" / src.classnames[src.labels[0]] / "notes.txt").write_text("not an image")
    folders = sorted(p.name for p in (root / "test").iterdir())
    (root / "classnames.txt").write_text("".join(f"{c}\n" for c in folders))
    (root / "zeroshot_classification_templates.txt").write_text("\n".join(TEMPLATES) + "\n")
    (root / "upper.txt").write_text("".join(f"{c.upper()}\n" for c in folders))
    fs = fsspec.filesystem("memory")
    try:
        _copy_to_memory(fs, root, "/small_tree")
        local = eval_data.classification_data(root, "test")
        data = eval_data.classification_data("memory://small_tree", "test")
        assert isinstance(local.images, list)  # local trees stay plain paths
        assert [Path(p).relative_to(root).as_posix() for p in local.images[:2]] == [
            f"test/{first}/x000.png", f"test/{first}/sub/x030.png"]
        assert data.name == local.name == "small_tree" and data.templates == local.templates == TEMPLATES
        assert data.classnames == local.classnames == folders and data.labels.tolist() == local.labels.tolist()
        assert data.images.paths == [f"memory://small_tree/{Path(p).relative_to(root).as_posix()}"
                                     for p in local.images]
        assert list(data.images) == [Path(p).read_bytes() for p in local.images]
        assert eval_data.image_folder("memory://small_tree/test", "memory://small_tree/upper.txt").classnames == [
            c.upper() for c in folders]
        ours = ev.zeroshot_classification(model, preprocess, data, batch_size=64, progress=False)
        assert len(folders) >= 5 and not np.isnan(ours["acc5"])
        assert ours == ev.zeroshot_classification(model, preprocess, local, batch_size=64, progress=False)
        assert data.fingerprint == eval_data.classification_data("memory://small_tree/", "test").fingerprint
        fs.pipe(data.images.paths[5].split("://", 1)[1], list(data.images)[5])  # rewritten: a new object
        assert data.fingerprint != eval_data.classification_data("memory://small_tree", "test").fingerprint
    finally:
        fs.rm("/small_tree", recursive=True)


def test_caption_table_at_an_fsspec_url(tiny, tmp_path):
    """The same CSV (relative image paths, an image named twice, a cell of two captions) locally and on
    fsspec's in-memory file system: the same samples and metrics. Relative paths resolve against the
    table's own folder URL, image URLs are kept (also in a local table)."""
    fsspec = pytest.importorskip("fsspec")
    tmp, model, preprocess, _ = tiny
    src = eval_data.classification_data(tmp / "shapes", "test")
    root = tmp_path / "pairs"
    rows = [["image", "caption"]]
    for i in range(8):
        (root / "img").mkdir(parents=True, exist_ok=True)
        (root / "img" / f"{i}.png").write_bytes(Path(src.images[19 * i]).read_bytes())
        label = src.classnames[src.labels[19 * i]]
        rows.append([f"img/{i}.png", f"a {label}, number {i}" + (f"\na photo of a {label}" if i % 3 == 0 else "")])
    rows.append(["img/2.png", "the third image again"])
    with open(root / "pairs.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    fs = fsspec.filesystem("memory")
    try:
        _copy_to_memory(fs, root, "/pairs")
        local = eval_data.retrieval_data(root / "pairs.csv")
        data = eval_data.retrieval_data("memory://pairs/pairs.csv")
        assert isinstance(local.images, list) and data.name == local.name == "pairs"
        assert data.captions == local.captions and len(data.captions[2]) == 2 and len(data.captions[0]) == 2
        assert data.images.paths == [f"memory://pairs/img/{i}.png" for i in range(8)]
        assert list(data.images) == [Path(p).read_bytes() for p in local.images]
        ours = ev.zeroshot_retrieval(model, preprocess, data, batch_size=64, progress=False)
        assert ours == ev.zeroshot_retrieval(model, preprocess, local, batch_size=64, progress=False)
        assert data.fingerprint == eval_data.retrieval_data("memory://pairs/pairs.csv").fingerprint != local.fingerprint

        fs.pipe("/pairs/sub/more.tsv", b"filepath\ttext\n../img/1.png\tone\nmemory://pairs/img/4.png\tfour\n")
        more = eval_data.caption_table("memory://pairs/sub/more.tsv")
        assert more.images.paths == ["memory://pairs/img/1.png", "memory://pairs/img/4.png"]
        (tmp_path / "mixed.csv").write_text("image,caption\npairs/img/0.png,zero\nmemory://pairs/img/4.png,four\n")
        mixed = eval_data.caption_table(tmp_path / "mixed.csv")
        assert mixed.images[0] == str(root / "img" / "0.png") and mixed.images[1] == list(data.images)[4]
        fs.pipe("/pairs/gone.csv", b"image,caption\nimg/0.png,zero\nimg/99.png,lost\n")
        with pytest.raises(FileNotFoundError, match="1 image.*img/99.png"):
            eval_data.caption_table("memory://pairs/gone.csv")
    finally:
        fs.rm("/pairs", recursive=True)


def test_cli_result_file_and_cache(tiny, tmp_path, monkeypatch, capsys):
    from clip_jax.cli import main as cli

    tmp, *_ = tiny
    out = tmp_path / "{dataset}_{model}_{task}.json"
    args = ["eval", "zeroshot_classification", str(tmp / "shapes"), "--split", "test", "--model", str(TINY_CLIP),
            "--templates", "a {c}", "--cache", str(tmp_path / "cache"), "--no-progress", "--batch-size", "64"]
    assert cli.main(args + ["--output", str(out)]) == 0
    written = json.loads((tmp_path / "shapes_tiny_clip_zeroshot_classification.json").read_text())
    assert list(written) == ["dataset", "model", "pretrained", "task", "metrics", "language"]
    assert written["task"] == "zeroshot_classification" and written["pretrained"] == "tiny_clip.pt"
    assert set(written["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}
    assert json.loads(capsys.readouterr().out) == written
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1

    def no_embedding(*a, **k):
        raise AssertionError("embedded again despite the cache")

    monkeypatch.setattr(ev, "image_features", no_embedding)
    assert cli.main(args) == 0
    assert json.loads(capsys.readouterr().out)["metrics"] == written["metrics"]


def test_user_errors(tmp_path, capsys):
    from clip_jax.cli import main as cli

    (tmp_path / "empty").mkdir()
    assert cli.main(["eval", "zeroshot_classification", str(tmp_path / "empty"), "--model", "x"]) == 1
    assert "no class folders" in capsys.readouterr().err
    (tmp_path / "pairs.csv").write_text("picture,words\na.png,a cat\n")
    assert cli.main(["eval", "zeroshot_retrieval", str(tmp_path / "pairs.csv"), "--model", "x"]) == 1
    assert "no image column" in capsys.readouterr().err
    with pytest.raises(ValueError, match="where the class name goes"):
        ev.resolve_templates("a photo")
    assert ev.resolve_templates("a {c} and x") == ["a {} and x"]


# --- multi-host: two processes give the metrics of one ----------------------------------------------

MULTIHOST_TIMEOUT = 240  # seconds for one two-process run; a hang fails the test instead of stalling the suite


def _coordinator_port() -> int:
    """A port that is free now, drawn below the kernel's ephemeral range (so no outgoing connection made
    meanwhile takes it, as a port from bind(0) can be); the caller still retries if it was lost."""
    import random
    import socket

    lo = 32768
    try:
        lo = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    for _ in range(100):
        port = random.randrange(max(1024, lo - 12000), lo)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port found")


def _run_processes(argvs: list[list[str]], devices: list[int], logs: list[Path]) -> list[int]:
    """Start one process per argv (a session of its own each, CPU devices as given); return their exit
    codes. When one fails the others are killed, so a peer waiting on a dead coordinator doesn't hang."""
    import os
    import signal
    import subprocess
    import sys
    import time

    root = Path(__file__).resolve().parents[1]
    procs = []
    for argv, n, log in zip(argvs, devices, logs):
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}", "JAX_PLATFORMS": "cpu",
               "PYTHONPATH": str(root)}
        procs.append(subprocess.Popen([sys.executable, *argv], env=env, cwd=root, stdout=log.open("w"),
                                      stderr=subprocess.STDOUT, start_new_session=True))
    deadline = time.monotonic() + MULTIHOST_TIMEOUT
    try:
        while time.monotonic() < deadline and any(p.poll() is None for p in procs):
            if any(p.poll() not in (None, 0) for p in procs):
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    return [p.returncode for p in procs]


@pytest.fixture(scope="module")
def multihost(tmp_path_factory):
    """The worker (tests/eval_worker.py) in two processes of 2 CPU devices each, and in one process of one
    device: 21 synthetic images (not a multiple of the 4 devices or the batch of 8), 25 captions."""
    tmp = tmp_path_factory.mktemp("eval_multihost")
    images, samples = synthetic.generate(21, seed=5)
    rows = []
    for i, (im, s) in enumerate(zip(images, samples)):
        # every third image filed under, and captioned as, the next one: metrics well short of 1, so
        # equal metrics say something
        wrong = samples[(i + 1) % len(samples)] if i % 3 == 0 else s
        (tmp / "test" / wrong.label).mkdir(parents=True, exist_ok=True)
        path = tmp / "test" / wrong.label / f"{i:03d}.png"
        im.save(path)
        rows.append((str(path), wrong.caption()))
        if i % 5 == 0:  # some images with two captions
            rows.append((str(path), s.caption(with_size=False, with_position=False)))
    with open(tmp / "pairs.csv", "w", newline="") as f:
        csv.writer(f).writerows([("image", "caption"), *rows])
    worker = str(Path(__file__).with_name("eval_worker.py"))
    args = [worker, str(TINY_CLIP), str(tmp), str(tmp)]
    code = _run_processes([args + ["-", "1", "9"]], [1], [tmp / "log9.txt"])[0]
    assert code == 0, (tmp / "log9.txt").read_text()[-3000:]
    logs = [tmp / "log0.txt", tmp / "log1.txt"]
    for attempt in range(3):  # the coordinator's port can be taken between picking it and binding it
        coordinator = f"127.0.0.1:{_coordinator_port()}"
        codes = _run_processes([args + [coordinator, "2", str(i)] for i in range(2)], [2, 2], logs)
        text = "\n".join(log.read_text() for log in logs)
        if codes == [0, 0] or "address already in use" not in text.lower():
            break
    for code, log in zip(codes, logs):
        assert code == 0, f"worker exited {code}:\n{log.read_text()[-3000:]}"
    return {i: json.loads((tmp / f"result_{i}.json").read_text()) for i in (0, 1, 9)}


@pytest.mark.slow  # three processes compiling the towers: ~70 s of CPU
def test_two_processes_give_the_metrics_of_one(multihost):
    """zeroshot_classification (through the feature cache, missed then hit) and zeroshot_retrieval on two
    processes x 2 devices equal one process on one device, in both processes, exactly: the features agree
    to ~1e-7 and no two scores of this data set are that close."""
    r = multihost
    assert r[0]["devices"] == [4, 2] and r[1]["devices"] == [4, 2] and r[9]["devices"] == [1, 1]
    for pid in (0, 1):
        for task in ("classification", "classification_cached", "retrieval"):
            assert r[pid][task] == r[9][task], (pid, task)
        assert r[pid]["cache_files"] == 1  # written once, by process 0, and read back by both
    assert set(r[9]["retrieval"]) == {f"{d}_retrieval_recall@{k}" for d in ("image", "text") for k in (1, 5, 10)}
    for metric in ("image_retrieval_recall@1", "text_retrieval_recall@1"):  # the data set the fixture spoils
        assert 0.2 < r[9]["retrieval"][metric] < 0.95
    assert 0.2 < r[9]["classification"]["acc1"] < 0.95


def test_result_names_the_data_set_not_its_split_folder(tmp_path, capsys):
    """CLIP_benchmark names a result by its data set ("cifar10"), never by a split folder ("test")."""
    from clip_jax.cli import main as cli

    write_folder(tmp_path / "shapes" / "test", 6, seed=3, size=32)
    assert eval_data.dataset_name(tmp_path / "shapes" / "test") == "shapes"
    assert eval_data.dataset_name(f"{tmp_path}/shapes/Test/") == "shapes"
    assert eval_data.dataset_name(tmp_path / "shapes") == "shapes"  # the data set itself, or a folder of classes
    assert eval_data.dataset_name("memory://bucket/cifar10/test") == "cifar10"
    assert eval_data.dataset_name("memory://test") == "test"  # nothing above it to name
    args = ["eval", "zeroshot_classification", str(tmp_path / "shapes" / "test"), "--model", str(TINY_CLIP),
            "--templates", "a {c}", "--no-cache", "--no-progress"]
    assert cli.main(args) == 0
    assert json.loads(capsys.readouterr().out)["dataset"] == "shapes"
    assert cli.main(args + ["--dataset-name", "my_shapes"]) == 0
    assert json.loads(capsys.readouterr().out)["dataset"] == "my_shapes"
