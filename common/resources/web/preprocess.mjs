// The evaluation view of predict.py, exactly, in plain JavaScript (no DOM: node runs it in the tests).
//
// Python (common.data.images.evaluation_crop, common.data.transforms.build_transform) does:
//   grey 8-bit image -> PIL resize, bilinear, shorter side to `resize` -> centre crop `s` -> x / 255 -> normalise.
// The division and normalisation are inside the ONNX graph (float32 everywhere alike). What is here is the 8-bit
// part: Pillow's resampling (src/libImaging/Resample.c: an antialiased triangle filter whose support grows with the
// downscaling factor, coefficients in fixed point with 22 fractional bits, the horizontal pass rounded to 8 bits
// before the vertical pass) and Python's round() for the crop offsets (halves to even). Done in integers, the crop
// is identical to Pillow's, bit for bit; the tests compare it on the real PNGs.

const PRECISION_BITS = 32 - 8 - 2;
const ONE = 1 << PRECISION_BITS;
const HALF = 1 << (PRECISION_BITS - 1);

function bilinearFilter(x) {
  const a = Math.abs(x);
  return a < 1.0 ? 1.0 - a : 0.0;
}

// Pillow's precompute_coeffs + normalize_coeffs_8bpc for the bilinear filter: per output pixel the first input
// pixel, the number of input pixels and their integer weights.
function coefficients(inSize, outSize) {
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1.0);
  const support = 1.0 * filterScale;
  const kernelSize = Math.ceil(support) * 2 + 1;
  const first = new Int32Array(outSize);
  const count = new Int32Array(outSize);
  const weights = new Int32Array(outSize * kernelSize);
  const inverse = 1.0 / filterScale;
  const row = new Float64Array(kernelSize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    let xmin = Math.trunc(center - support + 0.5);   // C's (int) cast truncates toward zero
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    let total = 0.0;
    for (let x = 0; x < xmax; x++) {
      const w = bilinearFilter((x + xmin - center + 0.5) * inverse);
      row[x] = w;
      total += w;
    }
    for (let x = 0; x < xmax; x++) {
      const k = total !== 0.0 ? row[x] / total : row[x];
      weights[xx * kernelSize + x] = k < 0 ? Math.trunc(-0.5 + k * ONE) : Math.trunc(0.5 + k * ONE);
    }
    first[xx] = xmin;
    count[xx] = xmax;
  }
  return { first, count, weights, kernelSize };
}

function clip8(sum) {
  const value = Math.floor(sum / ONE);   // an arithmetic shift by 22 bits
  return value < 0 ? 0 : value > 255 ? 255 : value;
}

// One pass along rows (horizontal) of a width x height image: `lines` output lines starting at input line
// `firstLine`, each resampled with `coeffs`.
function resampleRows(pixels, width, firstLine, lines, coeffs, outWidth) {
  const { first, count, weights, kernelSize } = coeffs;
  const out = new Uint8Array(outWidth * lines);
  for (let yy = 0; yy < lines; yy++) {
    const line = (yy + firstLine) * width;
    for (let xx = 0; xx < outWidth; xx++) {
      let sum = HALF;
      const start = line + first[xx];
      const base = xx * kernelSize;
      for (let x = 0; x < count[xx]; x++) sum += pixels[start + x] * weights[base + x];
      out[yy * outWidth + xx] = clip8(sum);
    }
  }
  return out;
}

// One pass along columns (vertical): every column of a width-wide image, output line yy from input lines
// first[yy] - lineOffset onwards.
function resampleColumns(pixels, width, coeffs, outHeight, lineOffset) {
  const { first, count, weights, kernelSize } = coeffs;
  const out = new Uint8Array(width * outHeight);
  for (let yy = 0; yy < outHeight; yy++) {
    const base = yy * kernelSize;
    const top = first[yy] - lineOffset;
    for (let xx = 0; xx < width; xx++) {
      let sum = HALF;
      for (let y = 0; y < count[yy]; y++) sum += pixels[(top + y) * width + xx] * weights[base + y];
      out[yy * width + xx] = clip8(sum);
    }
  }
  return out;
}

