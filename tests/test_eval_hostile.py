"""clip_jax.eval on hostile and careless input (issue 23, class 6, the nshards.txt bound of class 4, and
class 9's fuzz tests of eval's readers): every case is one line naming the file, shard or sample, from
the command line too, and never after the evaluation's work is lost.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, strategies as st

import clip_jax.jobs.eval as ev
from clip_jax.cli import main as cli
from clip_jax.cli.demo import TINY_CLIP
from clip_jax.data import storage
from clip_jax.errors import ClipJaxError, InputError, LimitError, ShardError
from clip_jax.jobs import eval_data, results

from .fuzz import FUZZ, any_bytes, bounded, mutated

PNG = b"\x89PNG\r\n\x1a\n not decoded here"  # wds_dataset reads offsets, not pixels


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def wds(root: Path, shards: list[list[tuple[str, bytes]]], classnames=("cat", "dog"), kind=None) -> Path:
    """CLIP_benchmark's wds layout at root: test/nshards.txt, test/N.tar, classnames.txt."""
    (root / "test").mkdir(parents=True, exist_ok=True)
    (root / "test" / "nshards.txt").write_text(f"{len(shards)}\n")
    (root / "classnames.txt").write_text("\n".join(classnames) + "\n")
    if kind:
        (root / "dataset_type.txt").write_text(kind + "\n")
    for i, members in enumerate(shards):
        (root / "test" / f"{i}.tar").write_bytes(tar_bytes(members))
    return root


def samples(*labels: bytes, field: str = "cls") -> list[tuple[str, bytes]]:
    return [m for i, label in enumerate(labels) for m in ((f"s{i}.png", PNG), (f"s{i}.{field}", label))]


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def no_work(monkeypatch):
    """The evaluation's work (reading the data) fails the test if it starts."""
    def started(*a, **k):
        raise AssertionError("the evaluation started")

    for name in ("classification_data", "retrieval_data"):
        monkeypatch.setattr(eval_data, name, started)


# --- -o / --output ----------------------------------------------------------------------------------


def test_unknown_output_placeholder_is_refused_before_the_work(tmp_path, no_work, capsys):
    """Today a KeyError once the whole evaluation ran, and the result lost."""
    args = ["eval", "zeroshot_classification", str(tmp_path), "--model", "x"]
    assert cli.main(args + ["-o", str(tmp_path / "{dataset}_{nonexistent}.json")]) == 1
    line = one_line(capsys.readouterr().err)
    assert "{nonexistent}" in line and "{dataset} {model} {pretrained} {task} {language}" in line
    for bad in ("{0}.json", "{dataset:d}.json", "{unclosed.json"):
        assert cli.main(args + ["-o", str(tmp_path / bad)]) == 1
        assert "--output" in one_line(capsys.readouterr().err)
    with pytest.raises(InputError, match="unknown placeholder {nonexistent}"):
        results.write_result(tmp_path / "{nonexistent}.json", results.result("d", "m", "p", "t", {}))
    assert results.output_path("r/{dataset}_{{x}}.json", {"dataset": "a/b"}) == Path("r/a_b_{x}.json")


def test_unwritable_output_is_refused_before_the_work(tmp_path, no_work, capsys):
    (tmp_path / "a_file").write_text("")
    (tmp_path / "a_folder").mkdir()
    args = ["eval", "zeroshot_classification", str(tmp_path), "--model", "x", "-o"]
    assert cli.main(args + [str(tmp_path / "a_file" / "{task}.json")]) == 1
    assert "a_file/x.json: Not a directory" in one_line(capsys.readouterr().err)
    assert cli.main(args + [str(tmp_path / "a_folder")]) == 1
    assert "a directory" in one_line(capsys.readouterr().err)


def test_write_result_makes_missing_folders(tmp_path):
    res = results.result("d", "m", "p", "t", {"acc1": 1.0})
    path = results.write_result(tmp_path / "new" / "{task}" / "r.json", res)
    assert path == tmp_path / "new" / "t" / "r.json" and json.loads(path.read_text()) == res


# --- CSV --------------------------------------------------------------------------------------------


@pytest.fixture
def pairs(tmp_path) -> Path:
    (tmp_path / "a.png").write_bytes(PNG)
    (tmp_path / "b.png").write_bytes(PNG)
    return tmp_path


