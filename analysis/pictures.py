"""
A finished run's pictures, drawn with Pillow (installed with TensorBoard): the in-silico mutagenesis figure of one
sequence, the motifs a label learned as logos, and browser-style tracks along a genome. All are RGB arrays, saved
as PNG. The labels x labels matrices a training run logs are training/figures.py's.
"""
import numpy as np
from PIL import Image, ImageDraw

from training.figures import diverging, font

BASES = "ACGT"
BASE_COLOURS = {"A": (16, 150, 72), "C": (36, 92, 196), "G": (245, 166, 35), "T": (214, 40, 40)}  # as in logos
LEFT, RIGHT, TOP = 120, 30, 40  # margins, px
LOGO, ROW, GAP, AXIS, SCALE = 70, 12, 26, 34, 48  # heights, px


def ism_size(length, n_labels):
    """(width, height) of ism_figure's picture: a column per base, a panel per label."""
    column = cell_width(length)
    return LEFT + length * column + RIGHT, TOP + n_labels * (GAP + LOGO + 4 * ROW) + AXIS + SCALE


def cell_width(length):
    return int(np.clip(1400 // max(length, 1), 3, 16))


def ism_figure(title, sequence, first, delta, labels, probs):
    """delta (positions, 4 bases, labels): the change in logit when the base at a position becomes A, C, G or T
    (0 for the reference base). Per label: the reference bases drawn as a logo, each as tall as its importance
    (the mean fall of the logit when it is changed; below the line when changing it raises the logit), and the
    heatmap of every change; letters and colours are on one scale for all labels. first is the 1-based position
    of sequence[0]."""
    length, n_labels = len(sequence), len(labels)
    column, (width, height) = cell_width(length), ism_size(length, n_labels)
    scale = float(np.abs(delta).max()) or 1.0
    picture = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(picture)
    draw.text((10, 10), title, fill="black", font=font(16))
    importance = -delta.sum(1) / 3  # the reference base has a change of 0 in delta
    tallest = float(np.abs(importance).max()) or 1.0  # one scale for every label, as for the heatmaps
    glyphs = {b: letter(b) for b in BASES}
    for j, label in enumerate(labels):
        y = TOP + j * (GAP + LOGO + 4 * ROW)
        draw.text((10, y + 6), f"{label}   p = {probs[j]:.3f}", fill="black", font=font(14))
        top = y + GAP
        base_line = top + LOGO * 3 // 4  # three quarters for letters that support the label, a quarter below
        draw.line([(LEFT, base_line), (LEFT + length * column, base_line)], fill=(180, 180, 180))
        for i, base in enumerate(sequence):
            h = int(round(abs(importance[i, j]) / tallest * (LOGO * 3 // 4 if importance[i, j] > 0 else LOGO // 4)))
            if h >= 1 and base in glyphs:
                glyph = glyphs[base].resize((column, h))
                if importance[i, j] < 0:
                    glyph = glyph.transpose(Image.Transpose.FLIP_TOP_BOTTOM).convert("LA").convert("RGBA")
                picture.paste(glyph, (LEFT + i * column, base_line - h if importance[i, j] > 0 else base_line),
                              glyph)
        heat = diverging(delta[:, :, j].T / scale)  # (4, positions, 3)
        heat = np.repeat(np.repeat(heat, ROW, axis=0), column, axis=1)
        picture.paste(Image.fromarray(heat), (LEFT, top + LOGO))
        for k, base in enumerate(BASES):
            draw.text((LEFT - 16, top + LOGO + k * ROW - 1), base, fill=BASE_COLOURS[base], font=font(11))
        for i, base in enumerate(sequence):  # the reference base, where nothing changes
            if base in BASES and column >= 4:
                cx, cy = LEFT + i * column + column // 2, top + LOGO + BASES.index(base) * ROW + ROW // 2
                draw.ellipse([cx - 1, cy - 1, cx + 1, cy + 1], fill=(90, 90, 90))
    axis = TOP + n_labels * (GAP + LOGO + 4 * ROW) + 4
    step = next(s for s in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10**9) if s * column >= 40)
    for pos in range((first + step - 1) // step * step, first + length, step):
        x = LEFT + (pos - first) * column + column // 2
        draw.line([(x, axis), (x, axis + 5)], fill="black")
        draw.text((x - 12, axis + 7), str(pos), fill="black", font=font(11))
    draw.text((10, axis + 7), "position", fill="black", font=font(11))
    bar = diverging(np.linspace(-1, 1, 240))[None].repeat(12, axis=0)
    y = axis + AXIS
    picture.paste(Image.fromarray(bar), (LEFT, y))
    draw.text((10, y - 1), "logit change", fill="black", font=font(11))
    for x, text in ((LEFT - 4, f"-{scale:.2g}"), (LEFT + 114, "0"), (LEFT + 226, f"+{scale:.2g}")):
        draw.text((x, y + 14), text, fill="black", font=font(11))
    return np.asarray(picture)


def letter(base):
    """The letter alone, in its colour, on transparency: resized to any box, it draws a logo."""
    f = font(64)
    left, top, right, bottom = f.getbbox(base)
    glyph = Image.new("RGBA", (right - left, bottom - top), (0, 0, 0, 0))
    ImageDraw.Draw(glyph).text((-left, -top), base, fill=BASE_COLOURS[base], font=f)
    return glyph


def logo(matrix, column=18, height=80):
    """A logo of a (positions, 4) matrix of A, C, G, T: at each position the letters stacked by their values, the
    largest outermost, positive ones above the middle line and negative ones below it. height spans the largest
    column's value on either side. Returns an RGBA image."""
    matrix = np.asarray(matrix, np.float64)
    tallest = max(float(np.maximum(matrix, 0).sum(1).max()), float(np.maximum(-matrix, 0).sum(1).max())) or 1.0
    half = height // 2
    picture = Image.new("RGBA", (len(matrix) * column, height + 1), (255, 255, 255, 255))
    ImageDraw.Draw(picture).line([(0, half), (len(matrix) * column, half)], fill=(180, 180, 180))
    glyphs = {b: letter(b) for b in BASES}
    for i, values in enumerate(matrix):
        up = down = half
        for k in np.argsort(np.abs(values), kind="stable"):  # the smallest nearest the line
            h = int(round(abs(values[k]) / tallest * half))
            if h < 1:
                continue
            glyph = glyphs[BASES[k]].resize((column, h))
            if values[k] > 0:
                up -= h
                picture.paste(glyph, (i * column, up), glyph)
            else:
                picture.paste(glyph, (i * column, down), glyph)
                down += h
    return picture


def information(ppm):
    """A probability matrix as the letter heights of its information content (bits), the usual motif logo."""
    ppm = np.clip(np.asarray(ppm, np.float64), 1e-9, 1)
    ppm = ppm / ppm.sum(1, keepdims=True)
    return ppm * (2 + (ppm * np.log2(ppm)).sum(1, keepdims=True))


def motifs_figure(title, rows):
    """Logos side by side, a row each: rows are lists of (caption, matrix), each matrix a (positions, 4) CWM or
    letter heights. Used for a motif beside its best database match, and for a label's overview."""
    height, column, pad = 80, 18, 16

    def span(caption, matrix):  # a panel is as wide as its logo or its caption
        return max(len(matrix) * column, font(12).getbbox(caption)[2]) + 2 * pad
    width = max(sum(span(*panel) for panel in row) for row in rows) if rows else 200
    picture = Image.new("RGB", (max(width, font(16).getbbox(title)[2] + 20), 40 + len(rows) * (height + 40)),
                        "white")
    draw = ImageDraw.Draw(picture)
    draw.text((10, 10), title, fill="black", font=font(16))
    for r, row in enumerate(rows):
        x, y = pad, 40 + r * (height + 40)
        for caption, matrix in row:
            draw.text((x, y), caption, fill="black", font=font(12))
            picture.paste(logo(matrix, column, height), (x, y + 18))
            x += span(caption, matrix)
    return np.asarray(picture)


def track_figure(title, first, values, names, thresholds, peaks=None, width=1200, panel=90):
    """Browser-style tracks over a locus: per label, its scores (values[j], one per base from position first, in
    [0, 1]) as a filled profile, each pixel column the maximum of its bases, the threshold as a dashed line, and the
    true peaks (peaks[j], (start, end) pairs) as boxes beneath."""
    length = len(values[0])
    cols = np.minimum(np.arange(width) * length // width, length - 1)
    edges = np.r_[cols, length]
    band = 14 if peaks else 0
    picture = Image.new("RGB", (LEFT + width + RIGHT, TOP + len(names) * (panel + band + 16) + AXIS), "white")
    draw = ImageDraw.Draw(picture)
    draw.text((10, 10), f"{title}    predicted probability (0 to 1); dashed: the label's threshold", fill="black",
              font=font(16))
    for j, name in enumerate(names):
        top = TOP + j * (panel + band + 16)
        column_max = np.maximum.reduceat(values[j], edges[:-1]) if length >= width else values[j][cols]
        draw.text((10, top + panel // 2 - 7), name, fill="black", font=font(14))
        draw.rectangle([LEFT, top, LEFT + width, top + panel], outline=(200, 200, 200))
        for x, v in enumerate(np.clip(column_max, 0, 1)):
            draw.line([(LEFT + x, top + panel), (LEFT + x, top + panel - int(v * panel))], fill=(36, 92, 196))
        y = top + panel - int(thresholds[j] * panel)
        for x in range(LEFT, LEFT + width, 8):
            draw.line([(x, y), (x + 4, y)], fill=(214, 40, 40))
        if peaks:
            for a, b in peaks[j]:
                x0, x1 = (LEFT + int(np.clip(p - first, 0, length) * width / length) for p in (a, b))
                draw.rectangle([x0, top + panel + 4, max(x1, x0 + 1), top + panel + band], fill=(60, 60, 60))
            draw.text((10, top + panel + 2), "true peaks", fill=(60, 60, 60), font=font(10))
    axis = TOP + len(names) * (panel + band + 16)
    step = next(s for s in (10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, 20_000, 50_000, 10**6, 10**9)
                if s * width / length >= 90)
    for pos in range((first + step - 1) // step * step, first + length, step):
        x = LEFT + int((pos - first) * width / length)
        draw.line([(x, axis), (x, axis + 5)], fill="black")
        draw.text((x - 20, axis + 7), f"{pos:,}", fill="black", font=font(11))
    return picture
