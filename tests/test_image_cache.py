"""The image cache: eval view equal to the PNG path's, resume, refusal of unfinished or stale caches, bad files,
batch reads, the loader order, the command line and the thread/worker choice."""
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_decompression_bomb
from PIL import Image

from common.commands import image_cache as image_cache_command
from common.commands._cli import run_main
from common.data import cache_build, image_cache
from common.data.cache_build import build_image_cache
from common.data.datasets import CachedBatchDataset, CachedImageSource, cached_loader, crop_transform
from common.data.device_augment import DeviceAugment
from common.data.image_cache import fingerprint_files, open_image_cache
from common.data.images import load_png
from common.data.transforms import build_transform
from common.errors import UserError
from common.runtime.threads import choose_threads_and_workers

REPO = Path(__file__).resolve().parents[1]
REAL = REPO / "tests" / "data" / "images"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SIXTEEN_BIT, NON_SQUARE = "00090001_000.png", "00090002_000.png"

pytestmark = pytest.mark.usefixtures("one_thread")


def copy_images(target: Path, names=None) -> list[str]:
    target.mkdir(parents=True, exist_ok=True)
    names = names or sorted(p.name for p in REAL.glob("*.png"))
    for name in names:
        shutil.copy2(REAL / name, target / name)
    return names


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """The 10 real PNGs (one RGBA), a 16-bit PNG and a non-square one made from them."""
    folder = tmp_path_factory.mktemp("images")
    names = copy_images(folder)
    grey = np.asarray(load_png(REAL / "00000001_000.png"), dtype=np.uint16)
    # 16-bit with the full range used: 257 * v maps 0..255 to 0..65535; add low bits the 8-bit view drops.
    Image.fromarray((grey * 257 + (grey % 7)).astype(np.uint16)).save(folder / SIXTEEN_BIT)
    Image.open(REAL / "00027426_000.png").crop((0, 40, 512, 440)).save(folder / NON_SQUARE)  # 512 x 400
    return folder, names + [SIXTEEN_BIT, NON_SQUARE]


@pytest.fixture(scope="module")
def cache(images, tmp_path_factory):
    folder, names = images
    return build_image_cache(folder, names, tmp_path_factory.mktemp("cache"), size=256, workers=2, chunk_size=4)


def png_eval_view(path: Path, img_size: int = 224) -> torch.Tensor:
    return build_transform(img_size, MEAN, STD, train=False)(load_png(path))


def grey_levels(difference: torch.Tensor) -> float:
    """Largest difference of normalised views, in grey levels of the 0..255 image."""
    return float((difference.abs() * torch.tensor(STD).view(3, 1, 1) * 255).max())


def test_inputs_are_what_they_claim(images):
    folder, _ = images
    with Image.open(folder / SIXTEEN_BIT) as image:
        assert image.mode in ("I;16", "I;16B", "I", "I;16L")
    with Image.open(folder / "00001369_000.png") as image:
        assert image.mode == "RGBA"
    with Image.open(folder / NON_SQUARE) as image:
        assert image.size == (512, 400)


def test_cached_eval_view_equals_png_eval_view(images, cache):
    folder, names = images
    augment = DeviceAugment(224, MEAN, STD, train=False)
    source = CachedImageSource(cache)
    cpu_eval = build_transform(224, MEAN, STD, train=False)
    for name in names:
        expected = png_eval_view(folder / name)
        device_view = augment(torch.from_numpy(cache.read([cache.index_of(name)])))[0]
        assert grey_levels(device_view - expected) <= 1.0 + 1e-3, name
        assert grey_levels(cpu_eval(source.load(name)) - expected) <= 1.0 + 1e-3, name
    assert cache.manifest["non_square"] == 1


def test_manifest_describes_the_cache(images, cache):
    folder, names = images
    manifest = cache.manifest
    assert manifest["source"] == str(folder.resolve())
    assert manifest["size"] == 256 and manifest["count"] == len(names)
    assert "shorter side" in manifest["resize_rule"] and "centre crop" in manifest["resize_rule"]
    assert manifest["fingerprint"] == fingerprint_files(folder / n for n in names)
    assert manifest["package_version"]
    assert sorted(cache.names) == sorted(names)
    assert cache.array.shape == (len(names), 256, 256) and cache.array.dtype == np.uint8


def test_non_square_is_announced(images, tmp_path, capsys):
    folder, _ = images
    build_image_cache(folder, [NON_SQUARE, "00000001_000.png"], tmp_path / "c", size=64, workers=1)
    out = capsys.readouterr().out
    assert "1 of 2 images are not square" in out and "centre-cropped to 64" in out