def test_csv_field_over_the_limit_names_file_and_line(pairs, capsys):
    """Today `_csv.Error: field larger than field limit`, a traceback."""
    csv_file = pairs / "pairs.csv"
    csv_file.write_text("image,caption\na.png,fine\nb.png," + "x" * 140_000 + "\n")
    with pytest.raises(InputError, match=r"pairs.csv:3: field larger than field limit"):
        eval_data.caption_table(csv_file)
    assert cli.main(["eval", "zeroshot_retrieval", str(csv_file), "--model", "x"]) == 1
    assert f"{csv_file}:3: field larger" in one_line(capsys.readouterr().err)


def test_csv_not_utf8_names_file_and_byte(pairs, capsys):
    """Today 'utf-8' codec can't decode ...: a line that names no file."""
    csv_file = pairs / "pairs.csv"
    head = b"image,caption\na.png,caf\xc3\xa9\nb.png,"
    csv_file.write_bytes(head + b"bad \xff byte\n")
    assert cli.main(["eval", "zeroshot_retrieval", str(csv_file), "--model", "x"]) == 1
    line = one_line(capsys.readouterr().err)
    assert str(csv_file) in line and f"not UTF-8 text (at byte {len(head) + 4})" in line
    # past the first MiB, and a character cut at the edge of a chunk, counted right
    far = b"image,caption\n" + b"a.png,\xc3\xa9\n" * 200_000
    csv_file.write_bytes(far + b"b.png,\xe2\x82\n")
    with pytest.raises(InputError, match=rf"at byte {len(far) + 6}\)"):
        eval_data.caption_table(csv_file)


def test_csv_url_of_an_unknown_protocol_is_one_line(pairs):
    (pairs / "pairs.csv").write_text("image,caption\nnosuchprotocol://x/a.png,a\n")
    with pytest.raises(ClipJaxError, match="nosuchprotocol://x/a.png"):
        eval_data.caption_table(pairs / "pairs.csv")


def test_missing_images_are_the_project_s_error(pairs):
    (pairs / "pairs.csv").write_text("image,caption\na.png,a\ngone.png,b\n")
    with pytest.raises(FileNotFoundError, match="gone.png") as e:
        eval_data.caption_table(pairs / "pairs.csv")
    assert isinstance(e.value, ClipJaxError)


# --- the wds layout ---------------------------------------------------------------------------------


def test_bad_tar_checksum_names_the_shard(tmp_path, capsys):
    """Today tarfile's InvalidHeaderError ("bad checksum"), a traceback."""
    root = wds(tmp_path / "wds", [samples(b"0", b"1"), samples(b"1", b"0")])
    shard = root / "test" / "1.tar"
    data = bytearray(shard.read_bytes())
    data[1024] ^= 0x20  # the second member's name: its header checksum no longer holds
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=r"test/1.tar: .*checksum"):
        eval_data.classification_data(root)
    assert cli.main(["eval", "zeroshot_classification", str(root), "--model", "x"]) == 1
    assert str(shard) in one_line(capsys.readouterr().err)


@pytest.mark.parametrize("cls", [b"\xff\xfe", b"cat", b"1.5", str(2**70).encode(), b"9" * 5000, b"-1"])
def test_unreadable_cls_names_shard_and_key(tmp_path, cls):
    """Today a UnicodeDecodeError or int()'s ValueError naming nothing, an OverflowError traceback past
    2^63, or a label of -1 reported without its sample: now refused with the shard and the key."""
    root = wds(tmp_path / "wds", [samples(b"0", cls, b"1")])
    with pytest.raises(InputError, match=r"test/0.tar: sample 's1': \.cls") as e:
        eval_data.classification_data(root)
    assert len(str(e.value)) < 200  # one short line, not the 5000 digits


def test_label_outside_the_classes_names_shard_and_key(tmp_path):
    root = wds(tmp_path / "wds", [samples(b"0"), samples(b"1", b"2")])
    with pytest.raises(InputError, match=r"test/1.tar: sample 's1': label 2 is outside the 2 classes"):
        eval_data.classification_data(root)


