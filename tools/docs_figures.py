#!/usr/bin/env python3
"""Draws the pictures of docs/ as SVG files in docs/images/, from the code they show:

- patch-matrix.svg: the worked example of docs/conv2d.md, its padded image and patch matrix,
  with the flattening d = (c·K + di)·K + dj, q = i·W' + j;
- gemm-tiles.svg: the TF32 engine's block tile, warp tiles and m16n8k8 fragments, the sizes read
  from kernels/gemm.cuh and the fragment layout of the PTX ISA (as Tf32Engine states it);
- training-step.svg: one training step as its graph of launches, read from
  docs/images/step-launches.txt (written by crates/nn/examples/step_launches.rs).

    python3 tools/docs_figures.py           # (re)writes the pictures
    python3 tools/docs_figures.py --check   # fails if a picture differs from what it would write

Plain Python 3, no dependencies.
"""

import re
import sys
from pathlib import Path
from xml.sax.saxutils import escape

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "docs" / "images"

FONT = "font-family=\"DejaVu Sans Mono, Menlo, Consolas, monospace\""


class Svg:
    def __init__(self, width, height):
        self.width, self.height = width, height
        self.items = []

    def rect(self, x, y, w, h, fill="none", stroke="#333", width=1.0, extra=""):
        self.items.append(
            f'<rect x="{x:g}" y="{y:g}" width="{w:g}" height="{h:g}" fill="{fill}" '
            f'stroke="{stroke}" stroke-width="{width:g}"{extra}/>'
        )

    def text(self, x, y, s, size=12, anchor="start", fill="#111", weight="normal", rotate=None):
        transform = f' transform="rotate({rotate} {x:g} {y:g})"' if rotate is not None else ""
        self.items.append(
            f'<text x="{x:g}" y="{y:g}" font-size="{size:g}" text-anchor="{anchor}" '
            f'fill="{fill}" font-weight="{weight}"{transform}>{escape(s)}</text>'
        )

    def line(self, x1, y1, x2, y2, stroke="#333", width=1.0, arrow=False, dash=None):
        marker = ' marker-end="url(#arrow)"' if arrow else ""
        dashes = f' stroke-dasharray="{dash}"' if dash else ""
        self.items.append(
            f'<line x1="{x1:g}" y1="{y1:g}" x2="{x2:g}" y2="{y2:g}" stroke="{stroke}" '
            f'stroke-width="{width:g}"{marker}{dashes}/>'
        )

    def path(self, d, stroke="#333", width=1.0, arrow=False):
        marker = ' marker-end="url(#arrow)"' if arrow else ""
        self.items.append(
            f'<path d="{d}" fill="none" stroke="{stroke}" stroke-width="{width:g}"{marker}/>'
        )

    def render(self):
        head = (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.width:g}" '
            f'height="{self.height:g}" viewBox="0 0 {self.width:g} {self.height:g}" {FONT}>\n'
            '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
            'markerHeight="7" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" '
            'fill="#333"/></marker></defs>\n'
            f'<rect x="0" y="0" width="{self.width:g}" height="{self.height:g}" fill="white"/>\n'
        )
        return head + "\n".join(self.items) + "\n</svg>\n"


# ---- The patch matrix ----------------------------------------------------------------------


