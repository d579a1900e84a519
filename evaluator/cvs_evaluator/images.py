"""Where images come from, and loading them as RGB without letting a bad file stop a run.

Three sources, each giving `ImageRecord`s that carry the image's true country and category (the
prompts need the category's cue; screening and the metrics need the country):

- a folder tree `<country>/<category>/<file>`, what a user who collects photos has;
- the country flags in `$CVS_DATA/images/flags` (`<iso2>.png` + `countries.json`), the default
  here and the only country-specific images available;
- a Dollar Street style CSV (image path, country, income), category `family`.

`load_rgb` converts palette, greyscale, LA, RGBA, CMYK (…) images to RGB, compositing alpha on
white. Only undecodable, truncated, zero-size, unreadable, over-the-pixel-limit and missing files,
and paths outside the image root, are skipped — each as a `SkippedImage` with its reason.

A run checks every image's header before any work (`check_images`: cheap, no decoding), so a
decompression bomb is refused before decoding; a file whose damage shows only when decoded (a
truncated JPEG) is skipped when its turn comes (`image_preparer` raises `ImageSkipped`, which the
evaluation catches). The pixel limit is PIL's `Image.MAX_IMAGE_PIXELS` unless
`CVS_MAX_IMAGE_PIXELS` says otherwise.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from PIL import Image, ImageOps, UnidentifiedImageError

from cvs_families.paths import data_dir

if TYPE_CHECKING:
    from cvs_families.spec import FamilySpec, PreparedImage

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
"""File endings a folder tree is searched for (case-insensitive)."""

FLAG_CATEGORY = "flag"
FAMILY_CATEGORY = "family"

SkipReason = Literal[
    "undecodable",
    "truncated",
    "zero_size",
    "too_many_pixels",
    "outside_root",
    "missing",
    "unreadable",
]
MAX_PIXELS_ENV = "CVS_MAX_IMAGE_PIXELS"
"""Environment variable that sets the decompression-bomb limit (pixels per image)."""


class ImageSourceError(ValueError):
    """An image source as a whole is unusable (no such folder, CSV without the needed columns)."""


class ImageSkipped(ValueError):
    """Raised by `image_preparer` for an image that cannot be used; the evaluation catches it,
    records `skipped` and goes on (the message is one line, should it ever reach a user)."""

    def __init__(self, skipped: SkippedImage) -> None:
        super().__init__(f"image {skipped.record.id} skipped ({skipped.reason}): {skipped.detail}")
        self.skipped = skipped
        """The image and why."""


@dataclass(frozen=True)
class ImageRecord:
    """One image and what is true about it."""

    id: str
    """Stable id: the path relative to the source root, POSIX style (`flags/fr.png`)."""
    path: Path
    """Where the file is (not yet checked to be inside the root or decodable)."""
    country: str
    """ISO3 of the true country where known; otherwise the code or name the source gave."""
    country_name: str
    """English name of the true country (for prompts and screening)."""
    category: str
    """Image category (`brands`, …, `flag`, `family`): selects the prompt's cue."""
    income: float | None = None
    """Household income (Dollar Street); None elsewhere."""


@dataclass(frozen=True)
class LoadedImage:
    """An image decoded and converted to RGB."""

    record: ImageRecord
    """The image's record (country, category travel with it)."""
    pixels: NDArray[np.uint8]
    """(height, width, 3) RGB."""


@dataclass(frozen=True)
class SkippedImage:
    """An image that was not used, and why."""

    record: ImageRecord
    """The image's record."""
    reason: SkipReason
    """Machine-readable reason."""
    detail: str
    """One line for a human."""


@dataclass(frozen=True)
class ImageSet:
    """Records found in a source, and the entries of the source that could not become records."""

    root: Path
    """The image root: files outside it are never read."""
    records: list[ImageRecord]
    """Usable records, in a stable order."""
    skipped: list[SkippedImage]
    """Entries rejected while reading the source (e.g. a CSV path outside the image root)."""