def test_eval_view_note_says_when_the_cache_size_is_not_the_eval_resize():
    assert image_cache.eval_view_note(256, 224) is None and image_cache.eval_view_note(512, 448) is None
    assert "upsampled" in image_cache.eval_view_note(256, 384)
    assert "resized again" in image_cache.eval_view_note(512, 224)


def test_up_to_date_cache_is_kept(images, cache, capsys):
    folder, names = images
    before = cache.path.stat().st_mtime_ns
    again = build_image_cache(folder, names, cache.directory, size=256, workers=1)
    assert "up to date" in capsys.readouterr().out
    assert again.path.stat().st_mtime_ns == before


# ---------------------------------------------------------------------------------------------------------------------
# Interrupted builds, unfinished and stale caches
# ---------------------------------------------------------------------------------------------------------------------
class Interrupt(Exception):
    pass


def test_interrupted_build_resumes(images, cache, tmp_path, capsys):
    folder, names = images
    out = tmp_path / "cache"

    def stop_after_two(done):
        if done >= 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        build_image_cache(folder, names, out, size=256, workers=1, chunk_size=3, after_chunk=stop_after_two)
    with pytest.raises(UserError, match="unfinished"):
        open_image_cache(out)
    counts = []
    resumed = build_image_cache(folder, names, out, size=256, workers=1, chunk_size=3, after_chunk=counts.append)
    assert "resuming the image cache build: 6 of 12 images already decoded" in capsys.readouterr().out
    assert counts == [3, 4]  # only the two remaining chunks were decoded
    assert resumed.names == cache.names
    np.testing.assert_array_equal(resumed.array, cache.array)
    assert not (out / "build-256.json").exists() and not (out / "images-256.npy.partial").exists()