def test_images_read_back_at_their_offsets(tmp_path):
    """Members of exactly 512 and 1024 bytes (no padding), 1 byte, 513, dots in the folder part of a key
    (the key ends at the first dot of the file name, webdataset's rule): each image read back by offset
    is its member's bytes (a padding or key-splitting slip would shift or merge them)."""
    images = [b"a" * 512, b"b" * 1024, b"c", b"d" * 513]
    members = [m for i, im in enumerate(images) for m in ((f"v1.2/k{i}.png", im), (f"v1.2/k{i}.cls", b"1"))]
    members += [("v1.2/k9.x.png", b"e"), ("v1.2/k9.x.cls", b"0")]  # field "x.png": not an image, as there
    data = eval_data.classification_data(wds(tmp_path / "wds", [members[:4], members[4:]]))
    assert [data.images[i] for i in range(len(data))] == images and data.labels.tolist() == [1] * 4


def test_unreadable_wds_image_names_shard_and_key_without_reading_the_rest(tmp_path, monkeypatch):
    """Today "1 unreadable image(s), e.g. image 1": no shard, no key, found by reading every image again."""
    from clip_jax.parallel import EmbeddedBatch

    data = eval_data.classification_data(wds(tmp_path / "wds", [samples(b"0", b"1", b"0")]))

    class Sharded:  # embed_image_files' contract: rows of bad images are not ok, with (item, reason)
        class config:
            embed_dim = 4

        def embed_image_files(self, images, preprocess, normalized):
            yield EmbeddedBatch(0, np.zeros((2, 4), np.float32), np.array([True, False]), [(images[1], "bad PNG")])
            yield EmbeddedBatch(2, np.zeros((1, 4), np.float32), np.array([True]), [])

    reads = []
    monkeypatch.setattr(storage, "read_bytes", lambda *a: reads.append(a) or PNG)
    with pytest.raises(InputError, match=r"1 unreadable image\(s\), e.g. image 1, .*test/0.tar: sample 's1', "
                                         r"the member at byte \d+: bad PNG"):
        ev.image_features(Sharded(), None, data.images, progress=False)
    assert len(reads) == 1  # the one the stub read, not the whole data set again


@pytest.mark.slow  # the bundled model compiled: a few seconds
def test_unreadable_wds_image_through_the_model(tmp_path):
    from clip_jax import load

    model, preprocess = load(TINY_CLIP)
    png = io.BytesIO()
    __import__("PIL.Image").Image.new("RGB", (8, 8)).save(png, "PNG")
    members = [("s0.png", png.getvalue()), ("s0.cls", b"0"), ("s1.png", b"not a png"), ("s1.cls", b"1")]
    data = eval_data.classification_data(wds(tmp_path / "wds", [members]))
    with pytest.raises(InputError, match=r"e.g. image 1, .*0.tar: sample 's1', the member at byte 2560: not a"):
        ev.zeroshot_classification(model, preprocess, data, ["a {c}"], batch_size=8, progress=False)


def test_non_utf8_caption_is_replaced_not_a_traceback(tmp_path):
    """Today UnicodeDecodeError; now decoded as clip_jax.data.sources does (U+FFFD), the sample kept."""
    root = wds(tmp_path / "wds", [samples(b"a cat", b"a d\xffg", field="txt")], kind="retrieval")
    data = eval_data.retrieval_data(root)
    assert data.captions == [["a cat"], ["a d\ufffdg"]]


@pytest.mark.parametrize("text,error", [("300000000", LimitError), ("-1", LimitError), ("0", LimitError),
                                        ("two", InputError), ("1" * 100, LimitError), ("\xff", InputError)])
def test_nshards_is_bounded_before_use(tmp_path, text, error):
    """Today 300000000 made 3e8 shard names (unbounded growth), -1 and 0 a 'no samples' error that
    doesn't name nshards.txt, 'two' int()'s ValueError naming nothing."""
    root = wds(tmp_path / "wds", [samples(b"0")])
    (root / "test" / "nshards.txt").write_bytes(text.encode("latin-1"))
    with pytest.raises(error, match="nshards.txt"):
        eval_data.classification_data(root)


