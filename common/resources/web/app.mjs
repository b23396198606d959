// The page: read the user's image here, run the exported graph with onnxruntime-web (WebAssembly), show the result.
// Nothing leaves the machine: the only requests are for the files of this folder (model.json, model.onnx, the
// onnxruntime-web module and its .wasm).
//
// For tests and scripts the page keeps its state in window.dtforcxr8: {state, error, meta, result}; state is
// "loading", "ready", "running", "done" or "error" (also on <body data-state>).
import * as ort from './ort.wasm.bundle.min.mjs';
import {
  decodeGrey16Png, evaluationCrop, pngHeader, rgbaToGrey, scale16, sniffFormat,
} from './preprocess.mjs';

const OVERLAY_ALPHA = 0.4;   // common.explain.gradcam.OVERLAY_ALPHA
const page = { state: 'loading', error: null, meta: null, result: null };
window.dtforcxr8 = page;

const $ = (id) => document.getElementById(id);

function setState(state, message, isError = false) {
  page.state = state;
  document.body.dataset.state = state;
  if (message !== undefined) {
    $('status').textContent = message;
    $('status').classList.toggle('error', isError);
  }
}

class Refusal extends Error {}

const DICOM_MESSAGE = 'DICOM files are not read by this page (no small, maintained DICOM reader for the browser is '
  + 'bundled). Convert it to an 8-bit PNG with the DICOM window applied, for example with DCMTK: '
  + '"dcmj2pnm +Wi 1 +on image.dcm image.png", or run predict.py, which reads DICOM directly.';

// --------------------------------------------------------------------------------------------------------------------
// Reading the image as predict.py does (common.data.images.to_grayscale)
// --------------------------------------------------------------------------------------------------------------------
async function readGrey(file) {
  const bytes = new Uint8Array(await file.arrayBuffer());
  const format = sniffFormat(bytes, file.name);
  if (format === 'dicom') throw new Refusal(DICOM_MESSAGE);
  if (format === 'unknown') throw new Refusal(`${file.name} is not a PNG or JPEG file.`);
  const notes = [];
  if (format === 'png') {
    const header = pngHeader(bytes);
    if (header.bitDepth === 16) {
      if (header.colourType !== 0) {
        throw new Refusal(`${file.name} is a 16-bit colour or grey-and-alpha PNG, which this page does not read; `
                          + 'save it as an 8-bit or a 16-bit grey PNG, or use predict.py.');
      }
      // The browser would reduce 16 bits its own way; Pillow keeps them and to_grayscale scales 0..65535 to 0..255.
      const values = await decodeGrey16Png(bytes);
      notes.push('16-bit grey PNG: 0–65535 scaled to 0–255, as predict.py does');
      return { grey: scale16(values), width: header.width, height: header.height, notes };
    }
  }
  // No colour management and no EXIF rotation: Pillow applies neither.
  const bitmap = await createImageBitmap(new Blob([bytes]), {
    colorSpaceConversion: 'none', premultiplyAlpha: 'none', imageOrientation: 'none' });
  const { width, height } = bitmap;
  const canvas = new OffscreenCanvas(width, height);
  const context = canvas.getContext('2d', { willReadFrequently: true });
  context.drawImage(bitmap, 0, 0);
  bitmap.close();
  const rgba = context.getImageData(0, 0, width, height).data;
  for (let i = 3; i < rgba.length; i += 4) {
    if (rgba[i] !== 255) {
      notes.push('the image has transparent pixels: the browser reads them as drawn over black, predict.py drops '
                 + 'the alpha channel, so the results may differ from predict.py');
      break;
    }
  }
  return { grey: rgbaToGrey(rgba, width, height), width, height, notes };
}

// --------------------------------------------------------------------------------------------------------------------
// Drawing
// --------------------------------------------------------------------------------------------------------------------
// matplotlib's "jet" colour map (its segment data), as the Grad-CAM figures of predict.py --cam use.
const JET = {
  r: [[0, 0], [0.35, 0], [0.66, 1], [0.89, 1], [1, 0.5]],
  g: [[0, 0], [0.125, 0], [0.375, 1], [0.64, 1], [0.91, 0], [1, 0]],
  b: [[0, 0.5], [0.11, 1], [0.34, 1], [0.65, 0], [1, 0]],
};

