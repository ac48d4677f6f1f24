"""Picture grids of stored sets: one row per class, images left to right."""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

from distill_data.store import SyntheticSet, atomic_write


def grid_array(
    synset: SyntheticSet, max_per_class: int = 10, pad: int = 2, scale: int | None = None
) -> np.ndarray:
    """uint8 HxWxC array: row c holds up to ``max_per_class`` images of class c.

    Images are mapped back to pixel space with the store's mean/std and clipped to
    [0, 1]. ``scale`` enlarges small images (default: to at least 56 px per cell).
    """
    x = synset.denormalized().clamp(0, 1)
    labels = synset.labels
    k = len(synset.meta.classes)
    c, h, w = x.shape[1:]
    scale = scale or max(1, int(np.ceil(56 / max(h, w))))
    rows = [torch.nonzero(labels == i).flatten()[:max_per_class] for i in range(k)]
    cols = max(1, max(len(r) for r in rows))
    ch, cw = h * scale + pad, w * scale + pad
    canvas = np.full((k * ch + pad, cols * cw + pad, c), 255, dtype=np.uint8)
    for i, idx in enumerate(rows):
        for j, n in enumerate(idx.tolist()):
            img = (x[n].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
            img = img.repeat(scale, 0).repeat(scale, 1)
            y0, x0 = pad + i * ch, pad + j * cw
            canvas[y0 : y0 + h * scale, x0 : x0 + w * scale] = img
    return canvas


def save_grid(
    synset: SyntheticSet,
    path: str | os.PathLike,
    max_per_class: int = 10,
    labels: bool = True,
) -> None:
    """Write the grid as a PNG, atomically; ``labels`` writes each row's class name (and
    how many images it has, so a class a teacher-driven set left empty is visible) in
    a column on the left."""
    arr = grid_array(synset, max_per_class=max_per_class)
    img = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)
    if labels:
        img = _with_row_labels(img, synset)
    with atomic_write(path) as tmp:
        img.save(tmp, format="PNG")


def _with_row_labels(img: Image.Image, synset: SyntheticSet, pad: int = 2) -> Image.Image:
    from PIL import ImageDraw, ImageFont

    names = [str(c) for c in synset.meta.classes]
    k = len(names)
    counts = torch.bincount(synset.labels, minlength=k).tolist()
    texts = [f"{n[:14]} ({c})" for n, c in zip(names, counts)]
    font = ImageFont.load_default()
    draw = ImageDraw.Draw(img)
    width = max(int(draw.textlength(t, font=font)) for t in texts) + 8
    out = Image.new(
        img.mode, (img.width + width, img.height), 255 if img.mode == "L" else (255,) * 3
    )
    out.paste(img, (width, 0))
    draw = ImageDraw.Draw(out)
    cell = (img.height - pad) / k
    ink = 0 if img.mode == "L" else (0, 0, 0)
    for i, t in enumerate(texts):
        y = pad + i * cell + cell / 2
        draw.text((4, y), t, fill=ink, font=font, anchor="lm")
    return out