# --------------------------------------------------------------------------- countries


def resolve_country(text: str) -> tuple[str, str] | None:
    """(ISO3, English name) for an ISO2/ISO3 code or an English country name; None when the
    project's country table (`cvs_evaluator.countries`) does not know it."""
    from cvs_evaluator import countries

    key = text.strip()
    for lookup in (countries.country, countries.country_by_name):
        try:
            found = lookup(key)
        except LookupError:
            continue
        return found.iso3, found.name
    return None


# --------------------------------------------------------------------------- sources


def folder_images(root: Path) -> ImageSet:
    """Images in a tree `<country>/<category>/<file>` (country as ISO2, ISO3 or a name)."""
    root = Path(root)
    if not root.is_dir():
        raise ImageSourceError(f"image folder {root} does not exist")
    records: list[ImageRecord] = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        relative = path.relative_to(root)
        if len(relative.parts) != 3:
            continue  # not <country>/<category>/<file>: not part of the tree's layout
        country_dir, category, _ = relative.parts
        iso3, name = resolve_country(country_dir) or (country_dir, country_dir)
        records.append(
            ImageRecord(
                id=relative.as_posix(),
                path=path,
                country=iso3,
                country_name=name,
                category=category.replace("_", " "),
            )
        )
    return ImageSet(root=root, records=records, skipped=[])


def flags_dir() -> Path:
    """The default image source: `$CVS_DATA/images/flags`."""
    return data_dir() / "images" / "flags"


def flag_images(folder: Path | None = None) -> ImageSet:
    """The country flags: `<iso2>.png` named by `countries.json` (ISO2 → English name)."""
    folder = flags_dir() if folder is None else Path(folder)
    names_file = folder / "countries.json"
    if not names_file.is_file():
        raise ImageSourceError(f"{names_file} is missing: not a flags folder")
    names: dict[str, str] = json.loads(names_file.read_text(encoding="utf-8"))
    records = []
    for iso2, flag_name in sorted(names.items()):
        path = folder / f"{iso2.lower()}.png"
        # Flags cover territories the survey never sampled: those keep their ISO2 code.
        iso3, name = resolve_country(iso2) or (iso2.upper(), flag_name)
        records.append(
            ImageRecord(
                id=f"flags/{path.name}",
                path=path,
                country=iso3,
                country_name=name,
                category=FLAG_CATEGORY,
            )
        )
    return ImageSet(root=folder, records=records, skipped=[])


DOLLAR_STREET_COLUMNS = {
    "path": ("path", "image", "image_path", "file"),
    "country": ("country", "country_code", "iso3", "iso2"),
    "income": ("income", "income_usd", "monthly_income"),
}
"""Accepted column names of a Dollar Street style CSV, first match wins (case-insensitive)."""


def dollar_street_images(csv_path: Path, image_root: Path | None = None) -> ImageSet:
    """Images listed in a CSV (image path, country, income); paths relative to `image_root`
    (default: the CSV's folder). Category `family`. A path outside the root is skipped."""
    csv_path = Path(csv_path)
    root = (csv_path.parent if image_root is None else Path(image_root)).resolve()
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise ImageSourceError(f"{csv_path}: cannot read the CSV ({error})") from error
    lower = {str(column).strip().lower(): column for column in table.columns}
    columns: dict[str, str] = {}
    for role, candidates in DOLLAR_STREET_COLUMNS.items():
        match = next((lower[name] for name in candidates if name in lower), None)
        if match is None:
            raise ImageSourceError(
                f"{csv_path}: no {role} column (one of {', '.join(candidates)}); "
                f"columns are {', '.join(map(str, table.columns))}"
            )
        columns[role] = match
    records: list[ImageRecord] = []
    skipped: list[SkippedImage] = []
    for row_number, values in enumerate(table.to_dict("records"), start=2):
        raw_path = str(values[columns["path"]]).strip()
        given_country = str(values[columns["country"]]).strip()
        iso3, name = resolve_country(given_country) or (given_country, given_country)
        income = _parse_income(str(values[columns["income"]]))
        path = Path(raw_path) if Path(raw_path).is_absolute() else root / raw_path
        record = ImageRecord(
            id=raw_path,
            path=path,
            country=iso3,
            country_name=name,
            category=FAMILY_CATEGORY,
            income=income,
        )
        if not _inside(path, root):
            detail = f"{csv_path} row {row_number}: {raw_path} is outside the image root {root}"
            skipped.append(SkippedImage(record, "outside_root", detail))
            continue
        records.append(record)
    return ImageSet(root=root, records=records, skipped=skipped)