def patch_matrix_svg():
    # The worked example of docs/conv2d.md: one image, one channel, x = 1..9, K = 3, s = 1, p = 1.
    H = W = 3
    C, K, s, p = 1, 3, 1, 1
    x = [[[r * W + c + 1 for c in range(W)] for r in range(H)]]
    Ho, Wo = (H + 2 * p - K) // s + 1, (W + 2 * p - K) // s + 1
    P, D = Ho * Wo, C * K * K

    def patch(q, d):
        i, j = divmod(q, Wo)
        c, rest = divmod(d, K * K)
        di, dj = divmod(rest, K)
        h, v = i * s + di - p, j * s + dj - p
        return x[c][h][v] if 0 <= h < H and 0 <= v < W else 0

    cell = 34
    svg = Svg(820, 560)
    svg.text(20, 28, "The patch matrix of docs/conv2d.md's worked example (C = 1, K = 3, s = 1, p = 1)",
             size=15, weight="bold")
    svg.text(20, 48, "patch[q, d] = x[c, i·s + di − p, j·s + dj − p], 0 in the padding;"
             "  y[q] = b + Σ_d W[d]·patch[q, d]", size=12)

    # The padded image, the window of output pixel q = 4 highlighted.
    ox, oy = 40, 110
    svg.text(ox, oy - 30, "x padded by p = 1", size=13, weight="bold")
    svg.text(ox, oy - 12, "window of output (i, j) = (0, 0), q = 0", size=11, fill="#1f5fa8")
    for r in range(H + 2 * p):
        for c in range(W + 2 * p):
            h, v = r - p, c - p
            inside = 0 <= h < H and 0 <= v < W
            svg.rect(ox + c * cell, oy + r * cell, cell, cell, fill="white" if inside else "#eee",
                     stroke="#999")
            value = x[0][h][v] if inside else 0
            svg.text(ox + c * cell + cell / 2, oy + r * cell + cell / 2 + 5, str(value), size=13,
                     anchor="middle", fill="#111" if inside else "#999")
    svg.rect(ox, oy, K * cell, K * cell, stroke="#1f5fa8", width=3)
    for t in range(K * K):
        di, dj = divmod(t, K)
        svg.text(ox + dj * cell + 3, oy + di * cell + 11, f"d{t}", size=8, fill="#1f5fa8")

    # The patch matrix, rows q, columns d.
    mx, my = 330, 150
    svg.text(mx + D * cell / 2, my - 62, "d = (c·K + di)·K + dj   (columns: the taps, as w[o] is stored)",
             size=11, anchor="middle")
    for d in range(D):
        c, rest = divmod(d, K * K)
        di, dj = divmod(rest, K)
        svg.text(mx + d * cell + cell / 2, my - 26, str(d), size=12, anchor="middle", weight="bold")
        svg.text(mx + d * cell + cell / 2, my - 10, f"{c},{di},{dj}", size=8, anchor="middle",
                 fill="#555")
    svg.text(mx - 74, my - 10, "(c,di,dj)", size=8, fill="#555")
    svg.text(mx - 62, my + P * cell / 2, "q = i·W' + j   (rows: the output pixels)", size=11,
             anchor="middle", rotate=-90)
    for q in range(P):
        i, j = divmod(q, Wo)
        svg.text(mx - 24, my + q * cell + cell / 2 + 5, str(q), size=12, anchor="middle",
                 weight="bold")
        svg.text(mx - 6, my + q * cell + cell / 2 + 4, f"{i},{j}", size=8, anchor="end",
                 fill="#555")
        for d in range(D):
            value = patch(q, d)
            c, rest = divmod(d, K * K)
            di, dj = divmod(rest, K)
            i, j = divmod(q, Wo)
            h, v = i * s + di - p, j * s + dj - p
            padding = not (0 <= h < H and 0 <= v < W)
            fill = "#dce8f7" if q == 0 else ("#eee" if padding else "white")
            svg.rect(mx + d * cell, my + q * cell, cell, cell, fill=fill, stroke="#999")
            svg.text(mx + d * cell + cell / 2, my + q * cell + cell / 2 + 5, str(value), size=13,
                     anchor="middle", fill="#999" if padding else "#111")
    svg.rect(mx, my, D * cell, P * cell, stroke="#333", width=1.5)
    svg.rect(mx, my, D * cell, cell, stroke="#1f5fa8", width=3)
    svg.text(mx + D * cell + 8, my + cell / 2 + 4, "← the window", size=11, fill="#1f5fa8")
    svg.text(mx, my + P * cell + 24, f"[P, D] = [{P}, {D}]; grey: padding (0)", size=11)
    svg.text(mx, my + P * cell + 42, "CUDA: PatchRows computes patch[(n, q), d] while staging; "
             "the cpu reads", size=11)
    svg.text(mx, my + P * cell + 58, "row d of patchᵀ ([D, P]) in place, a stretch of the padded "
             "image", size=11)
    return svg.render()


# ---- The GEMM's tiles and fragments ------------------------------------------------------------


