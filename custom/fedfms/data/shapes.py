"""Synthetic generic shapes: the pretraining task of the demo's stand-in for SAM's SA-1B weights.

SYNTHETIC and not medical. SAM was pretrained on SA-1B, masks of every kind of object in generic
natural images; FedMSA relies on such an encoder and freezes it. SA-1B cannot be used here, so the demo
pretrains its tiny SAM on this generic figure-ground task instead: :func:`shapes_sample` draws an image
of a textured background, a large textured surface of another colour (the "stuff" of natural images:
a table, a wall, a road), and textured, overlapping objects of random kind (ellipse, rotated rectangle,
triangle, irregular polygon, star, ring) in random colours, brighter or darker than the surface; its
mask is every pixel that belongs to some object, never the background or the surface. Nothing in it is
fitted to the demo's prostate data: objects are placed anywhere (no central prior, on the surface or
off it), there are one to five of them of six kinds, the mask is all of them (not one organ among
others), images are colour or grey, textures are stripes, checkers or smooth noise (no MRI noise model).

Why a surface and both polarities: an encoder pretrained on objects that are always brighter than a
plain background learns "bright is object"; FedMSA on top of it did worse on the demo than on a random
encoder (measured, see the README's demo section). With a surface that is not an object and objects of
either contrast, the features separate compact objects from their surroundings in both directions.

Everything is drawn from ``numpy.random.default_rng([seed, index])``: a (seed, index) pair fixes every
value of a sample, and samples are independent of each other and of the order they are drawn in.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw
from scipy.ndimage import gaussian_filter

KINDS = ("ellipse", "rectangle", "triangle", "polygon", "star", "ring")
MAX_OBJECTS = 5
RADIUS = (0.07, 0.3)  # object radius, fraction of the image side
SURFACE_RADIUS = (0.3, 0.5)  # the surface's radius, fraction of the image side
SURFACE_KINDS = KINDS[:4]  # compact kinds: no star or ring surface
SURFACE_GREY = (0.2, 0.8)  # grey level (channel mean) of the surface colour
# Objects differ from the surface's grey level by at least this much, brighter or darker (each with
# probability 1/2 where the surface's grey level leaves room for both).
MIN_CONTRAST = 0.2


def _texture(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pattern in [-1, 1] over the grid ``x``, ``y`` (in [0, 1)): flat, stripes or checkers at a random
    angle and frequency, or smooth noise."""
    kind = rng.integers(4)
    if kind == 0:
        return np.zeros(x.shape)
    if kind == 3:
        noise = gaussian_filter(rng.standard_normal(x.shape), sigma=rng.uniform(0.7, 3.0))
        return noise / max(np.abs(noise).max(), 1e-6)
    angle, frequency = rng.uniform(0, np.pi), rng.uniform(3, 12)
    u = np.cos(angle) * x + np.sin(angle) * y
    if kind == 1:
        return np.sin(2 * np.pi * frequency * u)
    v = -np.sin(angle) * x + np.cos(angle) * y
    return np.sign(np.sin(2 * np.pi * frequency * u) * np.sin(2 * np.pi * frequency * v))


def _outline(rng: np.random.Generator, kind: str, size: int,
             radius_range: tuple[float, float] = RADIUS) -> list[list[tuple[float, float]]]:
    """Polygons (pixel coordinates) of one shape of radius in ``radius_range`` (fraction of ``size``):
    the first is filled, any further one is cut out."""
    centre = rng.uniform(0.1, 0.9, 2) * size
    radius = rng.uniform(*radius_range) * size
    angle = rng.uniform(0, 2 * np.pi)

    def ring(radii: np.ndarray, angles: np.ndarray, aspect: float = 1.0) -> list[tuple[float, float]]:
        x, y = radii * np.cos(angles), aspect * radii * np.sin(angles)
        rx, ry = np.cos(angle) * x - np.sin(angle) * y, np.sin(angle) * x + np.cos(angle) * y
        return list(zip(centre[0] + rx, centre[1] + ry))

    circle = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    if kind == "ellipse":
        return [ring(np.full(48, radius), circle, rng.uniform(0.35, 1.0))]
    if kind == "ring":
        aspect = rng.uniform(0.6, 1.0)
        return [ring(np.full(48, radius), circle, aspect), ring(np.full(48, radius * rng.uniform(0.35, 0.65)), circle, aspect)]
    if kind == "rectangle":
        corners = np.array([0.25, 0.75, 1.25, 1.75]) * np.pi
        return [ring(np.full(4, radius), corners, rng.uniform(0.3, 1.0))]
    if kind == "triangle":
        return [ring(np.full(3, radius), np.sort(rng.uniform(0, 2 * np.pi, 3)))]
    if kind == "star":
        points = int(rng.integers(4, 8))
        radii = np.tile([radius, radius * rng.uniform(0.35, 0.6)], points)
        return [ring(radii, np.linspace(0, 2 * np.pi, 2 * points, endpoint=False))]
    vertices = int(rng.integers(5, 10))  # irregular polygon: random radii at sorted random angles
    return [ring(radius * rng.uniform(0.4, 1.0, vertices), np.sort(rng.uniform(0, 2 * np.pi, vertices)))]


