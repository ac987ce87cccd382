// The page at GET /: pick a model, send its files to POST /segment, show the mask over the image in
// NiiVue with the volumes, warnings and downloads. Plain ES module, no build step; NiiVue is served by
// this app from app/web/vendor/ (installed at setup by scripts/install_niivue.py), never from a CDN.
//
// State for tests and the curious: document.body.dataset.state is loading | ready | segmenting |
// rendered | error, and window.bratsViewer holds the NiiVue instance and the last answer.
import { ApiError, getJson, headerWarnings, segment } from "./api.js";

const $ = (selector) => document.querySelector(selector);
// Same palette, in the same order (ascending label value), as the PNG preview (app outputs).
const COLOURS = [[230, 40, 40], [250, 200, 30], [40, 140, 250], [40, 220, 120], [200, 60, 220]];
const NIFTI = /\.nii(\.gz)?$/i;
const state = { models: [], nv: null, niivue: null, answer: null };
window.bratsViewer = state;

function setState(name) {
  document.body.dataset.state = name;
}

function showError(message) {
  const box = $("#error");
  box.textContent = message;
  box.hidden = !message;
  if (message) setState("error");
}

function element(tag, attrs = {}, text = "") {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text) node.textContent = text;
  return node;
}

function labelColours(card) {
  const values = Object.keys(card.labels).map(Number).sort((a, b) => a - b);
  return values.map((value, i) => ({ value, name: card.labels[value], rgb: COLOURS[i % COLOURS.length] }));
}

// ---- the model and its card -------------------------------------------------------------------------
function describeCard(card) {
  const dl = element("dl");
  const row = (term, value) => {
    dl.append(element("dt", {}, term));
    const dd = element("dd");
    if (value instanceof Node) dd.append(value);
    else dd.textContent = value;
    dl.append(dd);
  };
  row("model", `${card.name} v${card.version} (${card.dims}D)`);
  if (card.description) row("what it does", card.description);
  row("inputs", card.modalities.join(", "));
  const labels = element("span");
  for (const { value, name, rgb } of labelColours(card)) {
    labels.append(element("span", { class: "swatch", style: `background: rgb(${rgb})` }), ` ${value} ${name}  `);
  }
  row("labels", labels);
  const dice = card.validation_dice || {};
  const cases = Object.keys(dice).filter((k) => k !== "mean");
  if (cases.length) {
    const mean = dice.mean ?? cases.reduce((s, k) => s + dice[k], 0) / cases.length;
    row("validation Dice", `${mean.toFixed(3)} (mean of ${cases.length} cases)`);
  }
  row("trained at", `${card.orientation}, ${card.spacing_mm.join(" × ")} mm`);
  row("expects", expectedPreprocessing(card));
  return dl;
}

function expectedPreprocessing(card) {
  const pre = card.preprocessing;
  if (!pre) return "not declared by this card: send co-registered, skull-stripped images, as in BraTS";
  const wanted = Object.entries(pre).filter(([, v]) => v).map(([k, v]) => (v === true ? k : `${k}: ${v}`));
  return wanted.length ? wanted.join(", ").replaceAll("_", " ") : "no preprocessing";
}

function chooseModel(name) {
  const model = state.models.find((m) => m.name === name);
  const cardBox = $("#card");
  cardBox.replaceChildren();
  const slots = $("#slots");
  slots.querySelectorAll(".slot").forEach((n) => n.remove());
  if (!model || !model.card) {
    cardBox.textContent = `${name} is not being served right now (no loaded version).`;
    $("#segment-button").disabled = true;
    return;
  }
  cardBox.append(describeCard(model.card));
  for (const modality of model.card.modalities) {
    const slot = element("label", { class: "slot" });
    slot.append(element("span", {}, modality));
    slot.append(element("input", { type: "file", name: modality, multiple: "", accept: ".nii,.nii.gz,.gz,.zip,.dcm,application/dicom" }));
    slots.append(slot);
  }
  $("#preprocess-row").hidden = !model.card.preprocessing;
  $("#segment-button").disabled = false;
}

async function loadModels() {
  const select = $("#model-select");
  const { models } = await getJson("/models");
  state.models = models;
  select.replaceChildren(...models.map((m) => element("option", { value: m.name }, m.served_version ? `${m.name} (v${m.served_version})` : `${m.name} (not served)`)));
  select.disabled = models.length === 0;
  if (!models.length) throw new ApiError(503, "no_models", "The server has no models to offer yet.");
  const served = models.find((m) => m.served_version) || models[0];
  select.value = served.name;
  chooseModel(served.name);
  select.addEventListener("change", () => chooseModel(select.value));
}

