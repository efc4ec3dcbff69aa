"""Every ``lenet-fast`` command end to end on real files, run as ``python -m lenet_fast``,
including the error exits (one line on stderr, non-zero status, no traceback)."""

import csv
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import lenet_fast
from factories import leftovers, normal_weights
from lenet_fast import LeNet, cli, datasets

PACKAGE_ROOT = str(Path(lenet_fast.__file__).resolve().parents[1])
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SAMPLE_IMAGES = datasets._data_file("fashion-mnist-sample-images-idx3-ubyte.gz")
SAMPLE_LABELS = datasets._data_file("fashion-mnist-sample-labels-idx1-ubyte.gz")


def run(*args, cwd=None, expect=0, env=None):
    environment = dict(
        os.environ,
        PYTHONPATH=PACKAGE_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
        **(env or {}),
    )
    result = subprocess.run(
        [sys.executable, "-m", "lenet_fast", *map(str, args)],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
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
    for text in (
        "conv relu, fc1 sigmoid, output softmax, max pooling",
        "1-6-16-120-84-10",
        "61,706",
        "833,040 (416,520 multiply-adds)",
        "uint8 x -> (x / 255 - ",
        "provenance.command",
        "python -m lenet_fast.train --dataset",
        "provenance.test_accuracy",
        "provenance.training_seconds",
        lenet_fast.show_config(False)["isa"],
        "threads",
        "conv1",
    ):
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
    assert result.stderr == ""  # not a terminal: no progress bar


def test_predict_raw_idx_with_scores_to_csv_file(tmp_path, sample, fashion):
    datasets.write_idx(tmp_path / "images.idx", sample[0][:50])
    run(
        "predict",
        datasets.pretrained_path("fashion-mnist"),
        tmp_path / "images.idx",
        "--out",
        tmp_path / "out.csv",
        "--scores",
        "--quiet",
    )
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
    run(
        "predict",
        "fashion-mnist",
        tmp_path / "images.npy",
        "--out",
        tmp_path / "s.npy",
        "--scores",
        "--quiet",
    )
    scores = np.load(tmp_path / "s.npy")
    assert scores.dtype == np.float32 and scores.shape == (300, 10)
    np.testing.assert_array_equal(scores.argmax(1), labels)


def test_predict_float_npy_is_taken_as_normalised(tmp_path, sample, fashion):
    p = fashion.metadata["preprocessing"]
    normalised = (
        (sample[0][:40] / np.float32(255) - np.float32(p["mean"])) / np.float32(p["std"])
    ).astype(np.float32)
    np.save(tmp_path / "x.npy", normalised)
    run("predict", "fashion-mnist", tmp_path / "x.npy", "--out", tmp_path / "y.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), fashion.predict(sample[0][:40]))


def test_predict_more_images_than_one_chunk(tmp_path, sample, fashion):
    images = np.tile(sample[0], (5, 1, 1))  # 5,000 images: two chunks of 4,096
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
    assert [row[0] for row in rows[1:]] == [
        f"item{i}.{'png' if i % 2 else 'PNG'}" for i in range(6)
    ]
    assert [int(row[1]) for row in rows[1:]] == fashion.predict(sample[0][:6]).tolist()


def test_a_folder_named_like_a_pretrained_model_does_not_hide_it(
    tmp_path, monkeypatch, capsys, sample, fashion
):
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
    for phrase in (
        "or a folder of images (PNG, JPEG, BMP, GIF, WebP, TIFF; 28 x 28 or 32 x 32), "
        "is read as grayscale, so it suits 1-channel models only",
        "IDX files and images (like uint8 .npy files) hold uint8 pixels, which need a "
        "model with stored preprocessing (e.g. the pretrained fashion-mnist and mnist)",
        "a float .npy file is taken as normalised images and works with any model",
    ):
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


@pytest.mark.parametrize(
    "command, status",
    [
        (["predict", "fashion-mnist", SAMPLE_IMAGES, "--quiet"], 0),
        (["predict", "fashion-mnist", SAMPLE_IMAGES, "--out", "labels.txt"], 1),
        (["evaluate", "fashion-mnist", SAMPLE_IMAGES, "no-such-labels.idx"], 1),
        (["evaluate", "fashion-mnist", SAMPLE_IMAGES, SAMPLE_IMAGES], 1),  # images, not labels
    ],
)
def test_the_image_file_is_closed_however_the_command_ends(
    command, status, opened_idx_readers, capsys
):
    assert cli.main(command) == status
    assert opened_idx_readers
    assert all(reader._file.closed for reader in opened_idx_readers)


def test_predict_folder_errors(tmp_path):
    image = pytest.importorskip("PIL.Image")
    (tmp_path / "empty").mkdir()
    run_failing(
        "predict",
        "fashion-mnist",
        tmp_path / "empty",
        match="folder holds no images "
        "(.png/.jpg/.jpeg/.bmp/.gif/.webp/.tif/.tiff), directly or in class subfolders",
    )
    (tmp_path / "big").mkdir()
    image.new("L", (64, 48)).save(tmp_path / "big" / "photo.jpg")
    run_failing(
        "predict",
        "fashion-mnist",
        tmp_path / "big",
        match="photo.jpg: expected a 28 x 28 or 32 x 32 image; found 64 x 48",
    )
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.png").write_bytes(b"not a png")
    run_failing(
        "predict", "fashion-mnist", tmp_path / "broken", match="x.png: not a readable image"
    )


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
    output = run(
        "evaluate",
        "fashion-mnist",
        SAMPLE_IMAGES,
        tmp_path / "labels.npy",
        "--plot",
        tmp_path / "confusion.png",
    ).stdout
    assert f"wrote {tmp_path / 'confusion.png'}" in output
    assert_valid_png(tmp_path / "confusion.png")


def test_evaluate_keeps_copies_of_misclassified_images_not_views_into_chunks(
    tmp_path, monkeypatch, capsys, sample
):
    plotted = {}
    monkeypatch.setattr(cli, "import_pyplot", lambda: None)
    monkeypatch.setattr(
        cli,
        "_plot_confusion",
        lambda path, confusion, names, mistakes, model, *_: plotted.update(mistakes=mistakes),
    )
    assert (
        cli.main(
            [
                "evaluate",
                "fashion-mnist",
                SAMPLE_IMAGES,
                SAMPLE_LABELS,
                "--plot",
                str(tmp_path / "unused.png"),
            ]
        )
        == 0
    )
    assert len(plotted["mistakes"]) == cli.MAX_PLOTTED_MISTAKES
    for index, image, truth, predicted in plotted["mistakes"]:
        assert image.base is None  # owns its pixels: the chunk can be freed
        np.testing.assert_array_equal(image, sample[0][index])
        assert truth == sample[1][index] and predicted != truth


# ---------------------------------------------------------------------------------------------
# Errors: one line, non-zero status, no traceback
# ---------------------------------------------------------------------------------------------


def test_missing_and_unknown_models(tmp_path):
    run_failing(
        "info",
        "cifar10",
        match="model 'cifar10': no such file, and not a pretrained "
        "model name (expected one of fashion-mnist, mnist)",
    )
    (tmp_path / "junk.npz").write_bytes(b"junk")
    run_failing("info", tmp_path / "junk.npz", match="expected a .npz (zip) archive")


def test_missing_and_malformed_inputs(tmp_path, sample):
    run_failing("predict", "mnist", tmp_path / "nothing.idx", match="nothing.idx: no such file")
    datasets.write_idx(tmp_path / "images.idx", sample[0][:10])
    truncated = (tmp_path / "images.idx").read_bytes()[:-7]
    (tmp_path / "cut.idx").write_bytes(truncated)
    run_failing(
        "predict",
        "mnist",
        tmp_path / "cut.idx",
        match="cut.idx: header declares "
        "10 x 28 x 28 uint8 (7,840 bytes), so the file should have 7,856 bytes; found "
        "7,849 (truncated file)",
    )
    datasets.write_idx(tmp_path / "labels.idx", sample[1][:10].astype(np.uint8))
    run_failing(
        "predict",
        "mnist",
        tmp_path / "labels.idx",
        match="expected an IDX file of "
        "images (3 or 4 dimensions: N, [channels,] 28 x 28 or 32 x 32 pixels); found "
        "shape (10,)",
    )
    np.save(tmp_path / "odd.npy", np.zeros((3, 20, 20), np.uint8))
    run_failing(
        "predict",
        "mnist",
        tmp_path / "odd.npy",
        match="odd.npy: expected a .npy file "
        "of images (3 or 4 dimensions: N, [channels,] 28 x 28 or 32 x 32 pixels); found "
        "shape (3, 20, 20)",
    )
    np.save(tmp_path / "ints.npy", np.zeros((3, 28, 28), np.int32))
    run_failing(
        "predict",
        "mnist",
        tmp_path / "ints.npy",
        match="x must hold floating-point (normalised) images or uint8 pixels; got "
        "integer dtype int32",
    )
    run_failing(
        "predict",
        "mnist",
        SAMPLE_IMAGES,
        "--out",
        tmp_path / "labels.txt",
        match="expected a file name ending in .csv or .npy",
    )


def test_integer_input_to_a_model_without_preprocessing(tmp_path, fashion):
    LeNet(fashion.weights).save_npz(tmp_path / "bare.npz")
    run_failing(
        "predict",
        tmp_path / "bare.npz",
        SAMPLE_IMAGES,
        match="a model without stored preprocessing needs float input",
    )


def test_evaluate_errors(tmp_path, sample):
    np.save(tmp_path / "short.npy", sample[1][:999])
    run_failing(
        "evaluate",
        "fashion-mnist",
        SAMPLE_IMAGES,
        tmp_path / "short.npy",
        match="short.npy: expected 1000 labels (one per image); found 999",
    )
    np.save(tmp_path / "big.npy", np.full(1000, 12))
    run_failing(
        "evaluate",
        "fashion-mnist",
        SAMPLE_IMAGES,
        tmp_path / "big.npy",
        match="labels must lie in 0..9 for this 10-class model; found 12..12",
    )
    np.save(tmp_path / "float.npy", np.zeros(1000))
    run_failing(
        "evaluate",
        "fashion-mnist",
        SAMPLE_IMAGES,
        tmp_path / "float.npy",
        match="expected a 1-D array of integer labels; found float64 (1000,)",
    )
    run_failing(
        "evaluate",
        "fashion-mnist",
        SAMPLE_IMAGES,
        tmp_path / "none.idx",
        match="none.idx: no such file",
    )


def test_usage_errors():
    run_failing(match="the following arguments are required: COMMAND", status=2)
    run_failing(
        "predict", "fashion-mnist", match="the following arguments are required: INPUT", status=2
    )
    run_failing("info", "mnist", "--bogus", match="unrecognized arguments: --bogus", status=2)
    assert "demo" in run("--help").stdout


def test_predict_and_info_take_an_onnx_model(tmp_path, sample, fashion):
    pytest.importorskip("onnx")
    fashion.to_onnx(tmp_path / "fashion.onnx")
    p = fashion.metadata["preprocessing"]
    normalised = (
        (sample[0][:40] / np.float32(255) - np.float32(p["mean"])) / np.float32(p["std"])
    ).astype(np.float32)
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
    run_failing(
        "convert",
        tmp_path / "f.npz",
        tmp_path / "o.npz",
        "--classes",
        names,
        match=f"--classes {names}: expected UTF-8 text",
    )
    names.write_bytes(b"x\n" * (1 << 20))
    run_failing(
        "convert",
        tmp_path / "f.npz",
        tmp_path / "o.npz",
        "--classes",
        names,
        match=f"--classes {names}: expected a text file of at most 1,048,576 bytes",
    )
    assert not (tmp_path / "o.npz").exists()
    names.write_text("\r\n".join(reversed(fashion.classes)) + "\n", encoding="utf-8")
    run("convert", tmp_path / "f.npz", tmp_path / "o.npz", "--classes", names, "--quiet")
    assert LeNet.from_npz(tmp_path / "o.npz").classes == fashion.classes[::-1]


# ---------------------------------------------------------------------------------------------
# Outputs: nothing lost, nothing half-written
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("through", ["same path", "symlink", "hard link"])
def test_output_that_is_the_input_is_refused_before_reading(tmp_path, through):
    images = np.zeros((10, 28, 28), np.uint8)
    np.save(tmp_path / "same.npy", images)
    before = (tmp_path / "same.npy").read_bytes()
    out = tmp_path / "same.npy"
    if through == "symlink":
        out = tmp_path / "link.npy"
        out.symlink_to(tmp_path / "same.npy")
    elif through == "hard link":
        out = tmp_path / "hard.npy"
        os.link(tmp_path / "same.npy", out)
    result = run("predict", "mnist", tmp_path / "same.npy", "--out", out, expect=1)
    assert "is the input" in result.stderr and "refusing to overwrite it" in result.stderr
    assert (tmp_path / "same.npy").read_bytes() == before
    assert leftovers(tmp_path) == []


def test_convert_onto_its_input_is_refused(tmp_path):
    LeNet.pretrained("mnist").save_npz(tmp_path / "m.npz")
    before = (tmp_path / "m.npz").read_bytes()
    result = run("convert", tmp_path / "m.npz", tmp_path / "m.npz", expect=1)
    assert "is the input" in result.stderr
    assert (tmp_path / "m.npz").read_bytes() == before


def test_model_file_as_output_is_refused(tmp_path):
    LeNet.pretrained("mnist").save_npz(tmp_path / "m.npz")
    before = (tmp_path / "m.npz").read_bytes()
    np.save(tmp_path / "x.npy", np.zeros((2, 28, 28), np.uint8))
    (tmp_path / "m.csv").symlink_to(tmp_path / "m.npz")
    run("predict", tmp_path / "m.npz", tmp_path / "x.npy", "--out", tmp_path / "m.csv", expect=1)
    assert (tmp_path / "m.npz").read_bytes() == before


@pytest.mark.parametrize("out", ["x.npy", "x.csv", None])
def test_a_bad_image_part_way_leaves_no_output(tmp_path, out, capsys):
    Image = pytest.importorskip("PIL.Image")

    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(5):
        Image.new("L", (28, 28), color=index).save(folder / f"{index}.png")
    (folder / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (tmp_path / "x.npy").write_bytes(b"old contents")
    arguments = ["predict", "mnist", str(folder)] + (["--out", str(tmp_path / out)] if out else [])
    assert cli.main(arguments) == 1
    captured = capsys.readouterr()
    assert "3.png: not a readable image" in captured.err
    assert captured.out == ""  # not even the CSV header
    assert (tmp_path / "x.npy").read_bytes() == b"old contents"
    assert not (tmp_path / "x.csv").exists()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("out", ["x.npy", "x.csv", None])
def test_ctrl_c_part_way_leaves_no_output(tmp_path, out, monkeypatch, capsys):
    np.save(tmp_path / "in.npy", np.zeros((3 * cli.CHUNK_IMAGES, 28, 28), np.uint8))
    calls = []
    original = LeNet.predict

    def interrupted(self, images, **options):
        calls.append(len(images))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, images, **options)

    monkeypatch.setattr(LeNet, "predict", interrupted)
    arguments = ["predict", "mnist", str(tmp_path / "in.npy"), "--quiet"]
    assert cli.main(arguments + (["--out", str(tmp_path / out)] if out else [])) == 130
    assert calls == [cli.CHUNK_IMAGES, cli.CHUNK_IMAGES]
    assert capsys.readouterr().out == ""
    assert sorted(path.name for path in tmp_path.iterdir()) == ["in.npy"]


def test_successful_outputs_replace_the_destination_atomically(tmp_path, capsys):
    np.save(tmp_path / "in.npy", np.zeros((5, 28, 28), np.uint8))
    (tmp_path / "x.npy").write_bytes(b"old")
    assert (
        cli.main(
            [
                "predict",
                "mnist",
                str(tmp_path / "in.npy"),
                "--out",
                str(tmp_path / "x.npy"),
                "--quiet",
            ]
        )
        == 0
    )
    assert np.load(tmp_path / "x.npy").shape == (5,)
    assert oct((tmp_path / "x.npy").stat().st_mode & 0o777) != oct(0o600)  # not mkstemp's mode
    assert leftovers(tmp_path) == []
    assert cli.main(["predict", "mnist", str(tmp_path / "in.npy")]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 6


def test_outputs_write_through_a_link_and_keep_a_private_mode(tmp_path):
    """--out to a symbolic link updates the file it names (the link stays); an existing output
    keeps its permission bits, as with open(path, "w")."""
    np.save(tmp_path / "in.npy", np.zeros((3, 28, 28), np.uint8))
    (tmp_path / "runs").mkdir()
    target = tmp_path / "runs" / "labels.csv"
    target.write_text("old\n")
    target.chmod(0o600)
    (tmp_path / "latest.csv").symlink_to(target)
    arguments = ["predict", "mnist", str(tmp_path / "in.npy"), "--quiet"]
    assert cli.main([*arguments, "--out", str(tmp_path / "latest.csv")]) == 0
    assert (tmp_path / "latest.csv").is_symlink()
    assert target.read_text().splitlines()[0] != "old" and len(target.read_text().splitlines()) >= 3
    assert target.stat().st_mode & 0o777 == 0o600
    assert leftovers(tmp_path) == [] and leftovers(tmp_path / "runs") == []


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_outputs_get_the_umask_without_changing_it(tmp_path, monkeypatch, umask):
    """The temporary file gets the mode open() would give (0o666 less the umask), and the
    process umask is never set for a moment to read it: that would apply to files other
    threads create meanwhile."""
    previous = os.umask(umask)
    try:
        changes = []
        real_umask = os.umask
        monkeypatch.setattr(os, "umask", lambda mask: changes.append(mask) or real_umask(mask))
        LeNet.pretrained("mnist").save_npz(tmp_path / "m.npz")
        np.save(tmp_path / "in.npy", np.zeros((2, 28, 28), np.uint8))
        assert (
            cli.main(
                [
                    "predict",
                    "mnist",
                    str(tmp_path / "in.npy"),
                    "--out",
                    str(tmp_path / "x.csv"),
                    "--quiet",
                ]
            )
            == 0
        )
        monkeypatch.undo()
    finally:
        os.umask(previous)
    assert changes == []
    for name in ("m.npz", "x.csv"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
    assert leftovers(tmp_path) == []


def test_output_into_a_missing_folder_fails_before_the_work(tmp_path, monkeypatch):
    monkeypatch.setattr(LeNet, "predict", lambda *a, **k: pytest.fail("predicted"))
    assert (
        cli.main(["predict", "mnist", SAMPLE_IMAGES, "--out", str(tmp_path / "no" / "x.csv")]) == 1
    )


# ---------------------------------------------------------------------------------------------
# Untrusted strings on the terminal; friction
# ---------------------------------------------------------------------------------------------


def test_control_characters_from_files_are_escaped(tmp_path):
    names = [f"\x1b]0;pwned\x07class{k}\x1b[2J" for k in range(10)]
    metadata = {"classes": names, "provenance": ["a", "\x1b[31mred"], "note": "\u202eevil"}
    LeNet(normal_weights(), metadata=metadata).save_npz(tmp_path / "m.npz")
    info = run("info", tmp_path / "m.npz", expect=0).stdout
    assert "\x1b" not in info and "\x07" not in info and "\u202e" not in info
    assert "\\x1b]0;pwned\\x07class0\\x1b[2J" in info and "\\u202eevil" in info
    assert "provenance" in info and "\\x1b[31mred" in info
    bad_name = "\x1b[2Jimage.png"
    (tmp_path / "images").mkdir()
    Image = pytest.importorskip("PIL.Image")

    Image.new("L", (28, 28)).save(tmp_path / "images" / bad_name)
    csv_text = run("predict", "mnist", tmp_path / "images", expect=0).stdout
    assert "\x1b" not in csv_text and "\\x1b[2Jimage.png" in csv_text
    error = run("predict", "mnist", tmp_path / "\x1b[2Jmissing.npy", expect=1).stderr
    assert "\x1b" not in error


def test_invalid_isa_variable_is_one_line_from_the_command_line():
    result = run("info", "mnist", expect=1, env={"LENET_FAST_ISA": "sse"})
    assert result.stderr.startswith("lenet-fast: error: LENET_FAST_ISA='sse' is not a level")
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp", ".gif", ".webp"])
def test_a_single_image_file_and_other_formats_as_input(tmp_path, suffix):
    Image = pytest.importorskip("PIL.Image")

    images, _ = datasets.load_sample()
    path = tmp_path / f"digit{suffix}"
    Image.fromarray(images[0]).save(path)
    rows = run("predict", "fashion-mnist", path, expect=0).stdout.splitlines()
    assert rows[1].startswith(f"digit{suffix},")
    folder = tmp_path / "folder"
    folder.mkdir()
    Image.fromarray(images[0]).save(folder / f"a{suffix}")
    (folder / "notes.txt").write_text("not an image")
    result = run("predict", "fashion-mnist", folder, expect=0)
    assert result.stdout.splitlines()[1].startswith(f"a{suffix},")
    assert "skipped 1 entries that are not images" in result.stderr and "notes.txt" in result.stderr


@pytest.mark.parametrize(
    "content, message",
    [
        (b"1 2 3\n4 5 6\n", "not a .npy file"),
        (None, "expected a plain numeric array, found dtype object"),
        (b"truncate", "(truncated file)"),
    ],
)
def test_npy_problems_name_the_file(tmp_path, content, message):
    path = tmp_path / "bad.npy"
    if content is None:
        np.save(path, np.array([None, 1], dtype=object), allow_pickle=True)
    elif content == b"truncate":
        np.save(path, np.zeros((3, 28, 28), np.uint8))
        path.write_bytes(path.read_bytes()[:-10])
    else:
        path.write_bytes(content)
    result = run("predict", "mnist", path, expect=1)
    assert f"{path}: " in result.stderr and message in result.stderr
    assert "allow_pickle" not in result.stderr


def test_plot_destination_checked_before_the_work(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    monkeypatch.setattr(LeNet, "predict", lambda *a, **k: pytest.fail("predicted"))
    labels = datasets._data_file("fashion-mnist-sample-labels-idx1-ubyte.gz")
    for plot, message in (
        (tmp_path / "x", "expected a file name ending in .png, .pdf, .svg"),
        (tmp_path / "missing" / "x.png", "No such file or directory"),
    ):
        assert (
            cli.main(["evaluate", "fashion-mnist", SAMPLE_IMAGES, labels, "--plot", str(plot)]) == 1
        )
        assert message in capsys.readouterr().err


def test_version_plural_usage_and_empty_evaluation(tmp_path):
    assert run("--version", expect=0).stdout.strip() == f"lenet-fast {lenet_fast.__version__}"
    usage = run("predict", "mnist", "x.idx", "--bogus", expect=2).stderr
    assert usage.startswith("usage: lenet-fast predict ")
    np.save(tmp_path / "none.npy", np.zeros((0, 28, 28), np.uint8))
    np.save(tmp_path / "labels.npy", np.zeros(0, np.int64))
    result = run("evaluate", "mnist", tmp_path / "none.npy", tmp_path / "labels.npy", expect=1)
    assert "nothing to evaluate" in result.stderr


def test_demo_and_info_say_the_thread_count_omp_num_threads_sets():
    output = run("demo", expect=0, env={"OMP_NUM_THREADS": "1"}).stdout
    assert "1 thread," in output and "1 threads" not in output
    output = run("demo", expect=0, env={"OMP_NUM_THREADS": "2"}).stdout
    assert re.search(r"batch of [\d,]+, 2 threads,", output), output
    output = run("info", "fashion-mnist", env={"OMP_NUM_THREADS": "2"}).stdout
    assert re.search(r"^threads +2 \(usable CPUs: \d+\)$", output, re.M), output


def test_evaluate_class_subfolders(tmp_path):
    Image = pytest.importorskip("PIL.Image")

    images, labels = datasets.load_sample()
    classes = LeNet.pretrained("fashion-mnist").classes
    for index in range(40):
        folder = tmp_path / "root" / classes[labels[index]].replace("/", "_")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[index]).save(folder / f"{index}.png")
    output = run("evaluate", "fashion-mnist", tmp_path / "root", expect=0).stdout
    assert "/40 correct)" in output
    (tmp_path / "root" / "Spaceship").mkdir()
    Image.fromarray(images[0]).save(tmp_path / "root" / "Spaceship" / "0.png")
    result = run("evaluate", "fashion-mnist", tmp_path / "root", expect=1)
    assert "class folders Spaceship match none of the model's classes" in result.stderr


def test_source_folder_shadowing_an_installed_copy_says_so(tmp_path):
    source = tmp_path / "src" / "lenet_fast"
    source.mkdir(parents=True)
    package = Path(lenet_fast.__file__).parent
    for path in package.glob("*.py"):
        (source / path.name).write_text(path.read_text())
    result = subprocess.run(
        [sys.executable, "-c", "import lenet_fast"],
        cwd=source.parent,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": PACKAGE_ROOT},
    )
    assert "shadows the installed lenet_fast in" in result.stderr
    assert "run from another directory" in result.stderr
    assert "circular import" not in result.stderr