def gemm_constants():
    source = (ROOT / "kernels" / "gemm.cuh").read_text()
    values = {}
    for name in ("GEMM_TILE", "GEMM_DEPTH", "GEMM_THREADS"):
        match = re.search(rf"#define {name} (\d+)", source)
        if not match:
            sys.exit(f"kernels/gemm.cuh: no #define {name}")
        values[name] = int(match.group(1))
    # The warp tiling and fragment layout drawn below, as Tf32Engine states them.
    for needle in (
        "int m0 = 16 * (warp / 2), n0 = 32 * (warp % 2);",
        "int g = lane / 4, t = lane % 4;",
        "a0 = A[g][t]  a1 = A[g + 8][t]  a2 = A[g][t + 4]  a3 = A[g + 8][t + 4]",
        "b0 = B[k = t][n = g]  b1 = B[k = t + 4][n = g]",
        "c0 = C[g][2t]  c1 = C[g][2t + 1]  c2 = C[g + 8][2t]  c3 = C[g + 8][2t + 1]",
    ):
        if needle not in source:
            sys.exit(f"kernels/gemm.cuh no longer says {needle!r}: redraw gemm-tiles.svg by hand")
    return values["GEMM_TILE"], values["GEMM_DEPTH"], values["GEMM_THREADS"]


# Colours by t = lane % 4, the fragment's column group.
T_COLOURS = ["#fde2c8", "#d6ecd2", "#d4e4f7", "#eadcf2"]


