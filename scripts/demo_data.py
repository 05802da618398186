"""The demo weights' images, rebuilt on any machine from the package registries alone (train_demo.py --stage data).

Sources: the photos scikit-image ships; the wallpapers of Debian's gnome-backgrounds, plasma-workspace-wallpapers
and ukui-wallpapers packages (``apt-get download`` + ``dpkg -x`` into WORK/debs, nothing installed); dead-leaves
images. They are split by name into train and val (val: never trained on, used for every choice). The photographs
of the lomiri-wallpapers-16.04/-20.04 packages (Ubuntu Touch's wallpapers, mostly camera photos) are split the same
way into photo and photo_val: extra training and validation images for the deblurring demo, kept apart so that the
sr4x demo's data stay what its nets were trained and tuned on. The photos of
Debian's mate-backgrounds (nature/) are the test set: no source of training data, looked at only for the final
scores. Flat colours (WORK/data/flat) are extra training images for the fusion network only. Large images are
reduced (Lanczos) to at most MAX_SIDE pixels on their long side, everything is saved as 8-bit RGB PNG in
WORK/data/{train,val,test,flat,photo,photo_val}, with WORK/data/manifest.json listing each file's origin.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

MAX_SIDE = 1600
TRAIN_PACKAGES = ("gnome-backgrounds", "plasma-workspace-wallpapers", "ukui-wallpapers")
TEST_PACKAGE = "mate-backgrounds"
PHOTO_PACKAGES = ("lomiri-wallpapers-16.04", "lomiri-wallpapers-20.04")
SKIMAGE_PHOTOS = ("astronaut", "rocket", "hubble_deep_field", "retina", "camera", "brick", "grass", "gravel",
                  "coins", "moon", "immunohistochemistry", "coffee", "chelsea")
SKIMAGE_VAL = ("coffee", "chelsea")
VAL_FRACTION = 0.2  # of the wallpapers, by a hash of the name
DEAD_LEAVES = 64
FLAT = 32  # flat-colour images for the fusion network: the 8 corners of the RGB cube, then random colours
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def unpack(package: str, debs: Path) -> Path:
    """Download a Debian package and unpack it under debs/<package> (no install, no root needed to read)."""
    root = debs / package
    if not root.exists():
        debs.mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "download", package], cwd=debs, check=True, capture_output=True)
        deb = sorted(debs.glob(f"{package}_*.deb"))[-1]
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    return root


def wallpapers(root: Path) -> dict[str, Path]:
    """name → file: the largest picture of each KDE wallpaper folder (images/ and images_dark/ apart), every
    picture of the GNOME/UKUI backgrounds folder; previews (screenshot.*) and tiny files left out."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() not in IMAGE_SUFFIXES or path.stem == "screenshot":
            continue
        with Image.open(path) as im:
            if min(im.size) < 512:
                continue
            area = im.size[0] * im.size[1]
        parts = path.relative_to(root).parts
        if "contents" in parts:  # KDE: wallpapers/<Name>/contents/images[_dark]/<W>x<H>.ext
            i = parts.index("contents")
            name = f"kde-{parts[i - 1]}" + ("-dark" if parts[i + 1] == "images_dark" else "")
        else:
            name = f"{root.name.split('-')[0]}-{path.stem}"
        if name not in found or area > found[name][1]:
            found[name] = (path, area)
    return {name: path for name, (path, _) in found.items()}


def is_val(name: str) -> bool:
    """Whether a wallpaper goes to val, decided by its family (dark/light variants of a picture stay together)."""
    family = name.removesuffix("-dark").removesuffix("-d").removesuffix("-l")
    return int(hashlib.sha256(family.encode()).hexdigest(), 16) % 1000 < VAL_FRACTION * 1000


def save(image: Image.Image, path: Path) -> None:
    image = image.convert("RGB")
    scale = MAX_SIDE / max(image.size)
    if scale < 1:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def build(work: Path) -> dict:
    """Write WORK/data/{train,val,test,flat,photo,photo_val} and manifest.json; returns the manifest."""
    import skimage.data

    from dpir_fast.data.dead_leaves import dead_leaves

    data, debs = work / "data", work / "debs"
    manifest = {"train": {}, "val": {}, "test": {}, "flat": {}, "photo": {}, "photo_val": {}}

    def put(split: str, name: str, image: Image.Image, origin: str) -> None:
        save(image, data / split / f"{name}.png")
        manifest[split][name] = origin

    for name in SKIMAGE_PHOTOS:
        put("val" if name in SKIMAGE_VAL else "train", f"skimage-{name}",
            Image.fromarray(getattr(skimage.data, name)()), f"scikit-image {skimage.__version__}: data.{name}")
    for package in TRAIN_PACKAGES:
        for name, path in wallpapers(unpack(package, debs)).items():
            with Image.open(path) as im:
                put("val" if is_val(name) else "train", name, im, f"Debian {package}: {path.name}")
    for package in PHOTO_PACKAGES:
        for name, path in wallpapers(unpack(package, debs)).items():
            with Image.open(path) as im:
                put("photo_val" if is_val(name) else "photo", name, im, f"Debian {package}: {path.name}")
    for name, path in wallpapers(unpack(TEST_PACKAGE, debs) / "usr/share/backgrounds/mate/nature").items():
        with Image.open(path) as im:
            put("test", name, im, f"Debian {TEST_PACKAGE}: nature/{path.name}")
    for i in range(DEAD_LEAVES):
        image = dead_leaves(512, np.random.default_rng([7, i]))
        put("train", f"deadleaves-{i:03d}", Image.fromarray((image * 255).round().astype(np.uint8)),
            "dead leaves (dpir_fast.data.dead_leaves), seed (7, i)")
    corners = [np.array([r, g, b], float) for r in (0, 1) for g in (0, 1) for b in (0, 1)]
    rng = np.random.default_rng(11)
    for i, colour in enumerate(corners + [rng.random(3) for _ in range(FLAT - len(corners))]):
        put("flat", f"flat-{i:02d}", Image.fromarray(np.full((96, 96, 3), np.round(colour * 255), np.uint8)),
            "a flat colour (corners of the RGB cube, then numpy default_rng(11))")
    (data / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest
