"""Bad images of every kind and images of any shape: decoding against known pixels, a big JPEG
decoded at reduced scale, every listed file scanned or recorded (links, bombs, FIFOs, empty,
truncated, names that are not UTF-8), memory per image whatever its shape, crops cut as
torchvision cuts them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
from PIL import Image

from cnnviz import load_model, scan
from cnnviz.images.decoding import MAX_PIXELS, decode_file
from cnnviz.images.library import ImageLibrary

from ..conftest import IMAGEN, needs_shared

# -- bad images -----------------------------------------------------------------------------

def test_decoding_rules_against_known_pixels(tmp_path):
    ramp = np.tile(np.arange(0, 65536, 257, dtype=np.uint16)[None, :], (8, 1))  # 0..65535 in 256 steps
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    got = np.asarray(decode_file(tmp_path / "g16.png").image)
    np.testing.assert_array_equal(got[..., 0], np.tile(np.arange(256, dtype=np.uint8), (8, 1)))
    assert (got[..., 0] == got[..., 2]).all()

    floats = np.linspace(0, 1, 256, dtype=np.float32)[None, :].repeat(4, 0)
    Image.fromarray(floats, "F").save(tmp_path / "f32.tiff")
    np.testing.assert_array_equal(np.asarray(decode_file(tmp_path / "f32.tiff").image)[..., 1],
                                  np.round(floats * 255).astype(np.uint8))

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)  # landscape, stored as is
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(pixels).save(tmp_path / "phone.png", exif=exif)
    decoded = decode_file(tmp_path / "phone.png")
    np.testing.assert_array_equal(np.asarray(decoded.image), np.rot90(pixels, k=-1))
    assert decoded.original_size == (20, 30)  # upright: 20 wide, 30 high


def test_a_big_jpeg_is_decoded_at_reduced_scale_with_the_original_geometry(tmp_path):
    Image.new("RGB", (6000, 4000), (200, 30, 40)).save(tmp_path / "big.jpg", quality=90)
    decoded = decode_file(tmp_path / "big.jpg", min_side=256)
    assert decoded.original_size == (6000, 4000)
    assert min(decoded.image.size) >= 512 and decoded.image.size[0] < 6000
    from cnnviz.model import Preprocessing

    pre = Preprocessing(resize=256, crop=(224, 224))
    crop, geometry = pre.crop_uint8(decoded.image, decoded.original_size)
    box = geometry.to_original((0, 0, 224, 224))  # the whole crop, in the photo's pixels
    # resized to 384x256 (scale 15.625), crop offset (16, 80): the box in the photo is exact
    assert box == pytest.approx((16 * 15.625, 80 * 15.625, 240 * 15.625, 304 * 15.625), abs=1)


@pytest.mark.slow
def test_every_listed_file_is_scanned_or_recorded(photo_dir, tmp_path, recwarn):
    lib = tmp_path / "lib"
    (lib / "things").mkdir(parents=True)
    elsewhere = tmp_path / "cats-elsewhere"
    elsewhere.mkdir()
    for name in ("chelsea.png", "horse.png"):
        shutil.copy(photo_dir / "animals" / name, elsewhere / name)
    (lib / "cats").symlink_to(elsewhere, target_is_directory=True)  # a symlinked class folder
    (lib / "things" / "loop").symlink_to(lib, target_is_directory=True)  # a link loop
    (lib / "things" / "broken.jpg").symlink_to(tmp_path / "nowhere.jpg")
    shutil.copy(photo_dir / "things" / "coffee.png", lib / "things" / "coffee.png")
    Image.open(photo_dir / "things" / "coffee.png").convert("RGB").save(lib / "things" / "coffee.avif")
    bomb = Image.new("1", (20000, MAX_PIXELS // 20000 + 1000))
    bomb.save(lib / "things" / "bomb.png")
    assert (lib / "things" / "bomb.png").stat().st_size < 1_000_000
    listing = ImageLibrary.open(lib)
    assert sorted(listing.relpaths) == ["cats/chelsea.png", "cats/horse.png", "things/bomb.png",
                                        "things/broken.jpg", "things/coffee.avif", "things/coffee.png"]
    run = scan(lib, load_model("resnet18", None), tmp_path / "run.h5", layers="layer2.0", top_k=2,
               workers=0, progress=False)
    with h5py.File(run, "r") as f:
        failed = dict(zip(f["failures/path"].asstr()[()], f["failures/reason"].asstr()[()], strict=True))
        ok = dict(zip(f["images/path"].asstr()[()], f["images/ok"][()], strict=True))
    assert set(failed) == {"things/bomb.png", "things/broken.jpg"}
    assert "over the limit" in failed["things/bomb.png"]
    assert "FileNotFoundError" in failed["things/broken.jpg"]
    assert ok["cats/chelsea.png"] and ok["things/coffee.avif"]
    assert not [w for w in recwarn if "DecompressionBomb" in type(w.message).__name__]


def test_hostile_files_in_a_library(photo_dir, tmp_path):
    """A FIFO named like a photo (would block a reader forever), an empty file, a truncated
    JPEG and a file name that is not UTF-8: all listed, the bad ones recorded, the scan whole."""
    lib = tmp_path / "lib"
    lib.mkdir()
    shutil.copy(photo_dir / "animals" / "chelsea.png", lib / "chelsea.png")
    os.mkfifo(lib / "pipe.jpg")
    (lib / "empty.png").write_bytes(b"")
    data = (photo_dir / "things" / "coffee.png").read_bytes()
    Image.open(photo_dir / "things" / "coffee.png").convert("RGB").save(lib / "cut.jpg")
    (lib / "cut.jpg").write_bytes((lib / "cut.jpg").read_bytes()[:2000])
    odd = os.fsencode(str(lib)) + b"/caf\xe9.png"  # Latin-1 bytes: not UTF-8
    with open(odd, "wb") as f:
        f.write(data)
    run = scan(lib, load_model("resnet18", None), tmp_path / "run.h5", layers="layer2.0", top_k=2,
               workers=1, progress=False)
    with h5py.File(run, "r") as f:
        failed = dict(zip(f["failures/path"].asstr()[()], f["failures/reason"].asstr()[()], strict=True))
        paths = list(f["images/path"].asstr()[()])
        ok = dict(zip(paths, f["images/ok"][()], strict=True))
    assert set(failed) == {"pipe.jpg", "empty.png", "cut.jpg"}
    assert "not a regular file" in failed["pipe.jpg"]
    assert ok["chelsea.png"] and ok["caf\ufffd.png"]


# -- any image shape, bounded memory --------------------------------------------------------

_PEAK = """
import resource, sys
from pathlib import Path
from cnnviz.images.dataset import LibraryDataset
from cnnviz.images.library import ImageLibrary
from cnnviz.model import Preprocessing