def test_text_files_are_read_with_a_byte_cap(tmp_path, monkeypatch):
    """classnames.txt and templates files are read up to MAX_TEXT_BYTES, not whatever size they are."""
    monkeypatch.setattr(eval_data, "MAX_TEXT_BYTES", 1000)
    root = wds(tmp_path / "wds", [samples(b"0")], classnames=["cat", "dog" * 400])
    with pytest.raises(LimitError, match="classnames.txt: larger than 1000 bytes"):
        eval_data.classification_data(root)
    (tmp_path / "t.txt").write_bytes(b"a {c}\n" * 200)
    with pytest.raises(LimitError, match="t.txt"):
        eval_data.read_lines(tmp_path / "t.txt")
    (tmp_path / "t.txt").write_bytes(b"a \xff{c}\n")
    with pytest.raises(InputError, match=r"t.txt: not UTF-8 text \(byte 2"):
        eval_data.read_lines(tmp_path / "t.txt")


def test_template_placeholders_and_files_are_checked_before_the_model(tmp_path, monkeypatch):
    """Today "a {c} {x}" was a KeyError at str.format once the model had loaded (eval and classify), and
    a templates file that isn't UTF-8 a line naming no file."""
    from clip_jax import zeroshot

    for spec in ("a {c} {x}", "a {} {0}", "a {c} {"):
        with pytest.raises(InputError, match="only {c} or {} may be in braces|where the class name goes"):
            ev.resolve_templates(spec)
        with pytest.raises(InputError):
            zeroshot.read_templates(spec.replace("{c}", "{}"))
    assert ev.resolve_templates("a {c} {{x}}") == ["a {} {{x}}"]
    (tmp_path / "t.txt").write_bytes(b"a {}\nb \xff {}\n")
    with pytest.raises(InputError, match=r"t.txt: not UTF-8 text \(byte 7\)"):
        zeroshot.read_templates(str(tmp_path / "t.txt"))
    monkeypatch.setattr(zeroshot, "MAX_TEMPLATE_BYTES", 10)
    (tmp_path / "t.txt").write_bytes(b"a {}\n" * 3)
    with pytest.raises(LimitError, match="t.txt: larger than 10 bytes"):
        zeroshot.read_templates(str(tmp_path / "t.txt"))


@FUZZ
@given(data=any_bytes(b"a photo of a {}.\nitap of a {}.\n"))
def test_classify_templates_fuzz(fuzz_dir, data):
    from clip_jax import zeroshot

    (fuzz_dir / "templates.txt").write_bytes(data)
    templates = bounded(lambda: zeroshot.read_templates(str(fuzz_dir / "templates.txt")))
    assert templates is None or all(t.format("x") for t in templates)


# --- the feature cache ------------------------------------------------------------------------------


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


GOOD = np.arange(12, dtype=np.float32).reshape(3, 4)


@pytest.mark.parametrize("bad", [b"garbage", _npy(GOOD)[:-5], _npy(GOOD) + b"x", _npy(GOOD[:2]),
                                 _npy(GOOD.astype(np.float64)), _npy(np.asfortranarray(GOOD)), b"",
                                 _npy(GOOD).replace(b"(3, 4)", b"(3, 4000000000000)"),
                                 b"\x93NUMPY\x02\x00\xff\xff\xff\xff{'descr'",  # a 4 GiB header claimed
                                 _npy(GOOD).replace(b"\x01\x00", b"\x03\x00", 1)])
def test_corrupt_cache_is_recomputed_with_a_warning_naming_it(tmp_path, bad):
    """Today np.load's error naming no file (or a wrong array used as it is), and the file stays broken."""
    path = tmp_path / "k.npy"
    path.write_bytes(bad)
    calls = []

    def compute():
        calls.append(1)
        return GOOD

    with pytest.warns(ev.CacheWarning, match=f"{path}: feature cache unusable"):
        out = ev._cached(tmp_path, "k", compute, (3, 4))
    assert calls and np.array_equal(out, GOOD)
    assert np.array_equal(ev.read_cache(path, (3, 4)), GOOD)  # replaced by a good one
    assert np.array_equal(ev._cached(tmp_path, "k", compute, (3, 4)), GOOD) and len(calls) == 1


def test_unwritable_cache_is_a_warning_not_the_loss_of_the_result(tmp_path):
    (tmp_path / "not_a_folder").write_text("")
    with pytest.warns(ev.CacheWarning, match="feature cache not stored"):
        out = ev._cached(tmp_path / "not_a_folder", "k", lambda: GOOD, (3, 4))
    assert np.array_equal(out, GOOD)