@pytest.mark.slow
def test_killed_build_resumes(images, cache, tmp_path):
    """A build killed with SIGKILL (no clean-up at all) resumes from the chunks it had recorded."""
    folder, names = images
    out = tmp_path / "cache"
    script = (
        "import os, signal, sys\n"
        "from common.data import cache_build\n"
        "cache_build.PROGRESS_EVERY = 0  # record every chunk, so the kill finds some recorded\n"
        "def kill(done):\n"
        "    if done == 2:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        f"cache_build.build_image_cache({str(folder)!r}, {names!r}, {str(out)!r}, workers=1, chunk_size=3,\n"
        "                              after_chunk=kill)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == -9, result.stderr
    state = json.loads((out / "build-256.json").read_text())
    assert len(state["done"]) == 2
    counts = []
    resumed = build_image_cache(folder, names, out, workers=1, chunk_size=3, after_chunk=counts.append)
    assert counts == [3, 4]
    np.testing.assert_array_equal(resumed.array, cache.array)


def test_half_written_cache_is_refused(cache, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(cache.directory, copy)
    (copy / "manifest-256.json").unlink()
    with pytest.raises(UserError, match="not an image cache"):
        open_image_cache(copy)
    (copy / "images-256.npy").rename(copy / "images-256.npy.partial")
    with pytest.raises(UserError, match="unfinished"):
        open_image_cache(copy)

    truncated = tmp_path / "truncated"
    shutil.copytree(cache.directory, truncated)
    with open(truncated / "images-256.npy", "r+b") as handle:
        handle.truncate(10_000)
    with pytest.raises(UserError, match="images-256.npy"):
        open_image_cache(truncated)

    edited = tmp_path / "edited"
    shutil.copytree(cache.directory, edited)
    table = edited / "files-256.tsv"
    table.write_text(table.read_text().replace("\t", "\t1", 1))
    with pytest.raises(UserError, match="fingerprint"):
        open_image_cache(edited)


def test_stale_or_mismatched_cache_is_refused(tmp_path):
    folder = tmp_path / "images"
    names = copy_images(folder, ["00000001_000.png", "00027426_000.png", "00000129_000.png"])
    out = tmp_path / "cache"
    build_image_cache(folder, names, out, size=32, workers=1)
    open_image_cache(out, data_dir=folder, names_needed=names)  # unchanged: accepted

    with pytest.raises(UserError, match="size 64 in .* is absent"):
        open_image_cache(out, size=64)
    with pytest.raises(UserError, match=r"1 image\(s\) are not in the image cache .*00099999_000.png"):
        open_image_cache(out, names_needed=names + ["00099999_000.png"])
    other = tmp_path / "elsewhere"
    copy_images(other, names)
    with pytest.raises(UserError, match=f"built from {folder.resolve()}, not {other.resolve()}"):
        open_image_cache(out, data_dir=other)

    stat = (folder / names[0]).stat()
    os.utime(folder / names[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(UserError, match=f"1 image\\(s\\) under .* changed .*first: {names[0]}, modification time"):
        open_image_cache(out, data_dir=folder)
    # Only the needed files are compared: a split that does not use the touched file still opens.
    open_image_cache(out, data_dir=folder, names_needed=names[1:])
    with open(folder / names[1], "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(UserError, match=f"2 image\\(s\\) .* changed .*fingerprint"):
        open_image_cache(out, data_dir=folder)
    with pytest.raises(UserError, match=f"first: {names[1]}, size"):
        open_image_cache(out, data_dir=folder, names_needed=names[1:])
    (folder / names[2]).unlink()
    with pytest.raises(UserError, match=f"no longer under .*{names[2]}"):
        open_image_cache(out, data_dir=folder, names_needed=names[2:])


def test_every_bad_png_is_listed_and_fixing_them_finishes_the_build(tmp_path, capsys):
    folder = tmp_path / "images"
    good = copy_images(folder, ["00000001_000.png", "00027426_000.png", "00000129_000.png", "00000284_000.png"])
    payload = (REAL / "00000404_000.png").read_bytes()
    bad = {"00000500_000.png": payload[: len(payload) // 2],   # truncated
           "00000600_000.png": payload[:2000],                  # truncated in the header chunks
           "00000700_000.png": b"this is not a png file"}
    for name, content in bad.items():
        (folder / name).write_bytes(content)
    # A decompression bomb (20000 x 20000 px) is an unreadable file like the others, not a crash of the build.
    bad["00000800_000.png"] = write_decompression_bomb(folder / "00000800_000.png").read_bytes()
    names = good + list(bad)
    out = tmp_path / "cache"
    with pytest.raises(UserError) as caught:
        build_image_cache(folder, names, out, size=32, workers=2, chunk_size=2)
    message = str(caught.value)
    assert message.startswith("4 of 8 image(s) cannot be decoded") and "\n" not in message
    for name in ("00000500_000.png", "00000600_000.png", "00000700_000.png"):  # the first three are named
        assert name in message
    with pytest.raises(UserError, match="unfinished"):
        open_image_cache(out)
    for name in bad:
        shutil.copy2(REAL / "00000404_000.png", folder / name)
    counts = []
    fixed = build_image_cache(folder, names, out, size=32, workers=1, chunk_size=2, after_chunk=counts.append)
    assert len(counts) < 4  # chunks of good images only were kept; those with a bad file were decoded again
    for name in names:
        expected = np.asarray(cache_build.stored_image(load_png(folder / name), 32))
        np.testing.assert_array_equal(fixed.array[fixed.index_of(name)], expected)


# ---------------------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------------------
class CountingArray:
    """Wraps the memory map and counts the indexing calls made on it."""

    def __init__(self, array):
        self.array, self.calls = array, []

    def __getitem__(self, key):
        self.calls.append(key)
        return self.array[key]


def test_batch_read_is_one_sorted_read_and_equals_item_reads(images, cache):
    _, names = images
    labels = np.eye(len(names), 14, dtype=np.uint8)
    dataset = CachedBatchDataset(cache, names, labels)
    counting = CountingArray(cache.array)
    cache._array, cache._pid = counting, os.getpid()
    try:
        order = [5, 1, 11, 3, 1, 0]
        batch = dataset[order]
        assert len(counting.calls) == 1
        assert list(counting.calls[0]) == sorted(cache.index_of(names[i]) for i in order)
    finally:
        cache._array = None
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (6, 256, 256)
    assert batch["target"].dtype == torch.float32 and batch["index"].dtype == torch.int64
    assert batch["index"].tolist() == order
    for k, position in enumerate(order):
        item = dataset[position]
        torch.testing.assert_close(batch["image"][k], item["image"], rtol=0, atol=0)
        torch.testing.assert_close(batch["target"][k], torch.from_numpy(labels[position]).float())
        np.testing.assert_array_equal(item["image"].numpy(), cache.array[cache.index_of(names[position])])
    samples = dataset.__getitems__(order)
    assert [int(s["index"]) for s in samples] == order


def test_cpu_augmentation_variant_matches_png_path_transforms(images, cache):
    folder, names = images
    transform = build_transform(224, MEAN, STD, train=False)
    dataset = CachedBatchDataset(cache, names, np.zeros((len(names), 14)), transform=transform)
    batch = dataset[list(range(len(names)))]
    assert batch["image"].shape == (len(names), 3, 224, 224)
    for k, name in enumerate(names):
        assert grey_levels(batch["image"][k] - png_eval_view(folder / name)) <= 1.0 + 1e-3
    train = CachedBatchDataset(cache, names, np.zeros((len(names), 14)),
                               transform=build_transform(224, MEAN, STD, train=True))
    assert train[[0, 1]]["image"].shape == (2, 3, 224, 224)


@pytest.mark.parametrize("train", [True, False])
def test_cpu_crops_finished_on_the_device_equal_the_png_path_transforms(images, cache, train):
    """crop_transform in the workers + DeviceAugment.to_model_input = build_transform, draw for draw."""
    _, names = images
    augment = DeviceAugment(224, MEAN, STD, train=train)
    crops = CachedBatchDataset(cache, names, np.zeros((len(names), 14)), transform=crop_transform(224, train))
    full = CachedBatchDataset(cache, names, np.zeros((len(names), 14)),
                              transform=build_transform(224, MEAN, STD, train=train))
    positions = list(range(len(names)))
    with torch.random.fork_rng():
        torch.manual_seed(3)
        uint8_batch = crops[positions]["image"]
        torch.manual_seed(3)
        expected = full[positions]["image"]
    assert uint8_batch.dtype == torch.uint8 and uint8_batch.shape == (len(names), 224, 224)
    torch.testing.assert_close(augment.to_model_input(uint8_batch), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("workers", [0, 2])
def test_cached_loader_delivers_batches_in_the_png_loaders_order(images, cache, workers):
    _, names = images
    dataset = CachedBatchDataset(cache, names, np.zeros((len(names), 14)))
    loader = cached_loader(dataset, batch_size=5, shuffle=True, seed=7, drop_last=True, workers=workers)
    batches = list(loader)
    assert [b["image"].shape for b in batches] == [(5, 256, 256)] * 2
    # SplitData.loader's DataLoader with the same seed and batch size visits the positions in this order.
    reference = torch.utils.data.DataLoader(list(range(len(names))), batch_size=5, shuffle=True, drop_last=True,
                                            generator=torch.Generator().manual_seed(7), num_workers=0)
    assert [b["index"].tolist() for b in batches] == [b.tolist() for b in reference]
    for batch in batches:
        for k, position in enumerate(batch["index"].tolist()):
            np.testing.assert_array_equal(batch["image"][k].numpy(), cache.array[cache.index_of(names[position])])
    sequential = [b["index"].tolist() for b in cached_loader(dataset, 5, shuffle=False)]
    assert sequential == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11]]


def test_cache_object_crosses_processes_without_its_map(cache):
    cache.array  # opened here
    copy = pickle.loads(pickle.dumps(cache))
    assert copy._array is None
    np.testing.assert_array_equal(copy.read([2, 0]), cache.read([2, 0]))


# ---------------------------------------------------------------------------------------------------------------------
# Command line and threads
# ---------------------------------------------------------------------------------------------------------------------
def test_command_line_builds_and_reports_errors_in_one_line(tmp_path, capsys):
    folder = tmp_path / "images"
    copy_images(folder, ["00000001_000.png", "00027426_000.png"])
    assert run_main(image_cache_command.main, ["--data-dir", str(folder), "--out", str(tmp_path / "c"), "--all",
                                       "--size", "64", "--workers", "1"]) == 0
    assert "caching all 2 PNGs" in capsys.readouterr().out
    assert open_image_cache(tmp_path / "c", data_dir=folder).size == 64
    assert run_main(image_cache_command.main, ["--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "d"),
                                       "--all"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: data directory") and err.count("\n") == 1
    # The official split lists images this folder lacks: one line naming the count and the first.
    assert run_main(image_cache_command.main, ["--data-dir", str(folder), "--out", str(tmp_path / "e")]) == 2
    assert "listed image(s) are not under" in capsys.readouterr().err


def test_threads_and_workers_share_the_cores(capsys):
    assert choose_threads_and_workers(cores=1) == (1, 0)
    assert choose_threads_and_workers(cores=2) == (1, 1)
    assert choose_threads_and_workers(cores=16) == (1, 15)
    assert choose_threads_and_workers(cores=16, kind="read") == (14, 2)
    assert choose_threads_and_workers(cores=2, kind="read") == (1, 1)
    # predict.py: decoding threads beside the model's own (a third of the cores).
    assert [choose_threads_and_workers(cores=n, kind="predict") for n in (1, 2, 3, 6, 16)] == \
        [(1, 0), (1, 1), (2, 1), (4, 2), (11, 5)]
    assert [choose_threads_and_workers(cores=n, kind="predict_onnx") for n in (1, 2, 4, 16)] == \
        [(1, 0), (1, 1), (2, 2), (8, 8)]
    assert choose_threads_and_workers(requested_workers=4, cores=8) == (4, 4)
    assert choose_threads_and_workers(requested_threads=3, cores=8) == (3, 5)
    assert choose_threads_and_workers(requested_workers=0, cores=4) == (4, 0)
    capsys.readouterr()
    assert choose_threads_and_workers(3, 2, cores=2) == (2, 3)
    line = capsys.readouterr().out
    assert "2 intra-op thread(s) + 3 loader worker(s) on 2 core(s)" in line and "contention" in line
    assert "--workers and --threads" in line