def _parse_income(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if np.isfinite(value) else None


def _inside(path: Path, root: Path) -> bool:
    """True when `path`, links resolved, lies inside `root`."""
    return Path(path).resolve().is_relative_to(Path(root).resolve())


# --------------------------------------------------------------------------- loading


def max_image_pixels() -> int | None:
    """The run's decompression-bomb limit in pixels: `CVS_MAX_IMAGE_PIXELS` when set (a positive
    whole number), else PIL's `Image.MAX_IMAGE_PIXELS` (None: no limit)."""
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return Image.MAX_IMAGE_PIXELS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ImageSourceError(
            f"{MAX_PIXELS_ENV}={raw!r} is not a positive whole number of pixels (e.g. "
            f"{MAX_PIXELS_ENV}=400000000 allows 20000×20000)"
        )
    return value


def pixel_limit(max_pixels: int | None = None) -> int | None:
    """The most pixels an image may have: the smaller of `max_pixels` and `max_image_pixels()`
    (None: no limit)."""
    limits = [value for value in (max_pixels, max_image_pixels()) if value is not None]
    return min(limits) if limits else None


@contextlib.contextmanager
def _header_first() -> Iterator[None]:
    """PIL's own bomb check at `Image.open` off for the block: the caller checks `pixel_limit`
    on the header right after opening, before decoding, with the image's size in the message
    (PIL's check refuses only above twice its limit and could not be raised by
    `CVS_MAX_IMAGE_PIXELS`). Images are opened from one thread, so the switch is not raced."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _unreachable(record: ImageRecord, root: Path) -> SkippedImage | None:
    """Why the file cannot even be opened (outside the root, missing, empty), else None."""
    path = Path(record.path)
    if not _inside(path, root):
        return SkippedImage(record, "outside_root", f"{path} is outside the image root {root}")
    if not path.is_file():
        return SkippedImage(record, "missing", f"{path} does not exist")
    if path.stat().st_size == 0:
        return SkippedImage(record, "zero_size", f"{path} is empty (0 bytes)")
    return None


def _over_limit(
    record: ImageRecord, width: int, height: int, limit: int | None
) -> SkippedImage | None:
    if limit is None or width * height <= limit:
        return None
    return SkippedImage(
        record,
        "too_many_pixels",
        f"{record.path}: {width}×{height} = {width * height} pixels, over the limit of {limit} "
        f"pixels (a decompression-bomb guard, checked before decoding; set {MAX_PIXELS_ENV} "
        "to change it)",
    )


OPEN_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)
"""What PIL raises for a bad file (UnidentifiedImageError and PermissionError are OSErrors)."""


def _failure(record: ImageRecord, error: BaseException) -> SkippedImage:
    """The `SkippedImage` for an error PIL raised opening or decoding `record`'s file."""
    path = record.path
    message = " ".join(str(error).split())  # one line, whatever PIL wrote
    if isinstance(error, Image.DecompressionBombError | Image.DecompressionBombWarning):
        hint = f"set {MAX_PIXELS_ENV} to change the limit"
        return SkippedImage(record, "too_many_pixels", f"{path}: {message} ({hint})")
    if isinstance(error, UnidentifiedImageError):
        return SkippedImage(record, "undecodable", f"{path}: {message}")
    if isinstance(error, PermissionError):
        return SkippedImage(record, "unreadable", f"{path}: permission denied")
    reason: SkipReason = "truncated" if "truncated" in message.lower() else "undecodable"
    return SkippedImage(record, reason, f"{path}: {type(error).__name__}: {message}")


def load_rgb(
    record: ImageRecord, root: Path, *, max_pixels: int | None = None
) -> LoadedImage | SkippedImage:
    """Decode one image as (H, W, 3) uint8 RGB, or say why it is skipped. Never raises for a bad
    file (a malformed `CVS_MAX_IMAGE_PIXELS` is `ImageSourceError`). The pixel limit
    (`pixel_limit(max_pixels)`) is checked on the header, before decoding."""
    limit = pixel_limit(max_pixels)
    problem = _unreachable(record, root)
    if problem is not None:
        return problem
    path = Path(record.path)
    try:
        with _header_first(), warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                over = _over_limit(record, *image.size, limit)
                if over is not None:
                    return over
                image.load()  # decodes now: a truncated file fails here, not later
                pixels = _to_rgb(ImageOps.exif_transpose(image))
    except OPEN_ERRORS as error:
        return _failure(record, error)
    if pixels.shape[0] == 0 or pixels.shape[1] == 0:
        return SkippedImage(record, "zero_size", f"{path} has no pixels")
    return LoadedImage(record=record, pixels=pixels)


EXIF_ORIENTATION = 0x0112
"""The EXIF tag whose values 5–8 mean the picture is stored rotated by 90°."""


def inspect_image(
    record: ImageRecord, root: Path, *, max_pixels: int | None = None
) -> tuple[int, int] | SkippedImage:
    """(height, width) as `load_rgb` will return the image (EXIF rotation applied), read from
    the file's header without decoding the pixels; or why the image cannot be used (outside the
    root, missing, empty, unreadable, not an image, over the pixel limit). Damage that shows
    only when decoding (a truncated file) passes here: `load_rgb` finds it."""
    limit = pixel_limit(max_pixels)
    problem = _unreachable(record, root)
    if problem is not None:
        return problem
    try:
        with _header_first(), Image.open(record.path) as image:
            width, height = image.size
            over = _over_limit(record, width, height, limit)
            if over is not None:
                return over
            # A PNG's getexif decodes the whole image when no eXIf chunk precedes the pixels:
            # header only here (an eXIf after the pixels is rare; only the budget estimate
            # would see the image unrotated).
            header_exif = "exif" in image.info or image.format != "PNG"
            orientation = image.getexif().get(EXIF_ORIENTATION, 1) if header_exif else 1
    except OPEN_ERRORS as error:
        return _failure(record, error)
    rotated = orientation in (5, 6, 7, 8)
    return (width, height) if rotated else (height, width)


def image_dimensions(record: ImageRecord, root: Path) -> tuple[int, int] | None:
    """`inspect_image`'s (height, width); None when the image cannot be used."""
    size = inspect_image(record, root)
    return None if isinstance(size, SkippedImage) else size


@dataclass(frozen=True)
class ImageCheck:
    """What a run learns of its images from their headers, before any work."""

    sizes: dict[str, tuple[int, int]]
    """Usable image id → (height, width), for the budget check."""
    skipped: list[SkippedImage]
    """Images that cannot be used, with their reasons, in record order."""


def check_images(records: Iterable[ImageRecord], root: Path) -> ImageCheck:
    """`inspect_image` on every record: the usable ones' sizes and the skipped ones."""
    sizes: dict[str, tuple[int, int]] = {}
    skipped: list[SkippedImage] = []
    for record in records:
        outcome = inspect_image(record, root)
        if isinstance(outcome, SkippedImage):
            skipped.append(outcome)
        else:
            sizes[record.id] = outcome
    return ImageCheck(sizes=sizes, skipped=skipped)


def _to_rgb(image: Image.Image) -> NDArray[np.uint8]:
    """(H, W, 3) uint8: alpha (RGBA, LA, PA, palette transparency) composited on white."""
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        rgb = Image.alpha_composite(white, rgba).convert("RGB")
    elif image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 8 bits rather than clip (convert("RGB") clips at 255).
        # 32-bit "I" has no declared depth: take the smallest of 8, 16 bits or the maximum.
        values = np.asarray(image, dtype=np.float64)
        peak = float(values.max(initial=0.0))
        if image.mode.startswith("I;16") or 255.0 < peak <= 65535.0:
            top = 65535.0
        else:
            top = 255.0 if peak <= 255.0 else peak
        grey = np.clip(np.rint(values / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    else:
        rgb = image.convert("RGB")
    return np.asarray(rgb, dtype=np.uint8).copy()


def load_images(
    image_set: ImageSet, *, max_pixels: int | None = None
) -> tuple[list[LoadedImage], list[SkippedImage]]:
    """Load every record of a source (eagerly). Bad files become `SkippedImage`s, never
    exceptions; the source's own rejected entries come first in the skipped list."""
    loaded: list[LoadedImage] = []
    skipped: list[SkippedImage] = list(image_set.skipped)
    for outcome in iter_images(image_set.records, image_set.root, max_pixels=max_pixels):
        if isinstance(outcome, LoadedImage):
            loaded.append(outcome)
        else:
            skipped.append(outcome)
    return loaded, skipped


def iter_images(
    records: Iterable[ImageRecord], root: Path, *, max_pixels: int | None = None
) -> Iterator[LoadedImage | SkippedImage]:
    """Load records one at a time (a run over many photos need not hold them all)."""
    for record in records:
        yield load_rgb(record, root, max_pixels=max_pixels)


def skip_summary(skipped: Sequence[SkippedImage]) -> dict[str, int]:
    """Count of skipped images per reason, for reports."""
    counts: dict[str, int] = {}
    for item in skipped:
        counts[item.reason] = counts.get(item.reason, 0) + 1
    return dict(sorted(counts.items()))


# What a run needs of an image source, by name.


def image_hashes(records: Iterable[ImageRecord], root: Path) -> dict[str, str]:
    """Image id → sha256 of the image file's bytes (a changed file is a different image), for
    the records a run uses (a source may hold many more)."""
    hashes = {}
    for record in records:
        path = record.path if record.path.is_absolute() else root / record.path
        try:
            hashes[record.id] = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            continue  # missing or unreadable: `check_images` skips it with its reason
    return hashes


def image_source(images: str) -> ImageSet:
    """`--images`: "flags", a folder <country>/<category>/<file>, or a Dollar Street CSV."""
    if images == "flags":
        return flag_images()
    path = Path(images)
    return dollar_street_images(path) if path.suffix.lower() == ".csv" else folder_images(path)


def image_sizes(records: Iterable[ImageRecord], root: Path) -> dict[str, tuple[int, int]]:
    """Image id → (height, width) from the file headers (unusable ones left out)."""
    sizes = {}
    for record in records:
        size = image_dimensions(record, root)
        if size is not None:
            sizes[record.id] = size
    return sizes


def image_preparer(image_set: ImageSet, spec: FamilySpec) -> Callable[[str], PreparedImage]:
    """Image id → the family's prepared image (decoded, RGB, preprocessed); `ImageSkipped`
    (with the reason) for an image that cannot be decoded."""
    by_id = {record.id: record for record in image_set.records}

    def prepare(image_id: str) -> PreparedImage:
        outcome = load_rgb(by_id[image_id], image_set.root)
        if isinstance(outcome, SkippedImage):
            raise ImageSkipped(outcome)
        return spec.prepare_image(outcome.pixels)

    return prepare


def no_images(image_id: str) -> PreparedImage:
    """The preparer of a run without images: asking it is an error."""
    raise ValueError(f"item asks for image {image_id!r} but no image source was given")
