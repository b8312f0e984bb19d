"""The library's refusals reach the command line as clip_jax errors: each is one line on stderr and exit
status 1 (cli.common.is_user_error), while an unexpected ValueError inside a command keeps its traceback."""

from __future__ import annotations

import pytest

from clip_jax.cli import main as cli
from clip_jax.jobs import embed as embed_job
from tests.tiny import save_tiny


@pytest.fixture
def model(tmp_path):
    return save_tiny(tmp_path / "tiny.safetensors")


@pytest.fixture
def captions(tmp_path):
    path = tmp_path / "caps.txt"
    path.write_text("a dog\na cat\n")
    return path


def one_line_error(capsys, argv: list) -> str:
    """Run the command line in-process; it must exit 1 with exactly one line on stderr, returned."""
    assert cli.main([str(a) for a in argv]) == 1
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("clip-jax: error: "), err
    return lines[0]


def test_an_unknown_model_name(tmp_path, capsys, captions):
    line = one_line_error(capsys, ["embed", "--captions", captions, "-o", tmp_path / "out", "--model", "ViT-B/99",
                                   "--no-progress"])
    assert "unknown model 'ViT-B/99' (and no such file)" in line


def test_convert_onto_its_own_input(tmp_path, capsys, model):
    before = model.read_bytes()
    line = one_line_error(capsys, ["convert", model, "-o", model])
    assert line == f"clip-jax: error: {model}: the output would overwrite the input; pass another output path"
    assert model.read_bytes() == before


def test_a_model_parallel_that_does_not_divide_the_devices(tmp_path, capsys, model, captions):
    line = one_line_error(capsys, ["embed", "--captions", captions, "-o", tmp_path / "out", "--model", model,
                                   "--model-parallel", 3, "--no-progress"])
    assert "model_parallel=3 must divide the number of devices" in line


def test_a_captions_file_that_is_not_utf8(tmp_path, capsys, model):
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("chien\nb\xe9b\xe9\n".encode("latin-1"))
    line = one_line_error(capsys, ["embed", "--captions", latin1, "-o", tmp_path / "out", "--model", model,
                                   "--no-progress"])
    assert line == f"clip-jax: error: {latin1}: not UTF-8 text (byte 7)"


def test_a_list_of_images_that_is_not_utf8(tmp_path, capsys, model):
    listing = tmp_path / "images.txt"
    listing.write_bytes("a.png\n\xe9t\xe9.png\n".encode("latin-1"))
    line = one_line_error(capsys, ["embed", listing, "-o", tmp_path / "out", "--model", model, "--no-progress"])
    assert line == f"clip-jax: error: {listing}: not UTF-8 text (byte 6)"


def test_an_unknown_attention_is_refused_by_the_parser(tmp_path, capsys, model):
    # argparse's choices refuse it before the library's InputError could: usage and exit status 2.
    with pytest.raises(SystemExit) as e:
        cli.main(["embed", "-o", str(tmp_path / "out"), "--model", str(model), "--attention", "bogus"])
    assert e.value.code == 2 and "invalid choice: 'bogus'" in capsys.readouterr().err


def test_an_unexpected_value_error_keeps_its_traceback(tmp_path, capsys, monkeypatch, model, captions):
    def read_captions(path):
        raise ValueError("boom")

    monkeypatch.setattr(embed_job, "read_captions", read_captions)
    with pytest.raises(ValueError, match="^boom$"):
        cli.main(["embed", "--captions", str(captions), "-o", str(tmp_path / "out"), "--model", str(model),
                  "--no-progress"])
    assert "boom" not in capsys.readouterr().err  # not printed as a one-line user error
