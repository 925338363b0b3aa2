"""Checks of image files that decoding alone leaves out.

    image_files.check(path, data)   # ValueError naming what is wrong, or None

PIL decodes a JPEG whose entropy-coded data holds garbage without a word
(libjpeg only warns), and reads a PNG without checking its chunks' CRCs. So:

  * JPEG: the marker structure is walked to the end-of-image marker, and the
    Huffman-coded data of baseline / extended sequential scans is decoded
    symbol by symbol: an invalid code, a run past the 64 coefficients of a
    block, a DC value outside what 8x8 pixels can average to, restart
    markers out of order, or data that does not end exactly where the
    image's blocks do is an error (garbage in the data is caught about nine
    times in ten; Huffman codes resynchronise, so not always). Progressive
    and arithmetic-coded files get the structural check only.
  * PNG: every chunk's CRC (PIL's `verify`).
"""

from __future__ import annotations

import io
import math
import re

from PIL import Image

_RST = re.compile(rb"\xff([\xd0-\xd7])")
_SEQUENTIAL = (0xC0, 0xC1)  # Baseline and extended sequential, Huffman-coded.


def check(path: str, data: bytes) -> None:
  """Raises ValueError if the image file `data` (of `path`) is damaged."""
  lower = path.lower()
  if lower.endswith((".jpg", ".jpeg")):
    check_jpeg(data)
  elif lower.endswith(".png"):
    try:
      with Image.open(io.BytesIO(data)) as im:
        im.verify()
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f"damaged PNG: {e}") from None


def _huffman_tables(seg: bytes, tables: dict) -> None:
  pos = 0
  while pos < len(seg):
    if pos + 17 > len(seg):
      raise ValueError("a Huffman table (DHT) is cut short")
    tc_th, counts = seg[pos], seg[pos + 1:pos + 17]
    pos += 17
    codes, code, k = {}, 0, pos
    for length, n in enumerate(counts, 1):
      for _ in range(n):
        if k >= len(seg):
          raise ValueError("a Huffman table (DHT) is cut short")
        codes[format(code, f"0{length}b")] = seg[k]
        code, k = code + 1, k + 1
      code <<= 1
    pos = k
    tables[(tc_th >> 4, tc_th & 15)] = (codes, sorted({len(c) for c in codes}))


def _quant_tables(seg: bytes, quant: dict) -> None:
  pos = 0
  while pos < len(seg):
    wide, t = seg[pos] >> 4, seg[pos] & 15
    if pos + 1 + 64 * (1 + wide) > len(seg):
      raise ValueError("a quantization table (DQT) is cut short")
    quant[t] = int.from_bytes(seg[pos + 1:pos + 2 + wide], "big")  # Its DC entry.
    pos += 1 + 64 * (1 + wide)


def _decode_blocks(bits: str, pos: int, dc, ac, blocks: int, precision: int,
                   pred: list, dc_limit: int) -> int:
  """Decodes `blocks` blocks from bit `pos`; returns the position after them.

  `pred` holds the component's DC predictor (updated); |DC| must stay within
  `dc_limit` quantization steps.
  """

  def symbol(table):
    nonlocal pos
    codes, lengths = table
    for n in lengths:
      s = codes.get(bits[pos:pos + n])
      if s is not None and pos + n <= len(bits):
        pos += n
        return s
    if pos >= len(bits) - 7:
      raise ValueError("the image data ends before its last block")
    raise ValueError(f"an invalid Huffman code at bit {pos} of a scan")

  for _ in range(blocks):
    size = symbol(dc)
    if size > precision + 3:
      raise ValueError(f"an invalid DC coefficient size {size}")
    if size:
      if pos + size > len(bits):
        raise ValueError("the image data ends before its last block")
      v = int(bits[pos:pos + size], 2)
      pred[0] += v if v >> (size - 1) else v - (1 << size) + 1
      if abs(pred[0]) > dc_limit:
        raise ValueError("a DC value no 8x8 block of pixels can have")
    pos += size
    k = 1
    while k < 64:
      rs = symbol(ac)
      run, size = rs >> 4, rs & 15
      if size == 0:
        if run != 15:
          break  # End of block.
        k += 16
        continue
      k += run
      if k > 63 or size > precision + 2:
        raise ValueError("an invalid AC coefficient (past the block's end, or too large)")
      pos += size
      k += 1
    if pos > len(bits):
      raise ValueError("the image data ends before its last block")
  return pos


