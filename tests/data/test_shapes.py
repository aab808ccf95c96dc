"""The synthetic generic-shapes task (the stand-in's pretraining data): deterministic, masks where the
objects are, objects brighter or darker than their surroundings."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import binary_dilation, binary_erosion, sobel

from fedfms.data import shapes
from fedfms.data.shapes import shapes_sample


def test_types_shapes_and_ranges():
    image, mask = shapes_sample(seed=0, index=0, size=48)
    assert image.shape == (3, 48, 48) and image.dtype == np.float32
    assert mask.shape == (1, 48, 48) and mask.dtype == np.uint8
    assert 0.0 <= image.min() and image.max() <= 1.0 and set(np.unique(mask)) <= {0, 1}


def test_deterministic_per_seed_and_index_in_any_order():
    forward = [shapes_sample(7, i, 32) for i in range(4)]
    backward = [shapes_sample(7, i, 32) for i in reversed(range(4))][::-1]
    for (image_a, mask_a), (image_b, mask_b) in zip(forward, backward):
        assert np.array_equal(image_a, image_b) and np.array_equal(mask_a, mask_b)
    assert not np.array_equal(forward[0][0], forward[1][0])
    assert not np.array_equal(shapes_sample(8, 0, 32)[0], forward[0][0])


def test_rasterized_polygon_is_the_expected_pixels():
    # A hand-placed square: PIL fills vertices and edges inclusively.
    square = shapes._rasterize([[(2, 3), (6, 3), (6, 7), (2, 7)]], 10)
    expected = np.zeros((10, 10), dtype=bool)
    expected[3:8, 2:7] = True
    assert np.array_equal(square, expected)
    # A second polygon is cut out (rings)
    ring = shapes._rasterize([[(0, 0), (9, 0), (9, 9), (0, 9)], [(3, 3), (6, 3), (6, 6), (3, 6)]], 10)
    assert ring.sum() == 100 - 16 and not ring[3:7, 3:7].any()


def test_masks_mark_objects_of_either_contrast_and_their_edges():
    """Independent of how the masks are drawn: just inside the mask differs from just outside it by about
    MIN_CONTRAST, darker in some images and brighter in others, and the image's edges lie on the mask's
    boundary more than elsewhere (the surface's own edges are not in the mask)."""
    contrasts, edge_ratios = [], []
    for index in range(40):
        image, mask = shapes_sample(seed=3, index=index, size=64)
        inside = mask[0].astype(bool)
        assert inside.any(), f"sample {index} has no object"
        grey = image.mean(axis=0)
        around = binary_dilation(inside, iterations=3) & ~inside
        if around.sum() > 20:
            contrasts.append(grey[inside].mean() - grey[around].mean())
        boundary = binary_dilation(inside) & ~binary_erosion(inside)
        edges = np.hypot(sobel(grey, 0), sobel(grey, 1))
        if boundary.sum() and (~binary_dilation(boundary, iterations=2)).sum():
            edge_ratios.append(edges[boundary].mean() / (edges[~binary_dilation(boundary, iterations=2)].mean() + 1e-6))
    contrasts = np.array(contrasts)
    assert np.median(np.abs(contrasts)) > shapes.MIN_CONTRAST / 2
    assert (contrasts > 0).mean() > 0.25 and (contrasts < 0).mean() > 0.25  # both polarities
    assert np.median(edge_ratios) > 2.0


def test_objects_vary_in_number_and_size():
    areas = [shapes_sample(5, i, 64)[1].mean() for i in range(40)]
    assert min(areas) < 0.1 < 0.3 < max(areas)


def test_too_small_image_is_refused():
    with pytest.raises(ValueError, match="size must be >= 16"):
        shapes_sample(0, 0, 8)
