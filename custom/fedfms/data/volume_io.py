"""Volumes in clinical formats, read with their geometry and checked before any large allocation.

Formats (by name; DICOM by the files' ``DICM`` preamble):

- NIfTI ``.nii`` / ``.nii.gz``: NiBabel (the preparers' original reader, so their output is unchanged);
- MetaImage ``.mha`` / ``.mhd`` (+ its data file), NRRD ``.nrrd`` / ``.nhdr`` and DICOM series folders:
  MONAI's ``ITKReader``.

Every volume comes back as its array in index order (i, j, k) = (X, Y, Z), the dtype as stored, and the
4x4 voxel-to-world affine in RAS, NiBabel's convention (``ITKReader`` converts ITK's LPS). Spacing,
direction and origin are read off that affine. k is the depth axis: the preparers and the bundles'
inference slice along it.

Before a reader allocates the voxel buffer, :func:`check_declared_size` refuses a header that declares
more than :data:`MAX_VOXELS` voxels, or more bytes than the file can hold (raw data: the file must be at
least that large; gzip/zlib: deflate compresses at most 1032:1), so a corrupted or hostile header
fails with a message naming the file instead of a ``MemoryError`` after gigabytes were allocated.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedfms.data.errors import DataError, read_error


def load_nifti(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI file fully -> (data array as stored, 4x4 affine); DataError if unreadable."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        return np.asanyarray(img.dataobj), np.asarray(img.affine, dtype=np.float64)
    except Exception as exc:  # nibabel raises many types for truncated/corrupt files (EOFError, zlib, ...)
        raise read_error(path, exc) from exc


#: File names a volume may have; ``.nii.gz`` before ``.nii`` so the longer suffix wins.
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")
#: Largest voxel count a header may declare (default 2**28, 1 GiB as float32); the environment
#: variable FEDFMS_MAX_VOXELS raises it for larger scans.
MAX_VOXELS = int(os.environ.get("FEDFMS_MAX_VOXELS", 2**28))
DEFLATE_MAX_RATIO = 1032  # the largest compression ratio deflate (gzip, zlib) can reach
GEOMETRY_TOLERANCE = 1e-3  # relative spacing, direction cosines, origin in units of the smallest spacing


@dataclass(frozen=True)
class Volume:
    """A volume as read: ``array`` (X, Y, Z) as stored, ``affine`` 4x4 voxel -> world (RAS, mm),
    ``source`` the file or DICOM folder, ``files`` the DICOM slice files in k order (else empty)."""

    array: np.ndarray
    affine: np.ndarray
    source: str
    files: tuple[str, ...] = ()

    @property
    def spacing(self) -> np.ndarray:
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def direction(self) -> np.ndarray:
        """3x3, columns = world directions of the i, j, k axes (RAS)."""
        return self.affine[:3, :3] / self.spacing

    @property
    def origin(self) -> np.ndarray:
        return self.affine[:3, 3]


def volume_suffix(name: str | Path) -> str | None:
    """The volume format suffix of a file name (lower case, e.g. ".nii.gz"), or None."""
    lower = Path(name).name.lower()
    return next((s for s in VOLUME_SUFFIXES if lower.endswith(s) and len(lower) > len(s)), None)


def volume_stem(name: str | Path) -> str:
    """The file name without its volume suffix (the name itself if it has none)."""
    name = Path(name).name
    suffix = volume_suffix(name)
    return name[: -len(suffix)] if suffix else name


def is_dicom_file(path: Path) -> bool:
    """Whether ``path`` is a file with the DICOM preamble (pydicom's check)."""
    from pydicom.misc import is_dicom

    try:
        return path.is_file() and is_dicom(path)
    except OSError:
        return False


def dicom_files(folder: Path) -> list[Path]:
    """The DICOM files directly in ``folder``, sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if is_dicom_file(p))


def dicom_series(folder: str | Path) -> tuple[str, list[str]]:
    """The one DICOM series in ``folder`` -> (ITK series identifier, its files in slice order).

    The files are listed by ITK's GDCMSeriesFileNames with the settings of MONAI's ITKReader (series
    details, split by series date), so their order is the k order of the volume ITKReader reads.
    DataError if the folder holds no series or more than one (put each series in its own folder).
    """
    import itk

    names = itk.GDCMSeriesFileNames.New()
    names.SetUseSeriesDetails(True)
    names.AddSeriesRestriction("0008|0021")  # as ITKReader does: series date
    names.SetDirectory(str(folder))
    uids = list(names.GetSeriesUIDs())
    if len(uids) != 1:
        found = "no DICOM series" if not uids else f"{len(uids)} DICOM series; put each series in its own folder"
        raise DataError(folder, f"expected one DICOM series in the folder, found {found}")
    return uids[0], [str(f) for f in names.GetFileNames(uids[0])]


def _text_header(path: Path, separator: str, last_key: str | None) -> dict[str, str]:
    """Key/value fields of a MetaImage (``Key = value``) or NRRD (``key: value``) text header, keys in
    lower case; reading stops at ``last_key`` (MetaImage) or the blank line ending the header (NRRD)."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    fields: dict[str, str] = {}
    for line in head.decode("latin-1").splitlines():
        if not line.strip() and last_key is None:
            break
        key, sep, value = line.partition(separator)
        if sep:
            fields[key.strip().lower()] = value.strip()
        if key.strip().lower() == last_key:
            break
    return fields


def _stored_bytes(path: Path) -> tuple[int, int] | None:
    """(bytes on disk holding the voxels, largest compression ratio) for a NIfTI, MetaImage or NRRD
    file; None when that cannot be told cheaply (data split over several files, other encodings)."""
    suffix = volume_suffix(path)
    if suffix in (".nii", ".nii.gz"):
        return path.stat().st_size, DEFLATE_MAX_RATIO if suffix == ".nii.gz" else 1
    if suffix in (".mha", ".mhd"):
        fields = _text_header(path, "=", last_key="elementdatafile")
        data, ratio = fields.get("elementdatafile", "LOCAL"), (
            DEFLATE_MAX_RATIO if fields.get("compresseddata", "false").lower() == "true" else 1)
    else:
        fields = _text_header(path, ":", last_key=None)
        encoding = fields.get("encoding", "raw").lower()
        if encoding not in ("raw", "gzip", "gz"):
            return None
        data, ratio = fields.get("data file", fields.get("datafile", "LOCAL")), 1 if encoding == "raw" else DEFLATE_MAX_RATIO
    if data.upper() == "LOCAL":
        return path.stat().st_size, ratio
    if data.upper().startswith("LIST") or "%" in data or " " in data:
        return None
    data_file = path.parent / data
    if not data_file.is_file():
        raise DataError(path, f"its data file {data} was not found beside it")
    return data_file.stat().st_size, ratio


def _declared(path: Path) -> tuple[tuple[int, ...], int]:
    """(shape, bytes per voxel) from the header alone, without reading the voxels."""
    if volume_suffix(path) in (".nii", ".nii.gz"):
        import nibabel as nib

        header = nib.load(str(path)).header
        return tuple(int(n) for n in header.get_data_shape()), header.get_data_dtype().itemsize
    if path.is_dir():
        import pydicom

        files = dicom_series(path)[1]
        first = pydicom.dcmread(files[0], stop_before_pixels=True)
        frames = int(getattr(first, "NumberOfFrames", 1) or 1)
        bits = int(getattr(first, "BitsAllocated", 16))
        return (int(first.Columns), int(first.Rows), frames * len(files)), max(1, bits // 8) * int(getattr(first, "SamplesPerPixel", 1))
    import itk

    io = itk.ImageIOFactory.CreateImageIO(str(path), itk.CommonEnums.IOFileMode_ReadMode)
    if io is None:
        raise DataError(path, "unreadable or corrupted file (no ITK image reader recognises it)")
    io.SetFileName(str(path))
    io.ReadImageInformation()
    shape = tuple(int(io.GetDimensions(i)) for i in range(io.GetNumberOfDimensions()))
    return shape, int(io.GetComponentSize()) * int(io.GetNumberOfComponents())


def check_declared_size(path: str | Path) -> None:
    """Refuse a volume whose header declares an implausible size, before anything is allocated.

    DataError naming the file when the header declares more than MAX_VOXELS voxels, or more bytes than
    the file can hold (see the module docstring); also when the header itself is unreadable.
    """
    path = Path(path)
    try:
        shape, itemsize = _declared(path)
        stored = None if path.is_dir() else _stored_bytes(path)
    except DataError:
        raise
    except Exception as exc:  # nibabel / ITK / pydicom raise many types for a corrupted header
        raise read_error(path, exc) from exc
    voxels = int(np.prod(shape, dtype=np.float64))
    if stored is not None:
        on_disk, ratio = stored
        if voxels * itemsize > on_disk * ratio:
            how = f"even at deflate's maximum ratio of {ratio}:1" if ratio > 1 else "uncompressed"
            raise DataError(path, f"header declares shape {shape} x {itemsize} bytes = {voxels * itemsize:,} bytes, "
                                  f"more than the {on_disk:,} bytes on disk can hold ({how}): truncated file or corrupted header")
    if voxels > MAX_VOXELS:
        raise DataError(path, f"header declares shape {shape} = {voxels:,} voxels, above the limit of "
                              f"{MAX_VOXELS:,} (FEDFMS_MAX_VOXELS); corrupted header, or set the variable higher")


def read_volume(path: str | Path) -> Volume:
    """Read a volume file or DICOM series folder (see the module docstring); size checked first.

    DataError naming the file for a missing path, a folder with a volume suffix, an implausible header,
    an unreadable or corrupted file, or an unsupported format.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(path, "not found")
    if path.is_dir() and volume_suffix(path):
        raise DataError(path, "is a folder, expected a volume file")
    if not path.is_dir() and volume_suffix(path) is None:
        raise DataError(path, f"unsupported volume format; expected {', '.join(VOLUME_SUFFIXES)} or a DICOM series folder")
    check_declared_size(path)
    if volume_suffix(path) in (".nii", ".nii.gz"):
        array, affine = load_nifti(path)
        return Volume(array, affine, str(path))
    from monai.data import ITKReader

    try:
        series, files = dicom_series(path) if path.is_dir() else ("", [])
        reader = ITKReader(series_name=series)
        image = reader.read(str(path))
        array, meta = reader.get_data(image)
        array = np.array(array, copy=True)  # ITKReader returns a view of ITK's buffer
    except DataError:
        raise
    except Exception as exc:  # ITK raises RuntimeError for corrupted files, GDCM others
        raise read_error(path, exc) from exc
    return Volume(array, np.asarray(meta["affine"], dtype=np.float64), str(path), tuple(files))


def geometry_mismatch(a: Volume, b: Volume, tolerance: float = GEOMETRY_TOLERANCE) -> str | None:
    """How the geometry (spacing, direction, origin) of two volumes differs, or None if it agrees
    within ``tolerance`` (relative for spacing, absolute for direction cosines, in units of the
    smallest spacing for the origin)."""

    def fmt(v: np.ndarray) -> str:
        return np.array2string(np.asarray(v), precision=4, suppress_small=True, separator=", ")

    if not np.allclose(a.spacing, b.spacing, rtol=tolerance, atol=0):
        return f"spacing {fmt(a.spacing)} vs {fmt(b.spacing)}"
    if not np.allclose(a.direction, b.direction, rtol=0, atol=tolerance):
        return f"direction {fmt(a.direction)} vs {fmt(b.direction)}"
    if np.abs(a.origin - b.origin).max() > tolerance * a.spacing.min():
        return f"origin {fmt(a.origin)} vs {fmt(b.origin)} mm"
    return None


def check_same_geometry(image: Volume, label: Volume) -> None:
    """DataError naming both files when label and image differ in spacing, direction or origin."""
    problem = geometry_mismatch(image, label)
    if problem:
        raise DataError(label.source, f"geometry differs from the image {image.source}: {problem} (image vs label)")


def find_volumes(folder: Path) -> dict[str, list[Path]]:
    """Volume files and DICOM series folders directly in ``folder`` (plus folders named like volume
    files, so that callers can report them) -> {stem: paths}, sorted."""
    found: dict[str, list[Path]] = {}
    for path in sorted(Path(folder).iterdir()):
        if volume_suffix(path) is not None or (path.is_dir() and dicom_files(path)):
            found.setdefault(volume_stem(path), []).append(path)
    return found