def _check_scan(scan: bytes, header: bytes, frame, tables, quant, restart: int) -> None:
  """Decodes one sequential Huffman scan (`scan`: its bytes up to the next marker)."""
  height, width, comps, precision = frame
  n = header[0]
  chosen = []
  for i in range(n):
    cid, t = header[1 + 2 * i], header[2 + 2 * i]
    if cid not in comps:
      raise ValueError(f"a scan names component {cid}, which the frame does not have")
    dc, ac = tables.get((0, t >> 4)), tables.get((1, t & 15))
    if dc is None or ac is None:
      raise ValueError("a scan uses a Huffman table that was never defined")
    q = quant.get(comps[cid][2])
    # DC = 8 x the block's mean level-shifted sample, rounded to steps of q.
    limit = (8 << (precision - 1)) // q + 1 if q else 1 << 16
    chosen.append((comps[cid][:2], dc, ac, limit))
  hmax = max(c[0] for c in comps.values())
  vmax = max(c[1] for c in comps.values())
  if n == 1:
    (h, v), dc, ac, limit = chosen[0]
    cols = math.ceil(math.ceil(width * h / hmax) / 8)
    rows = math.ceil(math.ceil(height * v / vmax) / 8)
    units, per_unit = cols * rows, [(dc, ac, 1, limit)]
  else:
    units = math.ceil(width / (8 * hmax)) * math.ceil(height / (8 * vmax))
    per_unit = [(dc, ac, h * v, limit) for (h, v), dc, ac, limit in chosen]
  parts = _RST.split(scan)
  intervals, markers = parts[0::2], parts[1::2]
  for i, m in enumerate(markers):
    if m[0] != 0xD0 + i % 8:
      raise ValueError("restart markers out of order")
  want = math.ceil(units / restart) if restart else 1
  if len(intervals) != want:
    raise ValueError(f"{len(intervals)} restart intervals where the image has {want}")
  for i, part in enumerate(intervals):
    count = min(restart, units - i * restart) if restart else units
    data = part.replace(b"\xff\x00", b"\xff")
    bits = format(int.from_bytes(data, "big"), f"0{8 * len(data)}b") if data else ""
    pos, preds = 0, [[0] for _ in per_unit]  # DC predictors restart with each interval.
    for _ in range(count):
      for (dc, ac, blocks, limit), pred in zip(per_unit, preds):
        pos = _decode_blocks(bits, pos, dc, ac, blocks, precision, pred, limit)
    rest = bits[pos:]
    if len(rest) > 7 or rest.count("0"):
      raise ValueError(f"{len(data) - pos // 8} bytes of image data after the last block")


def _scan_end(data: bytes, pos: int) -> int:
  """The position of the first marker after entropy-coded data starting at `pos`."""
  while True:
    pos = data.find(b"\xff", pos)
    if pos < 0 or pos + 1 >= len(data):
      raise ValueError("the file ends inside the image data (truncated)")
    nxt = data[pos + 1]
    if nxt == 0x00 or 0xD0 <= nxt <= 0xD7:
      pos += 2
    elif nxt == 0xFF:
      pos += 1
    else:
      return pos


def check_jpeg(data: bytes) -> None:
  """Raises ValueError unless `data` is a whole, consistent JPEG (module doc)."""
  if data[:2] != b"\xff\xd8":
    raise ValueError("not a JPEG (no start-of-image marker)")
  pos, tables, quant, frame, sequential, restart = 2, {}, {}, None, False, 0
  while True:
    if pos >= len(data) or data[pos] != 0xFF:
      raise ValueError(f"no marker at byte {pos} (truncated or garbled)")
    while pos < len(data) and data[pos] == 0xFF:
      pos += 1
    if pos >= len(data):
      raise ValueError("the file ends in a marker (truncated)")
    marker, start = data[pos], pos - 1
    pos += 1
    if marker == 0xD9:
      if frame is None:
        raise ValueError("no image frame before the end-of-image marker")
      return
    if 0xD0 <= marker <= 0xD7 or marker == 0x01:
      continue
    if marker == 0xD8 or 0x02 <= marker <= 0xBF:
      raise ValueError(f"an invalid marker 0xFF{marker:02X} at byte {start}")
    if pos + 2 > len(data):
      raise ValueError("the file ends in a segment header (truncated)")
    length = int.from_bytes(data[pos:pos + 2], "big")
    if length < 2 or pos + length > len(data):
      raise ValueError(f"segment 0xFF{marker:02X} at byte {start} runs past the end of the file")
    seg, pos = data[pos + 2:pos + length], pos + length
    if marker == 0xC4:
      _huffman_tables(seg, tables)
    elif marker == 0xDB:
      _quant_tables(seg, quant)
    elif marker == 0xDD:
      restart = int.from_bytes(seg[:2], "big")
    elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
      if len(seg) < 6 or len(seg) < 6 + 3 * seg[5]:
        raise ValueError("a frame header (SOF) is cut short")
      height, width = int.from_bytes(seg[1:3], "big"), int.from_bytes(seg[3:5], "big")
      comps = {seg[6 + 3 * i]: (seg[7 + 3 * i] >> 4, seg[7 + 3 * i] & 15, seg[8 + 3 * i])
               for i in range(seg[5])}
      if not width or not height or not comps or min(min(c[:2]) for c in comps.values()) < 1:
        raise ValueError("a frame header (SOF) with no pixels")
      frame, sequential = (height, width, comps, seg[0]), marker in _SEQUENTIAL
    elif marker == 0xDA:
      if frame is None or not seg or len(seg) < 1 + 2 * seg[0]:
        raise ValueError("a scan (SOS) before its frame, or cut short")
      end = _scan_end(data, pos)
      if sequential:
        _check_scan(data[pos:end], seg, frame, tables, quant, restart)
      pos = end