def gemm_tiles_svg():
    tile, depth, threads = gemm_constants()
    warps = threads // 32
    warp_m, warp_n = 16, 32  # Tf32Engine: m0 = 16·(warp / 2), n0 = 32·(warp % 2)
    svg = Svg(1240, 860)
    svg.text(20, 28, "One block's tile of C → a warp's tile → m16n8k8 fragments (Tf32Engine, "
             "kernels/gemm.cuh)", size=15, weight="bold")
    svg.text(20, 48, f"C[i, j] = Σ_d A(i, d)·B(j, d); a block of {threads} threads ({warps} warps) "
             f"owns a {tile}x{tile} tile and walks the depth in slices of {depth}", size=12)

    # Panel 1: the block tile with its warps, the staged slices beside it.
    scale = 4
    bx, by = 120, 150
    size = tile * scale
    svg.text(bx, by - 58, f"1. block tile {tile}x{tile}", size=13, weight="bold")
    # B slice above, A slice to the left (drawn [row][depth] for the picture).
    svg.rect(bx, by - 10 - depth * 2, size, depth * 2, fill="#f3f3f3")
    svg.text(bx + size / 2, by - 14 - depth, f"B slice: {tile} columns x {depth} deep", size=10,
             anchor="middle")
    svg.rect(bx - 10 - depth * 2, by, depth * 2, size, fill="#f3f3f3")
    svg.text(bx - 14 - depth, by + size / 2, f"A slice: {tile} rows x {depth} deep", size=10,
             anchor="middle", rotate=-90)
    for w in range(warps):
        m0, n0 = warp_m * (w // 2), warp_n * (w % 2)
        fill = "#fff4c2" if w == 0 else "white"
        svg.rect(bx + n0 * scale, by + m0 * scale, warp_n * scale, warp_m * scale, fill=fill,
                 stroke="#333")
        svg.text(bx + (n0 + warp_n / 2) * scale, by + (m0 + warp_m / 2) * scale + 4,
                 f"warp {w}", size=12, anchor="middle")
    svg.text(bx, by + size + 20, "warp w: rows 16·(w / 2) .. +16,", size=11)
    svg.text(bx, by + size + 36, "columns 32·(w % 2) .. +32", size=11)
    svg.text(bx, by + size + 56, "slices stored [depth][row], double-buffered;", size=11)
    svg.text(bx, by + size + 72, "column of (d, r): r ^ (8·(d % 4) + 2·(d / 4))", size=11)

    # Panel 2: warp 0's tile, four m16n8 tiles.
    wx, wy = 470, 150
    ws = 9
    svg.text(wx, wy - 58, f"2. warp tile {warp_m}x{warp_n}", size=13, weight="bold")
    svg.text(wx, wy - 40, "four m16n8 tiles j = 0..3, per 8 of depth:", size=11)
    svg.text(wx, wy - 24, "a lane loads a0..a3 once, b0 b1 for each j", size=11)
    for j in range(warp_n // 8):
        fill = "#fff4c2" if j == 0 else "white"
        svg.rect(wx + j * 8 * ws, wy, 8 * ws, warp_m * ws, fill=fill)
        svg.text(wx + (j * 8 + 4) * ws, wy + warp_m * ws / 2 + 4, f"j = {j}", size=12,
                 anchor="middle")
        svg.text(wx + (j * 8 + 4) * ws, wy + warp_m * ws + 16, f"n {8 * j}..{8 * j + 7}", size=10,
                 anchor="middle")
    svg.text(wx, wy + warp_m * ws + 40, f"{depth // 8} mma per j per slice of {depth}:", size=11)
    svg.text(wx, wy + warp_m * ws + 56, "mma.sync.aligned.m16n8k8.row.col", size=11)
    svg.text(wx, wy + warp_m * ws + 72, ".f32.tf32.tf32.f32", size=11)
    svg.line(bx + warp_n * scale, by, wx - 6, wy, stroke="#b08800", dash="4 3")
    svg.line(bx + warp_n * scale, by + warp_m * scale, wx - 6, wy + warp_m * ws, stroke="#b08800",
             dash="4 3")

    # Panel 3: the fragments, each element with the lane and register that hold it.
    cw, ch = 42, 26
    fy = 575
    svg.text(20, fy - 42, "3. the m16n8k8 fragments: each element's lane and register "
             "(g = lane / 4, t = lane % 4; colour: t)", size=13, weight="bold")
    svg.text(20, fy - 24, "a0 = A[g][t]  a1 = A[g+8][t]  a2 = A[g][t+4]  a3 = A[g+8][t+4]    "
             "b0 = B[k=t][n=g]  b1 = B[k=t+4][n=g]    c0..c3 = C[g][2t], C[g][2t+1], C[g+8][2t], "
             "C[g+8][2t+1]", size=10)

    def fragment(x0, y0, rows, cols, owner, title, row_name, col_name):
        svg.text(x0, y0 - 8, title, size=12, weight="bold")
        for r in range(rows):
            svg.text(x0 - 4, y0 + r * ch / 2 + ch / 4 + 3, f"{r}", size=8, anchor="end",
                     fill="#555")
        for c in range(cols):
            svg.text(x0 + c * cw + cw / 2, y0 + rows * ch / 2 + 10, f"{c}", size=8,
                     anchor="middle", fill="#555")
        for r in range(rows):
            for c in range(cols):
                lane, reg = owner(r, c)
                svg.rect(x0 + c * cw, y0 + r * ch / 2, cw, ch / 2, fill=T_COLOURS[lane % 4],
                         stroke="#888", width=0.5)
                svg.text(x0 + c * cw + cw / 2, y0 + r * ch / 2 + ch / 4 + 3, f"L{lane} {reg}",
                         size=8, anchor="middle")
        svg.text(x0 + cols * cw / 2, y0 + rows * ch / 2 + 24, col_name, size=10, anchor="middle")
        svg.text(x0 - 18, y0 + rows * ch / 4, row_name, size=10, anchor="middle", rotate=-90)

    def a_owner(m, k):  # A is 16x8 (m, k)
        g, t = m % 8, k % 4
        return 4 * g + t, f"a{(m // 8) + 2 * (k // 4)}"

    def b_owner(k, n):  # B is 8x8 (k, n)
        g, t = n, k % 4
        return 4 * g + t, f"b{k // 4}"

    def c_owner(m, n):  # C is 16x8 (m, n)
        g, t = m % 8, n // 2
        return 4 * g + t, f"c{2 * (m // 8) + n % 2}"

    fragment(60, fy, 16, 8, a_owner, "A: 16 rows (m) x 8 deep (k)", "m", "k")
    fragment(460, fy, 8, 8, b_owner, "B: 8 deep (k) x 8 columns (n)", "k", "n")
    fragment(860, fy, 16, 8, c_owner, "C, D: 16 rows (m) x 8 columns (n)", "m", "n")
    for i, line in enumerate((
        "B's slice is stored [depth][column],",
        "so b0 = b[k0 + t][n0 + 8j + g]: the 32 lanes",
        "read 4 depths x 8 columns, on 32 banks once",
        "each (the swizzle above). D stays in registers",
        "across the whole depth.",
    )):
        svg.text(460, fy + 4 * ch + 60 + 16 * i, line, size=10)
    return svg.render()


# ---- One training step as its launches -----------------------------------------------------------

FORWARD_LAYERS = ["conv1", "pool1", "conv2", "pool2", "fc1", "fc2", "fc3"]
ROW_NAMES = {
    "data": "data / Adam",
    "conv1": "conv1",
    "pool1": "pool1 + ReLU",
    "conv2": "conv2",
    "pool2": "pool2 + ReLU",
    "fc1": "fc1 + ReLU",
    "fc2": "fc2 + ReLU",
    "fc3": "fc3",
    "loss": "loss",
}
PHASE_COLOURS = {
    "data": "#eeeeee",
    "forward": "#d4e4f7",
    "loss": "#fde2c8",
    "backward": "#d6ecd2",
    "adam": "#eadcf2",
}


def read_launches():
    path = IMAGES / "step-launches.txt"
    launches = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        match = re.fullmatch(r"(\w+) grid=(\d+),(\d+),(\d+) block=(\d+),(\d+),(\d+) shared=(\d+)",
                             line)
        if not match:
            sys.exit(f"{path}:{number}: expected 'kernel grid=X,Y,Z block=X,Y,Z shared=B', "
                     f"found {line!r}")
        grid = tuple(int(v) for v in match.group(2, 3, 4))
        launches.append((match.group(1), grid))
    return launches


def assign_layers(launches):
    """Each launch's (row, phase), from the order the trainer issues them in."""
    forward = iter(FORWARD_LAYERS)
    backward = iter(reversed(FORWARD_LAYERS))
    layer, phase, previous, rows = None, None, None, []
    for kernel, _ in launches:
        if kernel.startswith("gather_"):
            layer, phase = "data", "data"
        elif kernel.startswith(("conv2d_forward", "maxpool2d_relu_forward", "linear_forward")):
            layer, phase = next(forward), "forward"
        elif kernel == "softmax_xent_fused":
            layer, phase = "loss", "loss"
        elif kernel.endswith("sum_parts"):
            pass  # the second pass of the launch before
        elif kernel.startswith(("relu_backward", "maxpool2d_relu_backward",
                                "conv2d_backward_weight")):
            layer, phase = next(backward), "backward"
        elif kernel.startswith("linear_backward_weight") and previous != "relu_backward":
            layer, phase = next(backward), "backward"
        elif kernel.startswith("adam_"):
            layer, phase = "data", "adam"
        elif layer is None:
            sys.exit(f"step-launches.txt: {kernel} before any layer")
        rows.append((layer, phase))
        previous = kernel
    return rows


def training_step_svg():
    launches = read_launches()
    rows = assign_layers(launches)
    order = ["data"] + FORWARD_LAYERS + ["loss"]
    bw, bh, gap, row_h = 222, 38, 10, 58
    label_w = 110
    left_x = label_w + 20
    left_w = 2 * bw + gap
    right_x = left_x + left_w + 70
    top = 100
    cells = {}
    left_count, right_count = {}, {}
    for index, ((kernel, grid), (layer, phase)) in enumerate(zip(launches, rows)):
        r = order.index(layer)
        if phase in ("data", "forward", "loss"):
            column = left_count.get(layer, 0)
            left_count[layer] = column + 1
            x = left_x + column * (bw + gap)
            if phase == "loss":
                x = left_x + left_w + 35 - bw / 2
        else:
            column = right_count.get(layer, 0)
            right_count[layer] = column + 1
            x = right_x + column * (bw + gap)
        cells[index] = (x, top + r * row_h)
    width = right_x + max(right_count.values()) * (bw + gap) + 20
    height = top + len(order) * row_h + 60
    svg = Svg(width, height)
    svg.text(20, 28, f"One training step as its {len(launches)} launches, in order "
             "(captured once as a CUDA graph, then replayed)", size=15, weight="bold")
    svg.text(20, 48, "batch 64, TF32, as split for a 132-SM GPU of compute capability 9.0 (the "
             "emulated default); read from docs/images/step-launches.txt,", size=12)
    svg.text(20, 64, "which crates/nn/examples/step_launches.rs lists from the trainer's "
             "captured graph. Forward runs down the left, backward up the right.", size=12)
    svg.text(left_x, top - 14, "forward", size=12, weight="bold")
    svg.text(right_x, top - 14, "backward (then Adam, top)", size=12, weight="bold")
    for r, layer in enumerate(order):
        svg.text(20, top + r * row_h + bh / 2 + 4, ROW_NAMES[layer], size=12, weight="bold")
        svg.line(20, top + r * row_h - 10, width - 20, top + r * row_h - 10, stroke="#ddd")
    for index, (kernel, grid) in enumerate(launches):
        x, y = cells[index]
        svg.rect(x, y, bw, bh, fill=PHASE_COLOURS[rows[index][1]], stroke="#555")
        svg.text(x + 5, y + 15, kernel, size=10)
        svg.text(x + 5, y + 31, f"#{index + 1}  grid {grid[0]}x{grid[1]}x{grid[2]}", size=10,
                 fill="#444")
    for index in range(len(launches) - 1):
        (x1, y1), (x2, y2) = cells[index], cells[index + 1]
        if y1 == y2 and x2 > x1:
            svg.line(x1 + bw, y1 + bh / 2, x2 - 1, y2 + bh / 2, arrow=True)
        elif x2 < x1 + bw / 2 and y2 > y1:  # down the forward column
            svg.path(f"M {x1 + bw / 2:g} {y1 + bh:g} L {x1 + bw / 2:g} {y1 + bh + 6:g} "
                     f"L {x2 + bw / 2:g} {y1 + bh + 6:g} L {x2 + bw / 2:g} {y2 - 1:g}", arrow=True)
        elif y2 > y1:  # into the loss
            svg.path(f"M {x1 + bw:g} {y1 + bh / 2:g} L {x2 + bw / 2:g} {y1 + bh / 2:g} "
                     f"L {x2 + bw / 2:g} {y2 - 1:g}", arrow=True)
        else:  # up the backward column
            sx = x1 + bw / 2 if x1 >= right_x else x1 + bw
            sy = y1 if x1 >= right_x else y1 + bh / 2
            svg.path(f"M {sx:g} {sy:g} L {sx:g} {y2 + bh + 6:g} L {x2 + bw / 2:g} "
                     f"{y2 + bh + 6:g} L {x2 + bw / 2:g} {y2 + bh + 1:g}", arrow=True)
    legend_y = height - 26
    for i, (phase, colour) in enumerate(PHASE_COLOURS.items()):
        svg.rect(20 + i * 130, legend_y - 12, 16, 16, fill=colour, stroke="#555")
        svg.text(42 + i * 130, legend_y + 1, phase, size=11)
    svg.text(20 + 5 * 130, legend_y + 1, "grid: blocks in x, y, z (z: a long sum split; "
             "*_sum_parts adds the parts)", size=11)
    return svg.render()


FIGURES = {
    "patch-matrix.svg": patch_matrix_svg,
    "gemm-tiles.svg": gemm_tiles_svg,
    "training-step.svg": training_step_svg,
}


def main():
    check = sys.argv[1:] == ["--check"]
    if sys.argv[1:] not in ([], ["--check"]):
        sys.exit("usage: tools/docs_figures.py [--check]")
    stale = []
    for name, draw in FIGURES.items():
        path = IMAGES / name
        svg = draw()
        if check:
            if not path.exists() or path.read_text() != svg:
                stale.append(name)
        else:
            IMAGES.mkdir(parents=True, exist_ok=True)
            path.write_text(svg)
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        sys.exit("docs/images: " + ", ".join(stale) + " differ from what tools/docs_figures.py "
                 "draws; run it and commit the pictures")


if __name__ == "__main__":
    main()