// ---- NiiVue ---------------------------------------------------------------------------------------------
async function loadNiivue() {
  try {
    state.niivue = await import("./vendor/niivue/niivue.js");
  } catch {
    state.niivue = null;
  }
}

async function viewer() {
  if (state.nv) return state.nv;
  const { Niivue, SHOW_RENDER } = state.niivue;
  const nv = new Niivue({
    backColor: [0, 0, 0, 1],
    isRadiologicalConvention: true,
    multiplanarShowRender: SHOW_RENDER.ALWAYS,
    show3Dcrosshair: true,
    crosshairColor: [0.3, 0.75, 1, 0.9],
    dragAndDropEnabled: false,
    isColorbar: false,
    loadingText: "",
    logLevel: "warn",
  });
  await nv.attachToCanvas($("#viewer"));
  nv.setSliceType(nv.sliceTypeMultiplanar);
  state.nv = nv;
  return nv;
}

// The bounding box centre (ITK index, from the JSON answer) in RAS millimetres, where NiiVue puts its
// crosshair; the geometry block is ITK's (LPS), hence the sign flip of x and y.
function tumourCentreRAS(summary) {
  const box = summary.bounding_box;
  const { origin, spacing, direction } = summary.geometry;
  if (!box) return null;
  const index = box.map(([lo, hi]) => ((lo + hi) / 2));
  const lps = [0, 1, 2].map((r) => origin[r] + [0, 1, 2].reduce((s, c) => s + direction[3 * r + c] * spacing[c] * index[c], 0));
  return [-lps[0], -lps[1], lps[2]];
}

async function showInViewer(inputFile, maskBlob, card, summary) {
  const nv = await viewer();
  const { NVImage } = state.niivue;
  const started = performance.now();
  while (nv.volumes.length) nv.removeVolume(nv.volumes[0]);
  const image = await NVImage.loadFromFile({ file: inputFile, colormap: "gray" });
  const mask = await NVImage.loadFromFile({ file: new File([maskBlob], "mask.nii.gz"), opacity: Number($("#opacity").value) });
  const colours = labelColours(card);
  // The label colours are set before the mask is added: every addVolume re-uploads all layers and
  // recomputes the 3D render's gradients, which costs seconds under software WebGL.
  mask.setColormapLabel({
    R: [0, ...colours.map((c) => c.rgb[0])],
    G: [0, ...colours.map((c) => c.rgb[1])],
    B: [0, ...colours.map((c) => c.rgb[2])],
    A: [0, ...colours.map(() => 255)],
    I: [0, ...colours.map((c) => c.value)],
    labels: ["", ...colours.map((c) => c.name)],
  });
  nv.addVolume(image);
  nv.addVolume(mask);
  const centre = tumourCentreRAS(summary);
  if (centre) nv.scene.crosshairPos = nv.mm2frac(centre);
  nv.drawScene();
  console.info(`viewer: volumes loaded and drawn in ${(performance.now() - started).toFixed(0)} ms`);
}

// ---- the answer -----------------------------------------------------------------------------------------
function fillVolumes(summary, card) {
  const body = $("#volumes tbody");
  body.replaceChildren();
  const colourOf = Object.fromEntries(labelColours(card).map((c) => [c.value, c.rgb]));
  const addRow = (swatch, name, voxels, ml) => {
    const tr = element("tr");
    const cell = element("td");
    if (swatch) cell.append(element("span", { class: "swatch", style: `background: rgb(${swatch})` }));
    tr.append(cell, element("td", {}, name), element("td", {}, String(voxels)), element("td", {}, ml.toFixed(1)));
    body.append(tr);
  };
  for (const label of summary.labels) addRow(colourOf[label.value], `${label.value} ${label.name}`, label.voxels, label.volume_ml);
  for (const [name, region] of Object.entries(summary.regions || {})) addRow(null, `${name} (labels ${region.labels.join("+")})`, region.voxels, region.volume_ml);
  if (summary.labels.length > 1) addRow(null, "all labels", summary.tumour_voxels, summary.tumour_volume_ml);
}

function fillWarnings(warnings) {
  const box = $("#warnings");
  box.querySelector("ul").replaceChildren(...warnings.map((w) => element("li", {}, typeof w === "string" ? w : w.detail || w.message || JSON.stringify(w))));
  box.hidden = warnings.length === 0;
}

