"""
The pictures a training run logs to TensorBoard, drawn with Pillow (installed with TensorBoard): labels x labels
matrices (co-occurrence, task affinity) with the names, as RGB arrays. analysis/pictures.py draws a finished
run's pictures with the same font and colours.
"""
import numpy as np
from PIL import Image, ImageDraw, ImageFont


def font(size):
    return ImageFont.load_default(size=size)


def diverging(x):
    """Values in [-1, 1] -> RGB: blue (negative), white (0), red (positive)."""
    x = np.clip(np.asarray(x, np.float64), -1, 1)[..., None]
    white, blue, red = np.array([255, 255, 255]), np.array([33, 102, 172]), np.array([178, 24, 43])
    return np.where(x < 0, white + (blue - white) * -x, white + (red - white) * x).astype(np.uint8)


def matrix_figure(matrix, names, title, signed=False):
    """A labels x labels matrix with the names on both axes and the values in the cells: shades of orange from 0
    to 1, or, signed, blue (-1) to white (0) to red (1); an unmeasured (nan) cell stays grey."""
    n = len(names)
    cell = 34 if n <= 20 else max(6, 680 // n)
    side = max(font(12).getbbox(name)[2] for name in names) + 16
    size = side + n * cell + 20
    picture = Image.new("RGB", (max(size, font(12).getbbox(title)[2] + 16), size + 24), "white")
    draw = ImageDraw.Draw(picture)
    draw.text((8, 4), title, fill="black", font=font(12))
    matrix = np.asarray(matrix, np.float64)
    known = np.nan_to_num(matrix)
    colour = diverging(known) if signed else \
        (255 - np.clip(known, 0, 1)[..., None] * np.array([222, 153, 83])).astype(np.uint8)
    colour[np.isnan(matrix)] = 200
    grid = np.repeat(np.repeat(colour, cell, axis=0), cell, axis=1)
    picture.paste(Image.fromarray(grid), (side, side + 24))
    for i, name in enumerate(names):
        draw.text((6, side + 24 + i * cell + cell // 2 - 7), name, fill="black", font=font(12))
        tag = Image.new("RGB", (side, cell), "white")
        ImageDraw.Draw(tag).text((4, cell // 2 - 7), name, fill="black", font=font(12))
        picture.paste(tag.rotate(90, expand=True), (side + i * cell, 24))
        for j in range(n) if cell >= 30 else ():
            value = matrix[i, j]
            draw.text((side + j * cell + 4, side + 24 + i * cell + cell // 2 - 6),
                      "" if np.isnan(value) else f"{value:.2f}", font=font(10),
                      fill="white" if abs(value) > 0.6 and (signed or value > 0) else "black")
    return np.asarray(picture)


def cooccurrence_figure(matrix, names):
    """Row i, column j: the share of label i's sequences that also carry label j; names on both axes."""
    return matrix_figure(matrix, names, "share of row label's sequences with the column label")
