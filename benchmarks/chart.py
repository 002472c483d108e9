"""A PNG chart of the report's figures, with no plotting library: a canvas, bars, a 5x7 font.

One panel per unit (throughput in msg/s, latency in ms…): for each charted row a dark bar for
ours and a light one for its reference, each labelled with its value.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

from benchmarks.model import Result, Row
from benchmarks.report import number

# The classic 5x7 font, ASCII 32..126: five column bytes per glyph, bit 0 = top row.
_FONT = bytes.fromhex(
    "0000000000"
    "00005f0000"
    "0007000700"
    "147f147f14"
    "242a7f2a12"
    "2313086462"
    "3649562050"
    "0008070300"
    "001c224100"
    "0041221c00"
    "2a1c7f1c2a"
    "08083e0808"
    "0080703000"
    "0808080808"
    "0000606000"
    "2010080402"
    "3e5149453e"
    "00427f4000"
    "7249494946"
    "21414d4b31"
    "1814127f10"
    "2745454539"
    "3c4a494931"
    "4121110907"
    "3649494936"
    "464949291e"
    "0000140000"
    "0040340000"
    "0008142241"
    "1414141414"
    "0041221408"
    "0201590906"
    "3e415d594e"
    "7c1211127c"
    "7f49494936"
    "3e41414122"
    "7f4141413e"
    "7f49494941"
    "7f09090901"
    "3e41415173"
    "7f0808087f"
    "00417f4100"
    "2040413f01"
    "7f08142241"
    "7f40404040"
    "7f021c027f"
    "7f0408107f"
    "3e4141413e"
    "7f09090906"
    "3e4151215e"
    "7f09192946"
    "2649494932"
    "03017f0103"
    "3f4040403f"
    "1f2040201f"
    "3f4038403f"
    "6314081463"
    "0304780403"
    "6159494d43"
    "007f414141"
    "0204081020"
    "004141417f"
    "0402010204"
    "4040404040"
    "0003070800"
    "2054547840"
    "7f28444438"
    "3844444428"
    "384444287f"
    "3854545418"
    "00087e0902"
    "18a4a49c78"
    "7f08040478"
    "00447d4000"
    "2040403d00"
    "7f10284400"
    "00417f4000"
    "7c04780478"
    "7c08040478"
    "3844444438"
    "fc18242418"
    "18242418fc"
    "7c08040408"
    "4854545424"
    "04043f4424"
    "3c4040207c"
    "1c2040201c"
    "3c4030403c"
    "4428102844"
    "4c9090907c"
    "4464544c44"
    "0008364100"
    "0000770000"
    "0041360800"
    "0201020402"
)
_ASCII = {"→": "->", "÷": "/", "µ": "u", "≥": ">=", "≤": "<=", "\u00d7": "x", "—": "-"}

WHITE = (255, 255, 255)
INK = (40, 40, 40)
GRID = (225, 225, 225)
OURS = (31, 119, 180)
REFERENCE = (174, 199, 232)


class Canvas:
    """An RGB image in memory that can be written as a PNG."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.pixels = bytearray(bytes(WHITE) * (width * height))

    def rect(self, x: int, y: int, w: int, h: int, color: tuple[int, int, int]) -> None:
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + w, self.width), min(y + h, self.height)
        if x1 <= x0 or y1 <= y0:
            return
        row = bytes(color) * (x1 - x0)
        for yy in range(y0, y1):
            start = (yy * self.width + x0) * 3
            self.pixels[start : start + len(row)] = row

    def text(
        self, x: int, y: int, text: str, color: tuple[int, int, int] = INK, scale: int = 2
    ) -> int:
        """Draw `text` with its top-left at (x, y); returns the x after it."""
        for char in "".join(_ASCII.get(c, c) for c in text):
            code = ord(char) if 32 <= ord(char) <= 126 else ord("?")
            glyph = _FONT[(code - 32) * 5 : (code - 32) * 5 + 5]
            for column, bits in enumerate(glyph):
                for row in range(8):
                    if bits >> row & 1:
                        self.rect(x + column * scale, y + row * scale, scale, scale, color)
            x += 6 * scale
        return x

    def png(self) -> bytes:
        raw = b"".join(
            b"\x00" + bytes(self.pixels[y * self.width * 3 : (y + 1) * self.width * 3])
            for y in range(self.height)
        )
        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return (
            b"\x89PNG\r\n\x1a\n"
            + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(raw, 9))
            + _chunk(b"IEND", b"")
        )


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


WIDTH = 1200
LABEL_WIDTH = 470
LABEL_CHARS = 36
BAR = 16
ROW = 2 * BAR + 14
PANEL_HEAD = 44


def panel_title(result: Result, row: Row) -> str:
    better = "shorter" if row.lower_is_better else "longer"
    return f"{row.group or result.title}, {row.unit} ({better} is better)"


def panels(results: Sequence[Result]) -> dict[str, list[Row]]:
    """Charted rows by panel (the benchmark, or the row's group), in report order."""
    grouped: dict[str, list[Row]] = {}
    for result in results:
        for row in result.rows:
            if row.chart and row.ours is not None:
                grouped.setdefault(panel_title(result, row), []).append(row)
    return grouped


def render(results: Sequence[Result], title: str) -> bytes | None:
    """The chart as PNG bytes; None when no row asks to be charted."""
    grouped = panels(results)
    if not grouped:
        return None
    height = 60 + sum(PANEL_HEAD + ROW * len(rows) + 20 for rows in grouped.values()) + 30
    canvas = Canvas(WIDTH, height)
    canvas.text(20, 16, title, scale=3)
    y = 60
    for panel, rows in grouped.items():
        y = _panel(canvas, y, panel, rows)
    x = 20
    canvas.rect(x, height - 26, 14, 14, OURS)
    x = canvas.text(x + 20, height - 26, "outboxkit")
    canvas.rect(x + 20, height - 26, 14, 14, REFERENCE)
    canvas.text(x + 40, height - 26, "reference (see BENCHMARKS.md)")
    return canvas.png()


def _panel(canvas: Canvas, y: int, title: str, rows: list[Row]) -> int:
    canvas.text(20, y + 10, title, scale=2)
    y += PANEL_HEAD
    top = max(max(r.ours or 0.0, r.reference or 0.0) for r in rows) or 1.0
    span = WIDTH - LABEL_WIDTH - 150
    for quarter in range(5):
        gx = LABEL_WIDTH + span * quarter // 4
        canvas.rect(gx, y - 4, 1, ROW * len(rows), GRID)
    for row in rows:
        label = row.short or row.label
        label = label if len(label) <= LABEL_CHARS else label[: LABEL_CHARS - 1] + "."
        canvas.text(20, y + BAR - 6, label)
        for offset, value, color in ((0, row.ours, OURS), (BAR, row.reference, REFERENCE)):
            if value is None:
                continue
            width = max(int(span * value / top), 1)
            canvas.rect(LABEL_WIDTH, y + offset, width, BAR - 2, color)
            canvas.text(LABEL_WIDTH + width + 6, y + offset + 1, number(value, row.unit))
        y += ROW
    return y + 20


def write(path: Path, results: Sequence[Result], title: str) -> bool:
    """Write the chart to `path`; False when there was nothing to chart."""
    data = render(results, title)
    if data is None:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return True