/**
 * Whether Pillow resamples columns before rows. Pillow up to 12 always did rows first (ImagingResampleInner);
 * Pillow 13.0, which this project is tested with, does columns first when the height shrinks by more than twice
 * what the width shrinks: outHeight < height and height - outHeight > 2 * (width - outWidth). The rule was
 * measured (exact agreement on about a thousand random sizes, ties going to rows first); the two orders differ by
 * at most one grey level, and only for images more than twice as tall as wide once the shorter side is resized.
 */
export function columnsFirst(width, height, outWidth, outHeight) {
  return outHeight < height && height - outHeight > 2 * (width - outWidth);
}

/**
 * Pillow's Image.resize((outWidth, outHeight), Image.BILINEAR) of an 8-bit grey image, bit for bit.
 * @param {Uint8Array} pixels row-major, width * height
 * @returns {Uint8Array} row-major, outWidth * outHeight
 */
export function pillowResizeBilinear(pixels, width, height, outWidth, outHeight) {
  const needHorizontal = outWidth !== width;
  const needVertical = outHeight !== height;
  if (!needHorizontal && !needVertical) return Uint8Array.from(pixels);
  const vertical = coefficients(height, outHeight);
  if (!needHorizontal) return resampleColumns(pixels, width, vertical, outHeight, 0);
  const horizontal = coefficients(width, outWidth);
  if (!needVertical) return resampleRows(pixels, width, 0, height, horizontal, outWidth);
  if (columnsFirst(width, height, outWidth, outHeight)) {
    return resampleRows(resampleColumns(pixels, width, vertical, outHeight, 0), width, 0, outHeight, horizontal,
                        outWidth);
  }
  // Rows first, only over the input lines the vertical pass reads (as Pillow does; the values are the same).
  const firstLine = vertical.first[0];
  const lastLine = vertical.first[outHeight - 1] + vertical.count[outHeight - 1];
  const rows = resampleRows(pixels, width, firstLine, lastLine - firstLine, horizontal, outWidth);
  return resampleColumns(rows, outWidth, vertical, outHeight, firstLine);
}

/** Python's round() of a float: the nearest integer, halves to the even one. */
export function roundHalfEven(x) {
  const floor = Math.floor(x);
  const difference = x - floor;
  if (difference > 0.5) return floor + 1;
  if (difference < 0.5) return floor;
  return floor % 2 === 0 ? floor : floor + 1;
}

/**
 * The evaluation crop: shorter side resized to `resize` (longer side int(resize * long / short), torchvision's rule),
 * then the centre `size` x `size` pixels.
 * @returns {{crop: Uint8Array, resizedWidth: number, resizedHeight: number, left: number, top: number}}
 */
export function evaluationCrop(grey, width, height, size, resize) {
  const short = Math.min(width, height);
  const long = Math.max(width, height);
  const resizedLong = Math.trunc(resize * long / short);
  const [resizedWidth, resizedHeight] = width <= height ? [resize, resizedLong] : [resizedLong, resize];
  const resized = pillowResizeBilinear(grey, width, height, resizedWidth, resizedHeight);
  const left = roundHalfEven((resizedWidth - size) / 2.0);
  const top = roundHalfEven((resizedHeight - size) / 2.0);
  const crop = new Uint8Array(size * size);
  for (let y = 0; y < size; y++) {
    crop.set(resized.subarray((top + y) * resizedWidth + left, (top + y) * resizedWidth + left + size), y * size);
  }
  return { crop, resizedWidth, resizedHeight, left, top };
}

/**
 * Pillow's convert("L") of RGBA pixels (alpha dropped first, as common.data.images.to_grayscale does): ITU-R 601-2
 * luma in 16-bit fixed point, L = (19595 R + 38470 G + 7471 B + 0x8000) >> 16. Grey pixels (R = G = B) map to
 * themselves.
 */
export function rgbaToGrey(rgba, width, height) {
  const grey = new Uint8Array(width * height);
  for (let i = 0, j = 0; i < grey.length; i++, j += 4) {
    grey[i] = (rgba[j] * 19595 + rgba[j + 1] * 38470 + rgba[j + 2] * 7471 + 0x8000) >>> 16;
  }
  return grey;
}

