// DeepGuard upload page: pick, drop or paste up to data-max-files images, send them to /api/predictions in one
// request, show each verdict (one image: a card; several: a table) with its heatmap, a CSV of the results
// and a "this verdict is wrong" button that posts to /api/feedback.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const form = $("upload-form");
  const input = $("file-input");
  const zone = $("drop-zone");
  const statusLine = $("status");
  const errorLine = $("error");
  const tools = $("tools");
  const heatmapSwitch = $("heatmap-switch");
  const heatmapToggle = $("heatmap-toggle");
  const single = $("result");
  const batch = $("batch");
  const rowsBody = batch.querySelector("tbody");
  const version = $("model-version");
  const notice = $("synthetic-notice");
  const maxBytes = Number(form.dataset.maxBytes);
  const maxFiles = Number(form.dataset.maxFiles);
  const maxBatchBytes = Number(form.dataset.maxBatchBytes);
  const WORDS = { FAKE: "Likely AI-generated", REAL: "Likely a real photo", UNCERTAIN: "Can't tell" };
  // The probability is calibrated on images like the training ones; for an image with a domain note (a photo
  // shrunk 100x, a screenshot) it is only the model's score, and the page must not present it as more.
  const SCORE_LABEL = {
    calibrated: "Calibrated probability it is AI-generated:",
    noted: "The model's score for AI-generated (not a reliable probability for an image like this):",
  };
  const CLAIMS = { FAKE: "It's AI-generated", REAL: "It's a real photo" };
  // A heatmap shows the evidence for the image's label (the side of the threshold its score is on), which is
  // not shown anywhere else: for a "can't tell" verdict the page must say which side the map is about.
  const EVIDENCE = { FAKE: "that it is AI-generated", REAL: "that it is a real photo" };
  const OPPOSITE = { FAKE: "REAL", REAL: "FAKE" };
  // Pictures fit in a square of this many CSS pixels; CIFAKE's 32x32 images are enlarged to it.
  const SINGLE_BOX = 224;
  const THUMB_BOX = 72;
  // Heatmap colours, cold to hot: blue, cyan, yellow, red (the usual reading of a saliency map).
  const STOPS = [[0, 0, 255], [0, 255, 255], [255, 255, 0], [255, 0, 0]];
  let shown = null; // the results on the page: { modelVersion, rows: [{ file, result }] }
  let objectUrls = [];
  let latest = 0; // only the answer to the latest upload is shown
  let uploading = null; // the AbortController of the upload on its way: a new pick cancels it

  // "It's AI-generated" -> "it's AI-generated" inside a sentence (toLowerCase would write "ai").
  function lowerFirst(words) {
    return words.charAt(0).toLowerCase() + words.slice(1);
  }

  function mb(bytes) {
    return String(Math.round((bytes / 1048576) * 100) / 100);
  }

  function showError(message) {
    errorLine.textContent = message;
    errorLine.hidden = false;
    statusLine.textContent = "";
  }

  function showModel(modelVersion, synthetic) {
    if (modelVersion) version.textContent = modelVersion;
    if (synthetic !== undefined) notice.hidden = !synthetic;
  }

  function clear() {
    errorLine.hidden = true;
    single.hidden = true;
    batch.hidden = true;
    tools.hidden = true;
    rowsBody.replaceChildren();
    $("picture").replaceChildren();
    objectUrls.forEach((url) => URL.revokeObjectURL(url));
    objectUrls = [];
    shown = null;
  }

  // The server checks all of this too; checking here saves uploading what it would refuse.
  function problemWith(files) {
    if (files.length > maxFiles) {
      return "You chose " + files.length + " files; up to " + maxFiles + " can be checked at once.";
    }
    let total = 0;
    for (const file of files) {
      if (file.size === 0) return file.name + " is empty.";
      if (file.size > maxBytes) return file.name + " is larger than the limit of " + mb(maxBytes) + " MB.";
      total += file.size;
    }
    if (total > maxBatchBytes) {
      return "The files together are larger than the limit of " + mb(maxBatchBytes) + " MB.";
    }
    return null;
  }

  function percent(probability) {
    return Math.round(probability * 1000) / 10;
  }

  // One decimal, but a score that rounds to 100.0% or 0.0% reads "> 99.9%" / "< 0.1%": a calibrated
  // probability is never proof, and the page must not show one as certain.
  function percentText(probability) {
    const p = percent(probability);
    if (p >= 100) return "> 99.9%";
    if (p <= 0) return "< 0.1%";
    return p.toFixed(1) + "%";
  }

  function colour(value) {
    const x = Math.min(Math.max(value, 0), 1) * (STOPS.length - 1);
    const i = Math.min(Math.floor(x), STOPS.length - 2);
    const t = x - i;
    return STOPS[i].map((c, k) => Math.round(c + (STOPS[i + 1][k] - c) * t));
  }

  // One canvas pixel per heatmap cell; CSS stretches the canvas over the image (smoothly), as the model saw
  // the whole image stretched to 32x32. Hot cells are more opaque, so the image shows through cold ones.
  function drawHeatmap(canvas, heatmap) {
    const height = heatmap.length;
    const width = heatmap[0].length;
    canvas.width = width;
    canvas.height = height;
    const context = canvas.getContext("2d");
    const pixels = context.createImageData(width, height);
    heatmap.forEach((row, y) => row.forEach((value, x) => {
      const at = (y * width + x) * 4;
      const [r, g, b] = colour(value);
      pixels.data[at] = r;
      pixels.data[at + 1] = g;
      pixels.data[at + 2] = b;
      pixels.data[at + 3] = Math.round(50 + 110 * Math.min(Math.max(value, 0), 1));
    }));
    context.putImageData(pixels, 0, 0);
  }

  function picture(row, box) {
    const frame = document.createElement("div");
    frame.className = "frame";
    const img = document.createElement("img");
    img.alt = "Uploaded image " + row.file.name;
    frame.appendChild(img);
    const heatmap = row.result.heatmap;
    if (Array.isArray(heatmap) && heatmap.length && Array.isArray(heatmap[0])) {
      const canvas = document.createElement("canvas");
      canvas.className = "heatmap";
      canvas.setAttribute("role", "img"); // a canvas has no role that takes a name otherwise
      const side = "Heatmap for " + row.file.name + ": where the model found evidence " +
        EVIDENCE[row.result.label];
      canvas.setAttribute("aria-label", side);
      canvas.title = side;
      drawHeatmap(canvas, heatmap);
      canvas.hidden = !heatmapToggle.checked;
      frame.appendChild(canvas);
    }
    img.addEventListener("load", () => {
      const scale = Math.min(box / img.naturalWidth, box / img.naturalHeight);
      img.style.width = Math.round(img.naturalWidth * scale) + "px";
      img.style.height = Math.round(img.naturalHeight * scale) + "px";
      img.classList.toggle("enlarged", scale > 1);
      frame.classList.add("loaded");
    });
    // The server read the file; this browser cannot draw it (TIFF, say): say so, not a broken image.
    img.addEventListener("error", () => {
      const text = document.createElement("span");
      text.className = "no-preview";
      text.textContent = "No preview";
      frame.replaceChildren(text);
    });
    const url = URL.createObjectURL(row.file);
    objectUrls.push(url);
    img.src = url;
    return frame;
  }

  async function sendFeedback(row, claim, box, outcome) {
    const buttons = box.querySelectorAll("button");
    buttons.forEach((button) => { button.disabled = true; });
    outcome.dataset.state = "sending";
    outcome.textContent = "Sending\u2026";
    const data = new FormData();
    try {
      // The bytes themselves, not a reference to the picked file: the body is then complete wherever it
      // is inspected (Chromium's request interception, which the browser test uses, omits file-backed parts).
      const bytes = await row.file.arrayBuffer();
      data.append("image", new Blob([bytes], { type: row.file.type }), row.file.name);
    } catch (err) {
      outcome.dataset.state = "failed";
      outcome.textContent = "Not sent: the image could not be read again; pick it once more.";
      buttons.forEach((button) => { button.disabled = false; });
      return;
    }
    data.append("claimed_label", claim);
    data.append("verdict", row.result.verdict);
    data.append("fake_probability", String(row.result.fake_probability));
    data.append("model_version", row.modelVersion);
    try {
      const response = await fetch("/api/feedback", { method: "POST", body: data });
      const body = await response.json().catch(() => ({}));
      if (response.ok) {
        outcome.dataset.state = "sent";
        outcome.textContent = "Thanks, recorded: " + lowerFirst(CLAIMS[claim]) + ".";
        return;
      }
      outcome.textContent = "Not sent: " + (body.error || "the server answered HTTP " + response.status + ".");
    } catch (err) {
      outcome.textContent = "Not sent: could not reach the server.";
    }
    outcome.dataset.state = "failed";
    buttons.forEach((button) => { button.disabled = false; });
  }

  // A decided verdict gets "this verdict is wrong" (claiming the other class); "can't tell" asks which.
  function feedback(row) {
    const box = document.createElement("div");
    box.className = "feedback";
    const outcome = document.createElement("span");
    outcome.className = "feedback-outcome";
    outcome.setAttribute("role", "status");
    const opposite = OPPOSITE[row.result.verdict];
    const claims = opposite ? [opposite] : ["REAL", "FAKE"];
    for (const claim of claims) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "wrong";
      button.dataset.claim = claim;
      button.textContent = opposite ? "This verdict is wrong" : CLAIMS[claim];
      // A table of them all reads alike to a screen reader: the name says which file it is about.
      button.setAttribute("aria-label", button.textContent + ": " + row.result.file);
      button.title = "Tell us: " + lowerFirst(CLAIMS[claim]);
      button.addEventListener("click", () => sendFeedback(row, claim, box, outcome));
      box.appendChild(button);
    }
    box.appendChild(outcome);
    return box;
  }

  // "64×32 PNG": what was uploaded, which is what a domain note is about.
  function inputFacts(result) {
    const input = result.input;
    return input ? input.width + "\u00d7" + input.height + " " + input.format : "";
  }

  function verdictWords(element, result) {
    element.textContent = WORDS[result.verdict] || result.verdict;
    element.dataset.verdict = result.verdict;
    element.classList.add("verdict-words");
  }

  function showSingle(row) {
    const result = row.result;
    const p = percent(result.fake_probability);
    $("picture").replaceChildren(picture(row, SINGLE_BOX));
    verdictWords($("verdict"), result);
    $("probability-bar").style.width = p + "%";
    $("probability-bar").className = "bar-fill " + String(result.verdict).toLowerCase();
    $("probability-meter").setAttribute("aria-valuenow", String(p));
    $("probability-meter").setAttribute("aria-valuetext", percentText(result.fake_probability));
    $("probability").textContent = percentText(result.fake_probability);
    $("probability-label").textContent = result.note ? SCORE_LABEL.noted : SCORE_LABEL.calibrated;
    $("input-facts").textContent = inputFacts(result) ? "Uploaded: " + inputFacts(result) : "";
    $("input-facts").hidden = !result.input;
    $("note").textContent = result.note || "";
    $("note").hidden = !result.note;
    $("feedback").replaceChildren(feedback(row));
    single.hidden = false;
  }

  function cell(tr, label, content) {
    const td = document.createElement("td");
    td.dataset.label = label; // the column name, shown beside the value when a phone stacks the row
    if (typeof content === "string") td.textContent = content;
    else td.appendChild(content);
    tr.appendChild(td);
    return td;
  }

  function showTable(rows) {
    rowsBody.replaceChildren(...rows.map((row) => {
      const result = row.result;
      const tr = document.createElement("tr");
      tr.dataset.verdict = result.verdict;
      const image = cell(tr, "Image", picture(row, THUMB_BOX));
      const name = document.createElement("span");
      name.className = "file-name";
      name.textContent = [result.file, inputFacts(result)].filter(Boolean).join(" \u00b7 ");
      image.appendChild(name);
      verdictWords(cell(tr, "Verdict", ""), result);
      const score = cell(tr, "Probability AI-generated", percentText(result.fake_probability));
      score.className = "number";
      if (result.note) { // not a calibrated probability for this image (SCORE_LABEL): the cell says so
        const caveat = document.createElement("span");
        caveat.className = "score-caveat";
        caveat.textContent = "score only: see the note";
        score.appendChild(caveat);
      }
      cell(tr, "Note", result.note || "").className = "note-cell";
      cell(tr, "Feedback", feedback(row));
      return tr;
    }));
    $("batch-caption").textContent = rows.length + " images checked by model version " + shown.modelVersion;
    batch.hidden = false;
  }

  // What a screen reader hears: the results sections are filled while hidden, and a live region shown only
  // with its content is not announced, so the status line (live from the start) sums the answer up.
  function summary(rows) {
    if (rows.length === 1) {
      const result = rows[0].result;
      const words = (WORDS[result.verdict] || result.verdict) + ": ";
      if (result.note) {
        return words + "the model's score for AI-generated is " + percentText(result.fake_probability) +
          ", on an image unlike the ones it learned from (see the note).";
      }
      return words + percentText(result.fake_probability) + " probability it is AI-generated.";
    }
    const counts = new Map();
    rows.forEach((row) => counts.set(row.result.verdict, (counts.get(row.result.verdict) || 0) + 1));
    const parts = Array.from(counts, ([verdict, n]) => n + " " + lowerFirst(WORDS[verdict] || verdict));
    return rows.length + " images checked: " + parts.join(", ") + ".";
  }

  // The legend's first sentence: which side the maps show evidence for.
  function heatmapSide(rows) {
    if (rows.length !== 1) {
      return "Each map shows where the model found evidence for the side its score leans to (AI-generated " +
        "or a real photo), also under \u201cCan't tell\u201d: point at a map to see which.";
    }
    const result = rows[0].result;
    const leans = result.verdict === "UNCERTAIN"
      ? ", the side its score leans to (the verdict is \u201cCan't tell\u201d)" : "";
    return "The map shows where the model found evidence " + EVIDENCE[result.label] + leans + ".";
  }

  function show(files, body) {
    showModel(body.model_version, body.synthetic_data);
    const rows = body.results.map((result, i) => ({
      file: files[i], result: result, modelVersion: body.model_version,
    }));
    shown = { modelVersion: body.model_version, rows: rows };
    heatmapToggle.checked = false;
    $("heatmap-legend").hidden = true;
    $("heatmap-side").textContent = heatmapSide(rows);
    heatmapSwitch.hidden = !rows.some((row) => Array.isArray(row.result.heatmap));
    if (rows.length === 1) showSingle(rows[0]);
    else showTable(rows);
    tools.hidden = false;
    statusLine.textContent = summary(rows);
  }

  // An upload fails before any answer when the browser cannot read a file: a folder dropped on the page, or
  // a file moved or changed since it was chosen. Only when every file reads is it the connection.
  async function unreadable(files) {
    for (const file of files) {
      try {
        await file.slice(0, 1).arrayBuffer();
      } catch (err) {
        return file;
      }
    }
    return null;
  }

  async function send(fileList) {
    const files = Array.from(fileList || []);
    if (!files.length) return; // a drop of text or a link: no new check, so the results stay
    const ticket = ++latest;
    // On a slow line the upload whose answer would be thrown away no longer shares it with this one.
    if (uploading) uploading.abort();
    uploading = null;
    clear();
    const problem = problemWith(files);
    if (problem) return showError(problem);
    statusLine.textContent = files.length === 1 ? "Checking\u2026" : "Checking " + files.length + " images\u2026";
    const data = new FormData();
    files.forEach((file) => data.append("image", file, file.name));
    data.append("explain", "true");
    const controller = new AbortController();
    uploading = controller;
    let response;
    let body;
    try {
      response = await fetch("/api/predictions", { method: "POST", body: data, signal: controller.signal });
      body = await response.json().catch(() => ({}));
    } catch (err) {
      if (ticket !== latest) return; // cancelled by a newer pick
      const unread = await unreadable(files);
      if (ticket !== latest) return;
      showError(unread ? unread.name + " could not be read: it is a folder, or a file moved or changed since " +
        "it was chosen. Choose or drop the image files themselves." :
        "Could not reach the server; check your connection and try again.");
      return;
    } finally {
      if (uploading === controller) uploading = null;
    }
    if (ticket !== latest) return;
    if (!response.ok) return showError(body.error || "The request failed (HTTP " + response.status + ").");
    show(files, body);
  }

  // Cells a spreadsheet would run as a formula (file names come from users) get a leading quote.
  function csvCell(value) {
    let text = value === null || value === undefined ? "" : String(value);
    if (/^[=+\-@\t\r]/.test(text)) text = "'" + text;
    return /[",\r\n]/.test(text) ? "\"" + text.replace(/"/g, "\"\"") + "\"" : text;
  }

  function downloadCsv() {
    if (!shown) return;
    const header = ["file", "verdict", "fake_probability", "label", "note", "model_version"];
    const lines = [header].concat(shown.rows.map((row) => [
      row.result.file, row.result.verdict, row.result.fake_probability, row.result.label, row.result.note,
      shown.modelVersion,
    ]));
    const text = lines.map((line) => line.map(csvCell).join(",")).join("\r\n") + "\r\n";
    const url = URL.createObjectURL(new Blob([text], { type: "text/csv;charset=utf-8" }));
    const link = document.createElement("a");
    link.href = url;
    link.download = "deepguard-results.csv";
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  heatmapToggle.addEventListener("change", () => {
    document.querySelectorAll("canvas.heatmap").forEach((canvas) => {
      canvas.hidden = !heatmapToggle.checked;
    });
    $("heatmap-legend").hidden = !heatmapToggle.checked;
  });
  $("csv-download").addEventListener("click", downloadCsv);
  // The picker names the files whose verdicts are shown, and is emptied only when opened again, so that
  // choosing the same files again is a new check. A drop or a paste checks files it does not hold: emptied.
  input.addEventListener("change", () => send(input.files));
  input.addEventListener("click", () => { input.value = ""; });
  ["dragenter", "dragover"].forEach((name) => zone.addEventListener(name, (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  }));
  ["dragleave", "drop"].forEach((name) => zone.addEventListener(name, (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
  }));
  zone.addEventListener("drop", (event) => {
    if (event.dataTransfer.files.length) input.value = "";
    send(event.dataTransfer.files);
  });
  // A screenshot is usually on the clipboard, not in a file: Ctrl+V anywhere on the page checks the images it
  // holds. A paste without one (text) is left to the browser.
  document.addEventListener("paste", (event) => {
    const files = event.clipboardData ? event.clipboardData.files : null;
    if (!files || !files.length) return;
    event.preventDefault();
    input.value = "";
    send(files);
  });
  form.addEventListener("submit", (event) => { event.preventDefault(); send(input.files); });

  fetch("/healthz").then((r) => r.json()).then((body) => {
    if (body.model_version) showModel(body.model_version);
    else version.textContent = "unavailable (predictor not ready)";
  }).catch(() => { version.textContent = "unavailable"; });
})();