data = LibraryDataset(ImageLibrary.open(sys.argv[1]), Preprocessing(resize=232, crop=(224, 224)))
names = data.library.relpaths
before = None
for i, name in enumerate(names):   # the ordinary photo first: its peak is the baseline
    _, crop, _, _, error = data[i]
    assert not error and tuple(crop.shape) == (224, 224, 3), (name, error)
    if before is None:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


@pytest.mark.slow
def test_memory_per_image_does_not_depend_on_its_shape(photo_dir, tmp_path):
    """A 1 x 6000 or 6000 x 1 PNG is a few kB decoded; resized whole to a shorter side of 232 it
    was 1 GB (a 1 x 20000 one took a scan to 5.8 GB). Only the part the crop keeps is
    resampled now: the peak grows by no more than a few network inputs."""
    lib = tmp_path / "lib"
    lib.mkdir()
    shutil.copy(photo_dir / "animals" / "chelsea.png", lib / "a-ordinary.png")
    ramp = np.arange(6000, dtype=np.uint8)
    Image.fromarray(np.stack([ramp, ramp[::-1], ramp // 2], -1)[None]).save(lib / "b-wide.png")
    Image.fromarray(np.stack([ramp, ramp[::-1], ramp // 2], -1)[:, None]).save(lib / "c-tall.png")
    res = subprocess.run([sys.executable, "-c", _PEAK, str(lib)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    grown_mb = int(res.stdout.strip())
    assert grown_mb < 64, f"the peak grew by {grown_mb} MB for two thin images"


@pytest.mark.slow
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_ordinary_photos_are_cut_exactly_as_torchvision_does_and_thin_ones_nearly(photo_dir, interpolation):
    from torchvision import transforms as T

    from cnnviz.model import Preprocessing
    from cnnviz.model.preprocessing import FULL_RESIZE_LIMIT

    mode = T.InterpolationMode(interpolation)
    photos = [p for p in sorted(photo_dir.rglob("*.*")) if p.name != "corrupt.jpg"]
    for resize, crop in ((232, 224), (256, 224), (342, 299), (None, 64)):
        pre = Preprocessing(resize=resize, crop=(crop, crop), interpolation=interpolation)
        steps = [T.Resize(resize, interpolation=mode)] if resize else []
        reference = T.Compose([*steps, T.CenterCrop(crop)])
        for p in photos:
            image = decode_file(p).image
            ours, geometry = pre.crop_uint8(image)
            np.testing.assert_array_equal(ours, np.asarray(reference(image)), err_msg=str(p))
    pre = Preprocessing(resize=232, crop=(224, 224), interpolation=interpolation)
    reference = T.Compose([T.Resize(232, interpolation=mode), T.CenterCrop(224)])
    photo = decode_file(photo_dir / "animals" / "chelsea.png").image
    for size in ((30, 3000), (3000, 30), (7, 900), (1, 2000), (2000, 1), (30, 100)):
        thin = photo.resize(size, Image.BILINEAR)
        rw, rh = pre.resized_size(*size)
        assert (rw, rh) == T.Resize(232)(thin).size
        ours, geometry = pre.crop_uint8(thin)
        assert (geometry.resized_width, geometry.resized_height) == (rw, rh)
        theirs = np.asarray(reference(thin)).astype(int)
        if rw * rh <= FULL_RESIZE_LIMIT * 224 * 224:
            np.testing.assert_array_equal(ours, theirs)
        else:  # resampled in the kept region only: the same filter taps, float rounding aside
            assert np.abs(ours - theirs).max() <= 2 and np.abs(ours - theirs).mean() < 0.2, size


@needs_shared
def test_real_photos_are_cut_exactly_as_torchvision_does():
    from torchvision import transforms as T

    from cnnviz.model import Preprocessing

    photos = sorted(IMAGEN.rglob("*.*"))[::10]
    for interpolation in ("bilinear", "bicubic"):
        pre = Preprocessing(resize=232, crop=(224, 224), interpolation=interpolation)
        reference = T.Compose([T.Resize(232, interpolation=T.InterpolationMode(interpolation)),
                               T.CenterCrop(224)])
        for p in photos:
            image = decode_file(p, min_side=232).image
            np.testing.assert_array_equal(pre.crop_uint8(image)[0], np.asarray(reference(image)), str(p))