/**
 * 16-bit grey values -> 8-bit as common.data.images.to_grayscale (scale_to_uint8): divided by the stored bit depth,
 * rounded to nearest in integers, (value * 255 + 32767) // 65535, so a 16-bit copy of an 8-bit image (x * 257) reads
 * back as the 8-bit image.
 */
export function scale16(values) {
  const grey = new Uint8Array(values.length);
  for (let i = 0; i < values.length; i++) grey[i] = Math.floor((values[i] * 255 + 32767) / 65535);
  return grey;
}

/** What a file is, from its first bytes (and its name for DICOM files without the DICM marker). */
export function sniffFormat(bytes, name = '') {
  const starts = (signature, offset = 0) => signature.every((b, i) => bytes[offset + i] === b);
  if (starts([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])) return 'png';
  if (starts([0xff, 0xd8, 0xff])) return 'jpeg';
  if (bytes.length > 132 && starts([0x44, 0x49, 0x43, 0x4d], 128)) return 'dicom';
  if (/\.(dcm|dicom)$/i.test(name)) return 'dicom';
  return 'unknown';
}

/** The IHDR facts of a PNG: width, height, bitDepth, colourType, interlace. */
export function pngHeader(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return { width: view.getUint32(16), height: view.getUint32(20), bitDepth: bytes[24], colourType: bytes[25],
           interlace: bytes[28] };
}

function paeth(a, b, c) {
  const p = a + b - c;
  const pa = Math.abs(p - a);
  const pb = Math.abs(p - b);
  const pc = Math.abs(p - c);
  return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
}

/**
 * The values of a 16-bit greyscale, non-interlaced PNG (colour type 0, bit depth 16), which the browser's decoder
 * would reduce to 8 bits its own way, while Pillow keeps them (mode I;16) and to_grayscale scales them (scale16).
 * The zlib stream is inflated with the browser's DecompressionStream.
 * @returns {Promise<Uint16Array>}
 */
export async function decodeGrey16Png(bytes) {
  const { width, height, bitDepth, colourType, interlace } = pngHeader(bytes);
  if (bitDepth !== 16 || colourType !== 0) throw new Error('not a 16-bit greyscale PNG');
  if (interlace !== 0) throw new Error('interlaced 16-bit PNG files are not supported: save it without interlacing');
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const parts = [];
  for (let at = 8; at + 8 <= bytes.length;) {
    const length = view.getUint32(at);
    const type = String.fromCharCode(...bytes.subarray(at + 4, at + 8));
    if (type === 'IDAT') parts.push(bytes.subarray(at + 8, at + 8 + length));
    if (type === 'IEND') break;
    at += 12 + length;
  }
  const stream = new Blob(parts).stream().pipeThrough(new DecompressionStream('deflate'));
  const raw = new Uint8Array(await new Response(stream).arrayBuffer());
  const stride = width * 2;
  if (raw.length < height * (stride + 1)) throw new Error('the PNG image data is truncated');
  const lines = new Uint8Array(height * stride);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)];
    const input = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    const line = lines.subarray(y * stride, (y + 1) * stride);
    const previous = y > 0 ? lines.subarray((y - 1) * stride, y * stride) : new Uint8Array(stride);
    for (let x = 0; x < stride; x++) {
      const left = x >= 2 ? line[x - 2] : 0;
      const up = previous[x];
      const upLeft = x >= 2 ? previous[x - 2] : 0;
      const predictor = filter === 0 ? 0 : filter === 1 ? left : filter === 2 ? up
        : filter === 3 ? (left + up) >> 1 : filter === 4 ? paeth(left, up, upLeft) : NaN;
      if (Number.isNaN(predictor)) throw new Error(`unknown PNG filter type ${filter}`);
      line[x] = (input[x] + predictor) & 0xff;
    }
  }
  const values = new Uint16Array(width * height);
  for (let i = 0; i < values.length; i++) values[i] = (lines[2 * i] << 8) | lines[2 * i + 1];
  return values;
}
