"""The user's own frame pairs (``--data DIR``): a folder of pairs or a DAVIS-style video folder.

Layouts, either

* a folder of pairs: files ``NAME_a.EXT`` + ``NAME_b.EXT`` (A = the frame to reconstruct or
  colourise, B = the reference), or sub-folders that each hold exactly two images (sorted by
  name: first = A, second = B); EXT is png, jpg, jpeg, bmp or tif(f); or
* a DAVIS-style video folder: ``DIR/JPEGImages/<res>/<sequence>/*.jpg`` (``DIR`` may also be
  ``JPEGImages`` itself or one ``<res>`` folder; ``480p`` is preferred when several resolutions
  exist). Pairs are frames ``t`` and ``t + gap`` (gap 10, as the paper), ``t = 0, gap, 2 gap ...``,
  taken round-robin over the sequences so that a few pairs cover many sequences.

Training tasks (colorization) split user data: the last fifth of the sequences (DAVIS) or of the
pairs (folder of pairs), sorted by name and at least one, is the test split, the rest is trained
on; a folder with a single pair uses it for both. Reconstruction and inpainting use every pair.

Images are decoded by :func:`~attnbench.tasks.images.read_image`; an unreadable, empty or unlisted
entry or a pair whose frames differ in size is a :class:`UserError` that names the file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import UserError
from .images import read_image, read_image_shape, read_square
from .pairs import FramePair

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DAVIS_GAP = 10


def _images_in(folder: Path) -> list[Path]:
    """The image files of a folder, by suffix; one that cannot be read as a file (a symlink loop, a
    dangling link, a folder named like an image) is a UserError naming it, never silently skipped."""
    found = []
    for path in folder.iterdir():
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        try:
            path.resolve(strict=True)
            regular = path.is_file()
        except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop on older Pythons
            raise UserError(f"--data: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
        if not regular:
            raise UserError(f"--data: {path} is not a regular file")
        found.append(path)
    return sorted(found)


def load_pair(name: str, path_a: Path, path_b: Path, size: Optional[int] = None) -> FramePair:
    """A user pair at full size, or centre-cropped and resized to ``size`` (through the run's cache)."""
    if size is not None:
        if read_image_shape(path_a) != read_image_shape(path_b):
            load_pair(name, path_a, path_b)  # the full-size check below names the sizes
        return FramePair(name, read_square(path_a, size), read_square(path_b, size))
    a, b = read_image(path_a), read_image(path_b)
    if a.shape != b.shape:
        raise UserError(f"frames of pair {name!r} differ in size: {path_a} is {a.shape[1]}x{a.shape[0]}, "
                        f"{path_b} is {b.shape[1]}x{b.shape[0]}")
    return FramePair(name, a, b)


def davis_root(folder: Path) -> Optional[Path]:
    """The ``<res>`` folder holding sequence folders, if ``folder`` is DAVIS-style; else None."""
    if (folder / "JPEGImages").is_dir():
        folder = folder / "JPEGImages"
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir())
    if folder.name == "JPEGImages" and subdirs:
        preferred = [p for p in subdirs if p.name == "480p"]
        return preferred[0] if preferred else subdirs[0]
    if subdirs and all(len(_images_in(d)) > 2 for d in subdirs) and not any(_images_in(folder)):
        return folder  # a <res> folder: sequences of many frames each
    return None


def davis_pair_paths(res_folder: Path, split: str, gap: int = DAVIS_GAP) -> list[tuple[str, Path, Path]]:
    sequences = sorted(p for p in res_folder.iterdir() if p.is_dir())
    if not sequences:
        raise UserError(f"{res_folder}: no sequence folders; expected JPEGImages/<res>/<sequence>/*.jpg")
    sequences = split_entries(sequences, split)
    per_sequence = []
    for seq in sequences:
        frames = _images_in(seq)
        per_sequence.append([(f"{seq.name}/{frames[t].stem}", frames[t], frames[t + gap])
                             for t in range(0, len(frames) - gap, gap)])
    ordered = [pairs[i] for i in range(max(map(len, per_sequence), default=0)) for pairs in per_sequence if i < len(pairs)]
    if not ordered:
        raise UserError(f"{res_folder}: no sequence has {gap + 1} frames or more (pairs are {gap} frames apart)")
    return ordered


def folder_pair_paths(folder: Path) -> list[tuple[str, Path, Path]]:
    """``NAME_a``/``NAME_b`` files, or sub-folders of exactly two images."""
    found: list[tuple[str, Path, Path]] = []
    files = {p.stem: p for p in _images_in(folder)}
    for stem, path in sorted(files.items()):
        if stem.endswith("_a"):
            other = files.get(stem[:-2] + "_b")
            if other is None:
                raise UserError(f"{path}: no matching {stem[:-2]}_b image (pairs are NAME_a.EXT + NAME_b.EXT)")
            found.append((stem[:-2], path, other))
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        images = _images_in(sub)
        if len(images) != 2:
            raise UserError(f"{sub}: a pair folder must hold exactly two images, found {len(images)}")
        found.append((sub.name, images[0], images[1]))
    return found


def user_pair_paths(folder: str | Path, split: str = "all") -> list[tuple[str, Path, Path]]:
    """Find the pairs in a user folder (layouts in the module docstring), without reading them."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise UserError(f"--data {folder}: not a folder")
    davis = davis_root(root)
    if davis is not None:
        return davis_pair_paths(davis, split)
    found = folder_pair_paths(root)
    if not found:
        raise UserError(f"--data {folder}: no image pairs found; expected NAME_a.png + NAME_b.png files, "
                        "sub-folders of two images, or JPEGImages/<res>/<sequence>/*.jpg (DAVIS)")
    return split_entries(found, split)


def split_entries(entries: list, split: str) -> list:
    """The last fifth (at least one) is the test split, the rest training; one entry serves both."""
    if split == "all" or len(entries) < 2:
        return entries
    n_test = max(1, len(entries) // 5)
    return entries[: len(entries) - n_test] if split == "train" else entries[len(entries) - n_test :]


def user_pairs(folder: str | Path, count: int, split: str = "all", size: Optional[int] = None) -> list[FramePair]:
    """Read the first ``count`` pairs of ``split`` (``all``, ``train``, ``test``) of a user folder,
    at full size or square at ``size``."""
    return [load_pair(*entry, size=size) for entry in user_pair_paths(folder, split)[:count]]