function saveBlob(blob, name) {
  const link = element("a", { href: URL.createObjectURL(blob), download: name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

function fillDownloads(answer) {
  const list = $("#downloads");
  list.replaceChildren();
  const link = (blob, name, text) => {
    const li = element("li");
    li.append(element("a", { href: URL.createObjectURL(blob), download: name }, text));
    list.append(li);
  };
  const rerun = (format, name, text) => {
    const li = element("li");
    const button = element("button", { type: "button" }, text);
    button.addEventListener("click", async () => {
      button.disabled = true;
      try {
        const response = await segment(answer.files, { ...answer.query, format });
        saveBlob(await response.blob(), name);
      } catch (error) {
        showError(error.message);
      } finally {
        button.disabled = false;
      }
    });
    li.append(button);
    list.append(li);
  };
  link(answer.maskBlob, "mask.nii.gz", "Mask (NIfTI, on the input's grid)");
  link(new Blob([JSON.stringify(answer.summary, null, 2)], { type: "application/json" }), "summary.json", "Summary (JSON)");
  rerun("png", "overlay.png", "Overlay preview (PNG; runs the model again)");
  if (answer.dicom) rerun("dicom-seg", "mask.seg.dcm", "DICOM SEG (runs the model again)");
}

function inputFiles(form) {
  const files = [];
  for (const input of form.querySelectorAll("input[type=file]")) {
    for (const file of input.files) files.push({ field: input.name, file });
  }
  return files;
}

async function run(event) {
  event.preventDefault();
  const button = $("#segment-button");
  const progress = $("#progress");
  const model = state.models.find((m) => m.name === $("#model-select").value);
  const files = inputFiles(event.target);
  const query = { model: model.name, preprocess: model.card.preprocessing ? $("#preprocess").value : undefined };
  showError("");
  setState("segmenting");
  button.disabled = true;
  progress.hidden = false;
  const started = performance.now();
  const tick = setInterval(() => {
    $("#progress-text").textContent = `segmenting… ${((performance.now() - started) / 1000).toFixed(0)} s`;
  }, 500);
  try {
    const jsonResponse = await segment(files, { ...query, format: "json" });
    const summary = await jsonResponse.json();
    // The mask comes from the very version that answered the JSON, even if a new one is swapped in between.
    query.version = jsonResponse.headers.get("X-Model-Version") || undefined;
    const maskResponse = await segment(files, { ...query, format: "nifti" });
    const maskBlob = await maskResponse.blob();
    const first = files.filter((f) => f.field === model.card.modalities[0]);
    const nifti = first.length === 1 && NIFTI.test(first[0].file.name) ? first[0].file : null;
    const answer = { files, query, summary, maskBlob, dicom: !nifti, card: model.card };
    state.answer = answer;
    $("#result").hidden = false;
    fillVolumes(summary, model.card);
    fillWarnings([...(summary.warnings || []), ...headerWarnings(jsonResponse).filter((w) => !(summary.warnings || []).includes(w))]);
    fillDownloads(answer);
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    $("#answer-meta").textContent = `${summary.model.name} v${summary.model.version}, ${seconds} s for both answers`;
    await show(answer, nifti);
    setState("rendered");
  } catch (error) {
    showError(error instanceof ApiError ? error.message : `The page failed: ${error.message}`);
  } finally {
    clearInterval(tick);
    progress.hidden = true;
    button.disabled = false;
  }
}

async function show(answer, niftiInput) {
  const canvas = $("#viewer");
  const preview = $("#preview");
  $("#controls").hidden = !(niftiInput && state.niivue);
  if (niftiInput && state.niivue) {
    canvas.hidden = false;
    preview.hidden = true;
    await showInViewer(niftiInput, answer.maskBlob, answer.card, answer.summary);
    await new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
    return;
  }
  // DICOM input (NiiVue here reads NIfTI only) or NiiVue not installed: the server's own overlay preview.
  const response = await segment(answer.files, { ...answer.query, format: "png" });
  preview.src = URL.createObjectURL(await response.blob());
  await preview.decode();
  canvas.hidden = true;
  preview.hidden = false;
}

function wireControls() {
  $("#opacity").addEventListener("input", (event) => {
    if (!state.nv || state.nv.volumes.length < 2) return;
    state.nv.setOpacity(1, Number(event.target.value));
  });
  for (const button of document.querySelectorAll("#views button")) {
    button.addEventListener("click", () => {
      if (!state.nv) return;
      const nv = state.nv;
      const kind = { multiplanar: nv.sliceTypeMultiplanar, axial: nv.sliceTypeAxial, render: nv.sliceTypeRender }[button.dataset.view];
      nv.setSliceType(kind);
    });
  }
  $("#upload-form").addEventListener("submit", run);
}

async function main() {
  wireControls();
  await loadNiivue();
  if (!state.niivue) {
    showError("The viewer library (NiiVue) is not installed on this server: run `python3 scripts/install_niivue.py` "
      + "(make serve does it). Until then results are shown as the server's PNG preview.");
  }
  try {
    await loadModels();
    if (state.niivue) setState("ready");
  } catch (error) {
    showError(error.message);
  }
}

main();