def _rasterize(polygons: list[list[tuple[float, float]]], size: int) -> np.ndarray:
    """Boolean (size, size) mask of the first polygon minus the others (PIL's polygon fill)."""
    canvas = Image.new("1", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    for index, polygon in enumerate(polygons):
        draw.polygon(polygon, fill=int(index == 0))
    return np.array(canvas, dtype=bool)


def _colour(rng: np.random.Generator, grey: tuple[float, float]) -> np.ndarray:
    """A random RGB colour whose grey level (channel mean) lies in ``grey`` (low, high)."""
    while True:
        colour = rng.uniform(0, 1, 3)
        if grey[0] <= colour.mean() <= grey[1]:
            return colour


def _layer(rng: np.random.Generator, colour: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(3, H, W) fill of one region: ``colour`` modulated by a random texture."""
    return colour[:, None, None] + rng.uniform(0.05, 0.25) * _texture(rng, x, y)[None]


def _object_grey(rng: np.random.Generator, surface: float) -> tuple[float, float]:
    """Grey-level range of an object on a surface of grey level ``surface``: at least MIN_CONTRAST darker
    or brighter, each with probability 1/2 where both leave a range of 0.1 (drawing a colour in a
    narrower one would take long)."""
    darker, brighter = (0.0, surface - MIN_CONTRAST), (surface + MIN_CONTRAST, 1.0)
    if darker[1] < 0.1:
        return brighter
    if brighter[0] > 0.9:
        return darker
    return darker if rng.random() < 0.5 else brighter


def shapes_sample(seed: int, index: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``index`` of the generic-shapes task with ``seed`` at ``size`` x ``size`` pixels.

    Returns (image float32 (3, size, size) in [0, 1], mask uint8 (1, size, size) in {0, 1}): the mask is
    the union of the objects drawn (not the surface). The photometric chain after drawing (a smooth
    multiplicative shading, a slight blur, noise, and grey images half of the time) changes the image,
    never the mask. ``size`` >= 16; the same (seed, index) gives the same sample at any time, in any order.
    """
    if size < 16:
        raise ValueError(f"shapes_sample: size must be >= 16 pixels, got {size}")
    rng = np.random.default_rng([seed, index])
    y, x = np.mgrid[:size, :size] / size
    grey = rng.uniform(0.1, 0.9)
    image = _layer(rng, _colour(rng, (grey - 0.1, grey + 0.1)), x, y)  # background: grey in [0.1, 0.9]
    surface = _rasterize(_outline(rng, SURFACE_KINDS[rng.integers(len(SURFACE_KINDS))], size, SURFACE_RADIUS), size)
    surface_colour = _colour(rng, SURFACE_GREY)
    image = np.where(surface[None], _layer(rng, surface_colour, x, y), image)
    mask = np.zeros((size, size), dtype=bool)
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        shape = _rasterize(_outline(rng, KINDS[rng.integers(len(KINDS))], size), size)
        colour = _colour(rng, _object_grey(rng, float(surface_colour.mean())))
        image = np.where(shape[None], _layer(rng, colour, x, y), image)
        mask |= shape
    shading = 1 + rng.uniform(0, 0.4) * (rng.uniform(-1, 1) * (x - 0.5) + rng.uniform(-1, 1) * (y - 0.5))
    image = gaussian_filter(image * shading, sigma=(0, *(2 * [rng.uniform(0, 0.8)])))
    image = image + rng.uniform(0, 0.06) * rng.standard_normal(image.shape)
    if rng.random() < 0.5:
        image = np.repeat(image.mean(axis=0, keepdims=True), 3, axis=0)
    return np.clip(image, 0, 1).astype(np.float32), mask[None].astype(np.uint8)