function segment(points, x) {
  for (let i = 1; i < points.length; i++) {
    if (x <= points[i][0]) {
      const [x0, y0] = points[i - 1];
      const [x1, y1] = points[i];
      return y0 + (y1 - y0) * (x - x0) / (x1 - x0);
    }
  }
  return points[points.length - 1][1];
}

// matplotlib quantises a colour map to 256 entries; so does this table.
const JET_TABLE = Array.from({ length: 256 }, (_, i) => ['r', 'g', 'b'].map((c) => segment(JET[c], i / 255) * 255));

function drawGrey(canvas, grey, width, height) {
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext('2d');
  const image = context.createImageData(width, height);
  for (let i = 0; i < grey.length; i++) {
    image.data[4 * i] = image.data[4 * i + 1] = image.data[4 * i + 2] = grey[i];
    image.data[4 * i + 3] = 255;
  }
  context.putImageData(image, 0, 0);
}

function drawLegend(canvas) {
  const context = canvas.getContext('2d');
  const image = context.createImageData(256, 1);
  JET_TABLE.forEach((colour, i) => { image.data.set([...colour, 255], 4 * i); });
  context.putImageData(image, 0, 0);
}

function drawOverlay(canvas, crop, size, heatmap) {
  canvas.width = size;
  canvas.height = size;
  const context = canvas.getContext('2d');
  const image = context.createImageData(size, size);
  for (let i = 0; i < size * size; i++) {
    const colour = heatmap ? JET_TABLE[Math.min(255, Math.max(0, Math.floor(heatmap[i] * 255 + 0.5)))] : null;
    for (let c = 0; c < 3; c++) {
      image.data[4 * i + c] = colour ? (1 - OVERLAY_ALPHA) * crop[i] + OVERLAY_ALPHA * colour[c] : crop[i];
    }
    image.data[4 * i + 3] = 255;
  }
  context.putImageData(image, 0, 0);
}

// --------------------------------------------------------------------------------------------------------------------
// The page
// --------------------------------------------------------------------------------------------------------------------
function showCard(meta) {
  const card = $('card');
  card.replaceChildren();
  for (const [label, value] of meta.card) {
    const term = document.createElement('dt');
    term.textContent = label;
    const detail = document.createElement('dd');
    detail.textContent = value;
    card.append(term, detail);
  }
}

function selectClass(index) {
  const { result, meta } = page;
  result.selectedClass = index;
  for (const row of $('findings').tBodies[0].rows) {
    row.classList.toggle('selected', Number(row.dataset.index) === index);
  }
  const size = meta.img_size;
  const heatmap = result.heatmaps ? result.heatmaps.subarray(index * size * size, (index + 1) * size * size) : null;
  drawOverlay($('overlay'), result.crop, size, heatmap);
  $('legend-box').hidden = !heatmap;
  $('overlay-caption').textContent = heatmap
    ? `Grad-CAM heatmap of ${meta.class_names[index]} on the ${size}×${size} crop the model saw`
    : `The ${size}×${size} crop the model saw (no heatmap for ${meta.card_network}: ${meta.heatmap_note})`;
}

