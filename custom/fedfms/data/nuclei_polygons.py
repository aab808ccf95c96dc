"""Nucleus outlines in Aperio ImageScope XML (MoNuSeg, MoNuSAC) -> binary masks.

Layout of the files::

    <Annotations>
      <Annotation Id="1" ...>
        <Attributes><Attribute Name="Epithelial" .../></Attributes>   (MoNuSAC: the cell type)
        <Regions>
          <Region Id="1" ...><Vertices><Vertex X="12.5" Y="40.25" [Z="0"]/> ...</Vertices></Region>
        </Regions>
      </Annotation>
    </Annotations>

X is the column and Y the row in full-resolution pixel coordinates. Each region is filled as a closed
polygon with PIL (vertices rounded to the nearest pixel centre; boundary pixels included).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Collection
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from fedfms.data.preparation import DataError, read_error


def read_polygons(path: Path, exclude: Collection[str] = ()) -> list[np.ndarray]:
    """Polygons (K, 2) as (x, y) of an ImageScope XML file, skipping annotations whose class is in exclude.

    Regions with fewer than three vertices outline no area and are dropped.
    """
    try:
        root = ET.parse(path).getroot()
    except Exception as exc:  # ParseError, OSError
        raise read_error(path, exc) from exc
    excluded = {name.lower() for name in exclude}
    polygons = []
    for annotation in root.iter("Annotation"):
        names = {a.get("Name", "").lower() for a in annotation.iter("Attribute")}
        if names & excluded:
            continue
        for region in annotation.iter("Region"):
            try:
                xy = [(float(v.attrib["X"]), float(v.attrib["Y"])) for v in region.iter("Vertex")]
            except (KeyError, ValueError):
                raise DataError(path, f"region {region.get('Id')!r} has a vertex without numeric X and Y") from None
            if len(xy) >= 3:
                polygons.append(np.asarray(xy))
    return polygons


def rasterize(polygons: list[np.ndarray], height: int, width: int) -> np.ndarray:
    """Union of filled polygons (x, y vertices) on a (height, width) grid -> uint8 mask in {0, 1}."""
    canvas = Image.new("1", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for xy in polygons:
        draw.polygon([tuple(p) for p in xy.tolist()], fill=1, outline=1)
    return np.asarray(canvas, dtype=np.uint8)
