"""``--check`` decodes every image the run's tasks read, as the run decodes them: an image
the run would stop at is refused before anything is written, all bad ones named at once."""
import os
import re

import numpy as np
import pytest
from PIL import Image

from main import main
from tests.conftest import write_cfg
from tests.test_data import dm_for, write_jpeg_split
from toolbox.data import DatasetError
from toolbox.data_manager import DataManager, open_rgb

CLASSES = ["red", "green", "blue"]


def folder_cfg(tmp_path, **over):
    """A folder dataset of 3 classes (3 training, 2 test JPEGs each) and a tiny config on it."""
    write_jpeg_split(tmp_path / "data", CLASSES)
    return write_cfg(tmp_path, dataset="folder", data_path=str(tmp_path / "data"), class_order="default", **over)


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def break_three(tmp_path):
    """A truncated JPEG, a zero-byte file and a text file named .png; their paths."""
    root = tmp_path / "data"
    truncated, empty, text = root / "train" / "green" / "1.jpg", root / "test" / "blue" / "0.jpg", \
        root / "train" / "red" / "9.png"
    truncate(truncated)
    empty.write_bytes(b"")
    text.write_text("this is not an image\n")
    return [truncated, empty, text]


def test_check_refuses_every_unreadable_image_and_writes_nothing(tmp_path, capsys):
    cfg, run_dir = folder_cfg(tmp_path)
    bad = break_three(tmp_path)
    for path in bad:  # each is what the run's decoder refuses
        with pytest.raises(DatasetError, match="could not be read"):
            open_rgb(str(path))
    assert main(["--config", str(cfg), "--check", "-q"]) == 2
    out, err = capsys.readouterr()
    err = err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("error: 3 image files could not be read:") and "remove or replace them" in err
    for path in bad:
        assert str(path) in err
    assert "truncated" in err.lower() and "cannot identify image file" in err
    assert "all checks passed" not in out
    assert not os.path.exists(tmp_path / "logs") and not os.path.exists(run_dir)


def test_a_good_folder_dataset_passes_the_check(tmp_path, capsys):
    cfg, run_dir = folder_cfg(tmp_path)
    assert main(["--config", str(cfg), "--check", "-q"]) == 0
    out = capsys.readouterr().out
    assert "all checks passed" in out and not os.path.exists(tmp_path / "logs")


def test_what_the_check_refuses_the_run_refuses_at_the_same_file(tmp_path, capsys):
    cfg, _ = folder_cfg(tmp_path)
    truncated = tmp_path / "data" / "train" / "green" / "1.jpg"
    truncate(truncated)
    assert main(["--config", str(cfg), "--check", "-q"]) == 2
    check_err = capsys.readouterr().err.strip()
    assert main(["--config", str(cfg), "-q"]) == 2
    run_err = capsys.readouterr().err.strip()
    assert check_err.startswith(f"error: image file could not be read: {truncated} (")
    assert str(truncated) in run_err and "could not be read" in run_err


def test_many_bad_images_are_counted_and_the_first_five_named(tmp_path):
    write_jpeg_split(tmp_path / "data", CLASSES, per_split=(4, 3))
    root = tmp_path / "data"
    bad = sorted((root / "train").glob("*/*.jpg"))[:7]
    for path in bad:
        path.write_bytes(b"")
    dm = DataManager("folder", False, 0, 3, 1, {"data_path": str(root), "class_order": "default"})
    with pytest.raises(DatasetError) as e:
        dm.verify_images(workers=3)
    msg = str(e.value)
    assert msg.startswith("7 image files could not be read: ") and msg.endswith("; and 2 more; remove or replace them")
    named = [p for p in bad if str(p) in msg]
    assert named == bad[:5]  # in dataset order


def test_only_the_images_the_run_reads_are_decoded(tmp_path):
    write_jpeg_split(tmp_path / "data", CLASSES, per_split=(4, 2))
    root = str(tmp_path / "data")
    dm = DataManager("folder", False, 0, 2, 1, {"data_path": root, "class_order": "default"})
    assert len(dm.image_paths()) == 3 * (4 + 2)
    assert sorted(dm.image_paths(tasks=[1])) == sorted(
        [os.path.join(root, s, "red", f"{i}.jpg") for s, n in (("train", 4), ("test", 2)) for i in range(n)])
    few = DataManager("folder", False, 0, 2, 1, {"data_path": root, "class_order": "default", "shots_per_class": 1})
    kept = set(few._train_data)
    paths = few.image_paths()
    assert len(paths) == 3 * (1 + 2) and kept <= set(paths)
    dropped = next(p for p in dm._train_data if p not in kept)  # an image the few-shot run never reads
    with open(dropped, "wb"):
        pass
    assert few.verify_images() == len(paths) and few.verify_images() == 0  # decoded once per process
    kept_one = few._train_data[0]
    with open(kept_one, "wb"):  # a decoded file that changes is decoded again
        pass
    with pytest.raises(DatasetError, match=re.escape(f"image file could not be read: {kept_one} (")):
        few.verify_images()


def test_in_memory_datasets_need_no_decoding():
    dm = dm_for()
    assert dm.image_paths() == [] and dm.verify_images() == 0


def test_a_png_and_a_grey_jpeg_pass(tmp_path):
    write_jpeg_split(tmp_path / "data", CLASSES)
    root = tmp_path / "data"
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(root / "train" / "red" / "grey.jpg")
    Image.fromarray(np.zeros((9, 9, 4), np.uint8)).save(root / "test" / "red" / "rgba.png")
    dm = DataManager("folder", False, 0, 3, 1, {"data_path": str(root), "class_order": "default"})
    assert dm.verify_images(workers=2) == 3 * 5 + 2
