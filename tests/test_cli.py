"""Every ``lenet-fast`` command end to end on real files, run as ``python -m lenet_fast``,
including the error exits (one line on stderr, non-zero status, no traceback)."""

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import lenet_fast
from lenet_fast import LeNet, cli, datasets

PACKAGE_ROOT = str(Path(lenet_fast.__file__).resolve().parents[1])
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SAMPLE_IMAGES = datasets._data_file("fashion-mnist-sample-images-idx3-ubyte.gz")
SAMPLE_LABELS = datasets._data_file("fashion-mnist-sample-labels-idx1-ubyte.gz")


def run(*args, cwd=None, expect=0):
    environment = dict(os.environ, PYTHONPATH=PACKAGE_ROOT + os.pathsep +
                       os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-m", "lenet_fast", *map(str, args)], cwd=cwd,
                            env=environment, capture_output=True, text=True, timeout=600)
    assert result.returncode == expect, result.stderr
    assert "Traceback" not in result.stderr
    return result


def run_failing(*args, match, cwd=None, status=1):
    result = run(*args, cwd=cwd, expect=status)
    lines = result.stderr.strip().splitlines()
    if status == 1:
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("lenet-fast: error: ")
    assert match in result.stderr, result.stderr
    return result


@pytest.fixture(scope="module")
def sample():
    return datasets.load_sample()


@pytest.fixture(scope="module")
def fashion():
    return LeNet.pretrained("fashion-mnist")


def assert_valid_png(path):
    data = Path(path).read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    image = pytest.importorskip("PIL.Image")
    with image.open(path) as opened:
        opened.verify()
        assert opened.format == "PNG"
    pyplot = pytest.importorskip("matplotlib.pyplot")
    pixels = pyplot.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert pixels.std() > 0


# ---------------------------------------------------------------------------------------------
# demo, info
# ---------------------------------------------------------------------------------------------

def test_demo(sample, fashion):
    output = run("demo").stdout
    images, labels = sample
    expected = np.mean(fashion.predict(images) == labels)
    assert f"accuracy: {expected:.4f} ({int(round(expected * 1000)):,}/1,000 correct)" in output
    assert "Ankle boot" in output and "Pullover" in output
    assert "images/s" in output and "Zalando" in output


@pytest.mark.parametrize("spec", ["fashion-mnist", datasets.pretrained_path("mnist")])
def test_info(spec):
    output = run("info", spec).stdout
    for text in ("conv relu, fc1 sigmoid, output softmax, max pooling", "1-6-16-120-84-10",
                 "61,706", "833,040 (416,520 multiply-adds)", "uint8 x -> (x / 255 - ",
                 "provenance.command", "python -m lenet_fast.train --dataset",
                 "provenance.test_accuracy", "provenance.training_seconds",
                 lenet_fast.show_config(False)["isa"], "threads", "conv1"):
        assert text in output, text


def test_info_of_a_bare_model(tmp_path, fashion):
    LeNet(fashion.weights).save_npz(tmp_path / "bare.npz")
    output = run("info", tmp_path / "bare.npz").stdout
    assert "none stored: the model takes normalised float input only" in output
    assert "classes          none stored" in output


# ---------------------------------------------------------------------------------------------
# predict
# ---------------------------------------------------------------------------------------------

def read_csv(text):
    return list(csv.reader(io.StringIO(text)))


def test_predict_idx_to_csv_on_stdout(sample, fashion):
    result = run("predict", "fashion-mnist", SAMPLE_IMAGES)
    rows = read_csv(result.stdout)
    assert rows[0] == ["input", "label", "class"]
    expected = fashion.predict(sample[0])
    assert [int(row[1]) for row in rows[1:]] == expected.tolist()
    assert rows[1] == ["0", str(expected[0]), fashion.classes[expected[0]]]
    assert result.stderr == ""          # not a terminal: no progress bar


def test_predict_raw_idx_with_scores_to_csv_file(tmp_path, sample, fashion):
    datasets.write_idx(tmp_path / "images.idx", sample[0][:50])
    run("predict", datasets.pretrained_path("fashion-mnist"), tmp_path / "images.idx",
        "--out", tmp_path / "out.csv", "--scores", "--quiet")
    rows = read_csv((tmp_path / "out.csv").read_text())
    assert rows[0][:3] == ["input", "label", "class"]
    assert rows[0][3:] == [f"score_{name}" for name in fashion.classes]
    scores = np.array([[float(value) for value in row[3:]] for row in rows[1:]])
    np.testing.assert_allclose(scores, fashion.forward(sample[0][:50]), rtol=1e-5, atol=1e-6)


