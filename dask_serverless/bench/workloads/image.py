"""An image pipeline in plain numpy: load, split into tiles with a halo, a chain of
filters per tile (blur -> Sobel gradient -> threshold -> trim), merge, summarise."""

from __future__ import annotations

from typing import Any

import numpy as np

from ...hints import hints
from .base import Workload, from_collections, sized

BLUR_PASSES = 3
HALO = BLUR_PASSES + 2  # each 3x3 filter reads one pixel of border; one more for safety


@hints(size=lambda size, seed: 4 * size * size)  # float32: known before it runs
def load_image(size: int, seed: int) -> np.ndarray:
    """A synthetic grey image: smooth waves, bright discs and noise (float32)."""
    rng = np.random.default_rng(seed)
    axis = np.arange(size, dtype=np.float32) / size
    img = 0.4 + 0.2 * np.outer(np.cos(9 * axis), np.sin(12 * axis))
    for cx, cy, r in rng.random((24, 3)):
        rad = int((0.02 + 0.06 * r) * size)
        x0, y0 = int(cx * size), int(cy * size)
        ys, xs = slice(max(0, y0 - rad), y0 + rad), slice(max(0, x0 - rad), x0 + rad)
        dy = np.arange(ys.start, min(size, ys.stop))[:, None] - y0
        dx = np.arange(xs.start, min(size, xs.stop))[None, :] - x0
        img[ys, xs] += 0.4 * (dy * dy + dx * dx < rad * rad)
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(0.05)
    return img.astype(np.float32)


def crop(img: np.ndarray, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    """Rows r0:r1, columns c0:c1 plus a HALO-pixel border (edge-replicated outside)."""
    h, w = img.shape
    tile = img[max(0, r0 - HALO):min(h, r1 + HALO), max(0, c0 - HALO):min(w, c1 + HALO)]
    pad = ((HALO - (r0 - max(0, r0 - HALO)), HALO - (min(h, r1 + HALO) - r1)),
           (HALO - (c0 - max(0, c0 - HALO)), HALO - (min(w, c1 + HALO) - c1)))
    return np.pad(tile, pad, mode="edge")


def _shifts(a: np.ndarray) -> list[list[np.ndarray]]:
    p = np.pad(a, 1, mode="edge")
    h, w = a.shape
    return [[p[i:i + h, j:j + w] for j in range(3)] for i in range(3)]


def blur(tile: np.ndarray) -> np.ndarray:
    """BLUR_PASSES rounds of 3x3 box blur (close to a Gaussian)."""
    for _ in range(BLUR_PASSES):
        s = _shifts(tile)
        tile = sum(s[i][j] for i in range(3) for j in range(3)) / np.float32(9)
    return tile


def sobel(tile: np.ndarray) -> np.ndarray:
    """Gradient magnitude with 3x3 Sobel kernels."""
    s = _shifts(tile)
    gx = (s[0][2] + 2 * s[1][2] + s[2][2]) - (s[0][0] + 2 * s[1][0] + s[2][0])
    gy = (s[2][0] + 2 * s[2][1] + s[2][2]) - (s[0][0] + 2 * s[0][1] + s[0][2])
    return np.hypot(gx, gy)


def threshold(tile: np.ndarray, level: float) -> np.ndarray:
    return (tile > level).astype(np.uint8)


def trim(tile: np.ndarray) -> np.ndarray:
    return tile[HALO:-HALO, HALO:-HALO]


def merge(tiles: list[list[np.ndarray]]) -> np.ndarray:
    return np.block(tiles)


def summarise(edges: np.ndarray) -> dict[str, Any]:
    """Edge fraction and per-row edge counts of the merged edge map."""
    return {"edge_fraction": float(edges.mean()), "row_counts": edges.sum(axis=1)}


def image_pipeline(quick: bool = False, **params: Any) -> Workload:
    from dask import delayed

    p = sized(quick, params, {"size": 2048, "tiles": 4}, {"size": 4096, "tiles": 8})
    size, n = p["size"], p["tiles"]
    step = -(-size // n)
    img = delayed(load_image)(size, 7)
    grid = []
    for i in range(n):
        row = []
        for j in range(n):
            t = delayed(crop)(img, i * step, min(size, (i + 1) * step), j * step,
                              min(size, (j + 1) * step))
            row.append(delayed(trim)(delayed(threshold)(delayed(sobel)(delayed(blur)(t)),
                                                        0.35)))
        grid.append(row)
    edges = delayed(merge)(grid)
    return from_collections("image", f"{size}x{size} image in {n}x{n} tiles, 4-filter "
                            "chains", [edges, delayed(summarise)(edges)], p)