@pytest.mark.slow  # the bundled model compiled and run twice: 4 s alone, 15 s on a busy 2-core machine
def test_cli_recomputes_a_truncated_cache_and_prints_the_result_first(tmp_path, capsys):
    """End to end with the bundled model: a cache file cut short is one warning line and the same metrics;
    the result is on stdout before the result file is written."""
    from PIL import Image

    for i, c in enumerate(["circle", "square"] * 3):
        (tmp_path / "data" / c).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32), (40 * i, 0, 0)).save(tmp_path / "data" / c / f"{i}.png")
    cache = tmp_path / "cache"
    args = ["eval", "zeroshot_classification", str(tmp_path / "data"), "--model", str(TINY_CLIP), "--templates",
            "a {c}", "--cache", str(cache), "--no-progress", "--batch-size", "8"]
    assert cli.main(args + ["-o", str(tmp_path / "out" / "{task}.json")]) == 0
    first = json.loads(capsys.readouterr().out)
    assert json.loads((tmp_path / "out" / "zeroshot_classification.json").read_text()) == first
    (npy,) = cache.glob("*.npy")
    npy.write_bytes(npy.read_bytes()[:100])
    assert cli.main(args) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["metrics"] == first["metrics"]
    assert f"warning: {npy}: feature cache unusable" in one_line(err)
    assert npy.stat().st_size > 100  # stored again, whole


# --- fuzz (class 9): each reader returns or raises the project's own error, within the bound --------


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("fuzz")
    for name in ("a.png", "b.png", "c.png"):
        (d / name).write_bytes(PNG)
    return d


CSV_SEED = b'image,caption\na.png,a cat\nb.png,"two\nlines"\n"c.png","a, quoted ""dog"""\na.png,again\n'


@FUZZ
@given(data=any_bytes(CSV_SEED))
def test_caption_table_fuzz(fuzz_dir, data):
    (fuzz_dir / "t.csv").write_bytes(data)
    bounded(lambda: eval_data.caption_table(fuzz_dir / "t.csv"))


@FUZZ
@given(data=st.one_of(any_bytes(b"cat\ndog\n  bird  \n\nfish\n"), any_bytes(b"a photo of a {c}.\nitap of a {c}.\n")))
def test_text_file_readers_fuzz(fuzz_dir, data):
    (fuzz_dir / "lines.txt").write_bytes(data)
    lines = bounded(lambda: eval_data.read_lines(fuzz_dir / "lines.txt"))
    assert lines is None or all(s == s.strip() and s for s in lines)
    bounded(lambda: eval_data.read_nshards(str(fuzz_dir / "lines.txt")))
    bounded(lambda: ev.resolve_templates(str(fuzz_dir / "lines.txt")))


@FUZZ
@given(data=st.one_of(any_bytes(b"12\n"), st.text(max_size=80).map(str.encode)))
def test_nshards_fuzz(fuzz_dir, data):
    (fuzz_dir / "nshards.txt").write_bytes(data)
    n = bounded(lambda: eval_data.read_nshards(str(fuzz_dir / "nshards.txt")))
    assert n is None or 1 <= n <= eval_data.MAX_SHARDS


@FUZZ
@given(data=any_bytes(_npy(GOOD)))
def test_cache_reader_fuzz(fuzz_dir, data):
    (fuzz_dir / "c.npy").write_bytes(data)
    out = bounded(lambda: ev.read_cache(fuzz_dir / "c.npy", (3, 4)))
    assert out is None or (out.shape == (3, 4) and out.dtype == np.float32)


SHARD_SEED = tar_bytes(samples(b"0", b"1") + [("s2.jpg", b"x" * 512), ("s2.cls", b"1"), ("a.b.png", PNG),
                                                ("a.b.cls", b"0")])


@FUZZ
@given(data=mutated(SHARD_SEED))
def test_wds_shard_fuzz(fuzz_dir, data):
    root = fuzz_dir / "wds"
    if not (root / "classnames.txt").exists():
        wds(root, [[]])
    (root / "test" / "0.tar").write_bytes(data)
    bounded(lambda: eval_data.classification_data(root))