def test_predict_npy_to_npy(tmp_path, sample, fashion):
    np.save(tmp_path / "images.npy", sample[0][:300])
    result = run("predict", "fashion-mnist", tmp_path / "images.npy", "--out", tmp_path / "a.npy")
    labels = np.load(tmp_path / "a.npy")
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, fashion.predict(sample[0][:300]))
    assert "wrote labels of 300 images" in result.stderr
    run("predict", "fashion-mnist", tmp_path / "images.npy", "--out", tmp_path / "s.npy",
        "--scores", "--quiet")
    scores = np.load(tmp_path / "s.npy")
    assert scores.dtype == np.float32 and scores.shape == (300, 10)
    np.testing.assert_array_equal(scores.argmax(1), labels)


def test_predict_float_npy_is_taken_as_normalised(tmp_path, sample, fashion):
    p = fashion.metadata["preprocessing"]
    normalised = ((sample[0][:40] / np.float32(255) - np.float32(p["mean"]))
                  / np.float32(p["std"])).astype(np.float32)
    np.save(tmp_path / "x.npy", normalised)
    run("predict", "fashion-mnist", tmp_path / "x.npy", "--out", tmp_path / "y.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), fashion.predict(sample[0][:40]))


def test_predict_more_images_than_one_chunk(tmp_path, sample, fashion):
    images = np.tile(sample[0], (5, 1, 1))          # 5,000 images: two chunks of 4,096
    datasets.write_idx(tmp_path / "many.idx.gz", images)
    run("predict", "fashion-mnist", tmp_path / "many.idx.gz", "--out", tmp_path / "many.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "many.npy"), fashion.predict(images))


def test_predict_folder_of_images(tmp_path, sample, fashion):
    image = pytest.importorskip("PIL.Image")
    folder = tmp_path / "pictures"
    folder.mkdir()
    for i in range(6):
        suffix = "png" if i % 2 else "PNG"
        image.fromarray(sample[0][i]).save(folder / f"item{i}.{suffix}")
    (folder / "notes.txt").write_text("not an image")
    rows = read_csv(run("predict", "fashion-mnist", folder).stdout)
    assert [row[0] for row in rows[1:]] == [f"item{i}.{'png' if i % 2 else 'PNG'}"
                                            for i in range(6)]
    assert [int(row[1]) for row in rows[1:]] == fashion.predict(sample[0][:6]).tolist()


def test_a_folder_named_like_a_pretrained_model_does_not_hide_it(tmp_path, monkeypatch, capsys,
                                                                  sample, fashion):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fashion-mnist").mkdir()
    datasets.write_idx(tmp_path / "fashion-mnist" / "imgs.idx", sample[0][:20])
    assert cli.main(["predict", "fashion-mnist", os.path.join("fashion-mnist", "imgs.idx")]) == 0
    rows = read_csv(capsys.readouterr().out)
    assert [int(row[1]) for row in rows[1:]] == fashion.predict(sample[0][:20]).tolist()


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_help_tells_which_inputs_suit_which_models(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    # Spaces removed: argparse wraps to the terminal width, also at hyphens.
    text = "".join(capsys.readouterr().out.split())
    for phrase in ("or a folder of images (PNG, JPEG, BMP, GIF, WebP, TIFF; 28 x 28 or 32 x 32), "
                   "is read as grayscale, so it suits 1-channel models only",
                   "IDX files and images (like uint8 .npy files) hold uint8 pixels, which need a "
                   "model with stored preprocessing (e.g. the pretrained fashion-mnist and mnist)",
                   "a float .npy file is taken as normalised images and works with any model"):
        assert "".join(phrase.split()) in text


@pytest.fixture
def opened_idx_readers(monkeypatch):
    """Every `datasets.IdxReader` opened from now on, to check that each gets closed."""
    readers = []

    class RecordingIdxReader(datasets.IdxReader):
        def __init__(self, path):
            super().__init__(path)
            readers.append(self)

    monkeypatch.setattr(datasets, "IdxReader", RecordingIdxReader)
    return readers


@pytest.mark.parametrize("command, status", [
    (["predict", "fashion-mnist", SAMPLE_IMAGES, "--quiet"], 0),
    (["predict", "fashion-mnist", SAMPLE_IMAGES, "--out", "labels.txt"], 1),
    (["evaluate", "fashion-mnist", SAMPLE_IMAGES, "no-such-labels.idx"], 1),
    (["evaluate", "fashion-mnist", SAMPLE_IMAGES, SAMPLE_IMAGES], 1),   # images, not labels
])
def test_the_image_file_is_closed_however_the_command_ends(command, status, opened_idx_readers,
                                                          capsys):
    assert cli.main(command) == status
    assert opened_idx_readers
    assert all(reader._file.closed for reader in opened_idx_readers)


def test_predict_folder_errors(tmp_path):
    image = pytest.importorskip("PIL.Image")
    (tmp_path / "empty").mkdir()
    run_failing("predict", "fashion-mnist", tmp_path / "empty", match="folder holds no images "
                "(.png/.jpg/.jpeg/.bmp/.gif/.webp/.tif/.tiff), directly or in class subfolders")
    (tmp_path / "big").mkdir()
    image.new("L", (64, 48)).save(tmp_path / "big" / "photo.jpg")
    run_failing("predict", "fashion-mnist", tmp_path / "big",
                match="photo.jpg: expected a 28 x 28 or 32 x 32 image; found 64 x 48")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.png").write_bytes(b"not a png")
    run_failing("predict", "fashion-mnist", tmp_path / "broken",
                match="x.png: not a readable image")


# ---------------------------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------------------------

def test_evaluate(sample, fashion):
    output = run("evaluate", "fashion-mnist", SAMPLE_IMAGES, SAMPLE_LABELS).stdout
    images, labels = sample
    predicted = fashion.predict(images)
    correct = int(np.sum(predicted == labels))
    assert f"accuracy: {correct / 1000:.4f} ({correct:,}/1,000 correct)" in output
    assert "per-class accuracy:" in output and "Ankle boot" in output
    assert "confusion matrix (rows: true class, columns: predicted class):" in output
    trouser = np.sum((labels == 1) & (predicted == 1))
    assert "Trouser" in output and f"({trouser:,}/{np.sum(labels == 1):,})" in output


def test_evaluate_with_plot(tmp_path):
    pytest.importorskip("matplotlib")
    np.save(tmp_path / "labels.npy", datasets.load_sample()[1])
    output = run("evaluate", "fashion-mnist", SAMPLE_IMAGES, tmp_path / "labels.npy", "--plot",
                 tmp_path / "confusion.png").stdout
    assert f"wrote {tmp_path / 'confusion.png'}" in output
    assert_valid_png(tmp_path / "confusion.png")


def test_evaluate_keeps_copies_of_misclassified_images_not_views_into_chunks(
        tmp_path, monkeypatch, capsys, sample):
    plotted = {}
    monkeypatch.setattr(cli, "import_pyplot", lambda: None)
    monkeypatch.setattr(cli, "_plot_confusion", lambda path, confusion, names, mistakes, model, *_:
                        plotted.update(mistakes=mistakes))
    assert cli.main(["evaluate", "fashion-mnist", SAMPLE_IMAGES, SAMPLE_LABELS, "--plot",
                     str(tmp_path / "unused.png")]) == 0
    assert len(plotted["mistakes"]) == cli.MAX_PLOTTED_MISTAKES
    for index, image, truth, predicted in plotted["mistakes"]:
        assert image.base is None           # owns its pixels: the chunk can be freed
        np.testing.assert_array_equal(image, sample[0][index])
        assert truth == sample[1][index] and predicted != truth


# ---------------------------------------------------------------------------------------------
# Errors: one line, non-zero status, no traceback
# ---------------------------------------------------------------------------------------------

def test_missing_and_unknown_models(tmp_path):
    run_failing("info", "cifar10", match="model 'cifar10': no such file, and not a pretrained "
                                         "model name (expected one of fashion-mnist, mnist)")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    run_failing("info", tmp_path / "junk.npz", match="expected a .npz (zip) archive")


def test_missing_and_malformed_inputs(tmp_path, sample):
    run_failing("predict", "mnist", tmp_path / "nothing.idx", match="nothing.idx: no such file")
    datasets.write_idx(tmp_path / "images.idx", sample[0][:10])
    truncated = (tmp_path / "images.idx").read_bytes()[:-7]
    (tmp_path / "cut.idx").write_bytes(truncated)
    run_failing("predict", "mnist", tmp_path / "cut.idx", match="cut.idx: header declares "
                "10 x 28 x 28 uint8 (7,840 bytes), so the file should have 7,856 bytes; found "
                "7,849 (truncated file)")
    datasets.write_idx(tmp_path / "labels.idx", sample[1][:10].astype(np.uint8))
    run_failing("predict", "mnist", tmp_path / "labels.idx", match="expected an IDX file of "
                "images (3 or 4 dimensions: N, [channels,] 28 x 28 or 32 x 32 pixels); found "
                "shape (10,)")
    np.save(tmp_path / "odd.npy", np.zeros((3, 20, 20), np.uint8))
    run_failing("predict", "mnist", tmp_path / "odd.npy", match="odd.npy: expected a .npy file "
                "of images (3 or 4 dimensions: N, [channels,] 28 x 28 or 32 x 32 pixels); found "
                "shape (3, 20, 20)")
    np.save(tmp_path / "ints.npy", np.zeros((3, 28, 28), np.int32))
    run_failing("predict", "mnist", tmp_path / "ints.npy",
                match="x must hold floating-point (normalised) images or uint8 pixels; got "
                      "integer dtype int32")
    run_failing("predict", "mnist", SAMPLE_IMAGES, "--out", tmp_path / "labels.txt",
                match="expected a file name ending in .csv or .npy")


def test_integer_input_to_a_model_without_preprocessing(tmp_path, fashion):
    LeNet(fashion.weights).save_npz(tmp_path / "bare.npz")
    run_failing("predict", tmp_path / "bare.npz", SAMPLE_IMAGES,
                match="a model without stored preprocessing needs float input")


def test_evaluate_errors(tmp_path, sample):
    np.save(tmp_path / "short.npy", sample[1][:999])
    run_failing("evaluate", "fashion-mnist", SAMPLE_IMAGES, tmp_path / "short.npy",
                match="short.npy: expected 1000 labels (one per image); found 999")
    np.save(tmp_path / "big.npy", np.full(1000, 12))
    run_failing("evaluate", "fashion-mnist", SAMPLE_IMAGES, tmp_path / "big.npy",
                match="labels must lie in 0..9 for this 10-class model; found 12..12")
    np.save(tmp_path / "float.npy", np.zeros(1000))
    run_failing("evaluate", "fashion-mnist", SAMPLE_IMAGES, tmp_path / "float.npy",
                match="expected a 1-D array of integer labels; found float64 (1000,)")
    run_failing("evaluate", "fashion-mnist", SAMPLE_IMAGES, tmp_path / "none.idx",
                match="none.idx: no such file")


def test_usage_errors():
    run_failing(match="the following arguments are required: COMMAND", status=2)
    run_failing("predict", "fashion-mnist", match="the following arguments are required: INPUT",
                status=2)
    run_failing("info", "mnist", "--bogus", match="unrecognized arguments: --bogus", status=2)
    assert "demo" in run("--help").stdout


def test_predict_and_info_take_an_onnx_model(tmp_path, sample, fashion):
    pytest.importorskip("onnx")
    fashion.to_onnx(tmp_path / "fashion.onnx")
    p = fashion.metadata["preprocessing"]
    normalised = ((sample[0][:40] / np.float32(255) - np.float32(p["mean"]))
                  / np.float32(p["std"])).astype(np.float32)
    np.save(tmp_path / "x.npy", normalised)
    run("predict", tmp_path / "fashion.onnx", tmp_path / "x.npy", "--out", tmp_path / "y.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), fashion.predict(sample[0][:40]))
    assert "relu" in run("info", tmp_path / "fashion.onnx").stdout
    run_failing("info", tmp_path / "missing.pt", match="no such file")
    (tmp_path / "net.pt").write_bytes(b"\x80\x02}q\x00.")
    run_failing("info", tmp_path / "net.pt", match="pass --torch to lenet-fast convert")


def test_convert_classes_file_errors_name_the_file(tmp_path, fashion):
    fashion.save_npz(tmp_path / "f.npz")
    names = tmp_path / "names.txt"
    names.write_bytes(b"\xff\xfe" + "\n".join(fashion.classes).encode("utf-16-le"))
    run_failing("convert", tmp_path / "f.npz", tmp_path / "o.npz", "--classes", names,
                match=f"--classes {names}: expected UTF-8 text")
    names.write_bytes(b"x\n" * (1 << 20))
    run_failing("convert", tmp_path / "f.npz", tmp_path / "o.npz", "--classes", names,
                match=f"--classes {names}: expected a text file of at most 1,048,576 bytes")
    assert not (tmp_path / "o.npz").exists()
    names.write_text("\r\n".join(reversed(fashion.classes)) + "\n", encoding="utf-8")
    run("convert", tmp_path / "f.npz", tmp_path / "o.npz", "--classes", names, "--quiet")
    assert LeNet.from_npz(tmp_path / "o.npz").classes == fashion.classes[::-1]