function showResult() {
  const { result, meta } = page;
  const body = $('findings').tBodies[0];
  body.replaceChildren();
  meta.class_names.forEach((name, index) => {
    const probability = result.probabilities[index];
    const threshold = meta.thresholds ? meta.thresholds[index] : null;
    const above = threshold !== null && probability >= threshold;
    const row = body.insertRow();
    row.dataset.index = index;
    row.classList.toggle('above', above);
    for (const text of [name, probability.toFixed(4), threshold === null ? '—' : threshold.toFixed(4),
      threshold === null ? '—' : above ? 'above' : '']) {
      row.insertCell().textContent = text;
    }
    row.addEventListener('click', () => selectClass(index));
  });
  const ood = $('ood');
  if (result.oodScore === null) {
    ood.textContent = 'No out-of-distribution statistics in this checkpoint'
      + (meta.ood_note ? ` (${meta.ood_note}).` : '.');
    ood.className = 'ood none';
  } else {
    // common.inference.ood: each part's Mahalanobis distance divided by its percentile on validation images.
    const flagged = result.oodScore > meta.ood_threshold;
    ood.textContent = (flagged ? 'Unlike the training images: the probabilities may not mean anything. ' : '')
      + `Out-of-distribution score ${result.oodScore.toFixed(2)} (1 = the ${meta.ood_percentile}th percentile of `
      + `the validation images; flagged above ${meta.ood_threshold.toFixed(2)}).`;
    ood.className = flagged ? 'ood flagged' : 'ood';
  }
  $('timing').textContent = `Model: ${result.modelMs.toFixed(1)} ms (onnxruntime-web ${ort.env.versions.web}, `
    + `WebAssembly, ${ort.env.wasm.numThreads} thread${ort.env.wasm.numThreads === 1 ? '' : 's'}); reading and `
    + `resizing the image: ${result.preprocessMs.toFixed(1)} ms.`;
  drawGrey($('original'), result.grey, result.width, result.height);
  $('original-caption').textContent = `${result.file}: ${result.width}×${result.height} pixels, as read `
    + `(grey)${result.notes.length ? '; ' + result.notes.join('; ') : ''}`;
  $('result-panel').hidden = false;
  let best = 0;
  result.probabilities.forEach((p, i) => { if (p > result.probabilities[best]) best = i; });
  selectClass(best);
}

async function predict(session, file) {
  const { meta } = page;
  setState('running', `Analysing ${file.name}…`);
  const started = performance.now();
  const { grey, width, height, notes } = await readGrey(file);
  const { crop } = evaluationCrop(grey, width, height, meta.img_size, meta.resize);
  const preprocessMs = performance.now() - started;
  const feeds = { [meta.input]: new ort.Tensor('uint8', crop, [1, 1, meta.img_size, meta.img_size]) };
  const before = performance.now();
  const outputs = await session.run(feeds);
  const modelMs = performance.now() - before;
  page.result = {
    file: file.name, width, height, notes, grey, crop, preprocessMs, modelMs,
    probabilities: Array.from(outputs.probabilities.data),
    heatmaps: outputs.heatmaps ? outputs.heatmaps.data : null,
    oodScore: outputs.ood_score ? outputs.ood_score.data[0] : null,
    selectedClass: null,
  };
  showResult();
  setState('done', `${file.name}: done. Choose another image to analyse it.`);
}

async function main() {
  const response = await fetch('model.json');
  if (!response.ok) throw new Error(`model.json: HTTP ${response.status}`);
  const meta = await response.json();
  page.meta = meta;
  showCard(meta);
  drawLegend($('legend'));
  // The .wasm comes from this folder, never from a CDN. Several threads need cross-origin isolation (COOP/COEP
  // headers, which python -m http.server does not send); without it onnxruntime-web runs on one.
  // (Only the .wasm is named: this bundle carries its JavaScript glue, which a path prefix would fetch separately.)
  ort.env.wasm.wasmPaths = { wasm: new URL('ort-wasm-simd-threaded.wasm', import.meta.url).href };
  ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
  const session = await ort.InferenceSession.create('model.onnx', { executionProviders: ['wasm'] });
  setState('ready', `Ready: ${meta.card_network}, ${meta.img_size}×${meta.img_size} input. Choose an image.`);

  const run = (file) => predict(session, file).catch((err) => {
    setState('error', err instanceof Refusal ? err.message : `Could not analyse ${file.name}: ${err.message}`, true);
    page.error = err.message;
  });
  $('file').addEventListener('change', (event) => { if (event.target.files.length) run(event.target.files[0]); });
  const zone = $('drop-zone');
  zone.addEventListener('dragover', (event) => { event.preventDefault(); zone.classList.add('over'); });
  zone.addEventListener('dragleave', () => zone.classList.remove('over'));
  zone.addEventListener('drop', (event) => {
    event.preventDefault();
    zone.classList.remove('over');
    if (event.dataTransfer.files.length) run(event.dataTransfer.files[0]);
  });
}

main().catch((err) => {
  page.error = err.message;
  const hint = location.protocol === 'file:' ? ' Serve the folder (python -m http.server) instead of opening the '
    + 'file: browsers do not load modules from file:// pages.' : '';
  setState('error', `The model could not be loaded: ${err.message}.${hint}`, true);
});
