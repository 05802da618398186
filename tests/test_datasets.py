"""Training data folders: clear errors, reported skips, deterministic crop streams and sharded batches."""
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from dpir_fast import cli
from dpir_fast.data.datasets import CropStream, DatasetError, ImageFolder, StepBatches, center_crops, random_crop


def _png(path, h, w, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        ImageFolder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(DatasetError, match="no image files"):
        ImageFolder(tmp_path / "empty")


def test_corrupt_and_small_files_are_skipped_and_reported(tmp_path):
    _png(tmp_path / "good.png", 40, 50)
    _png(tmp_path / "sub" / "small.png", 20, 50)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    folder = ImageFolder(tmp_path, min_size=32)
    assert [p.name for p in folder.paths] == ["good.png"]
    reasons = dict((p.name, r) for p, r in folder.skipped)
    assert "unreadable" in reasons["broken.png"]
    assert "20x50 is smaller than the 32x32 crop" in reasons["small.png"]
    assert "skipped" in folder.report() and "small.png" in folder.report()


def test_nothing_usable_is_a_clear_error(tmp_path):
    _png(tmp_path / "a.png", 10, 10)
    with pytest.raises(DatasetError, match="none of the 1 image files.*smaller than"):
        ImageFolder(tmp_path, min_size=16)


def test_truncated_file_skipped_at_scan_with_cache_and_while_training_without(tmp_path):
    _png(tmp_path / "a.png", 40, 40, seed=1)
    data = _png(tmp_path / "b.png", 40, 40, seed=2).read_bytes()
    (tmp_path / "b.png").write_bytes(data[: len(data) // 2])  # the header reads, the pixels do not
    cached = ImageFolder(tmp_path, min_size=16, cache=True)
    assert [p.name for p in cached.paths] == ["a.png"] and cached.skipped[0][0].name == "b.png"
    lazy = ImageFolder(tmp_path, min_size=16, cache=False)
    assert len(lazy) == 2
    stream = CropStream(lazy, 16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        crops = [stream[k][1] for k in range(4)]
    assert all(c.shape == (3, 16, 16) for c in crops)
    assert any("b.png" in str(w.message) for w in caught)


def test_crop_stream_is_a_function_of_seed_and_sample_number(tmp_path):
    for i in range(3):
        _png(tmp_path / f"{i}.png", 40 + i, 50, seed=i)
    folder = ImageFolder(tmp_path, min_size=16)
    a, b = CropStream(folder, 16, seed=3), CropStream(folder, 16, seed=3)
    for k in (7, 0, 5, 7):  # any order, any instance
        assert torch.equal(a[k][1], b[k][1]) and a[k][0] == k
    assert not torch.equal(a[1][1], CropStream(folder, 16, seed=4)[1][1])
    pooled = CropStream(folder, 16, seed=3, pool=4)
    assert pooled[9][0] == 1 and torch.equal(pooled[9][1], pooled[1][1])
    crops = center_crops(folder, 16, limit=2)
    assert crops.shape == (2, 3, 16, 16)


def test_random_crop_flips_stay_in_image():
    x = torch.arange(3 * 6 * 8, dtype=torch.float32).view(3, 6, 8)
    rng = np.random.default_rng(0)
    for _ in range(20):
        c = random_crop(x, 4, rng)
        assert c.shape == (3, 4, 4) and set(c.flatten().tolist()) <= set(x.flatten().tolist())


def test_step_batches_shard_the_global_batch():
    one = iter(StepBatches(6, start=2))
    ranks = [iter(StepBatches(6, rank=r, world=3, start=2)) for r in range(3)]
    for _ in range(3):
        assert next(one) == sum((next(it) for it in ranks), [])
    with pytest.raises(ValueError, match="divisible"):
        StepBatches(5, world=2)


def test_cli_train_on_an_empty_folder_exits_2(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    code = cli.main(["train-denoiser", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"),
                     "--device", "cpu"])
    assert code == 2
    assert "no image files" in capsys.readouterr().err
