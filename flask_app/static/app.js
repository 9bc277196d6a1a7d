// DeepGuard upload page: pick or drop a file, preview it, send it to /api/predict, show the verdict.
"use strict";

(function () {
  const form = document.getElementById("upload-form");
  const input = document.getElementById("file-input");
  const zone = document.getElementById("drop-zone");
  const preview = document.getElementById("preview");
  const result = document.getElementById("result");
  const verdict = document.getElementById("verdict");
  const bar = document.getElementById("probability-bar");
  const meter = document.getElementById("probability-meter");
  const probability = document.getElementById("probability");
  const statusLine = document.getElementById("status");
  const errorLine = document.getElementById("error");
  const version = document.getElementById("model-version");
  const notice = document.getElementById("synthetic-notice");
  const maxBytes = Number(form.dataset.maxBytes);
  let previewUrl = null;

  function showError(message) {
    errorLine.textContent = message;
    errorLine.hidden = false;
    statusLine.textContent = "";
  }

  function showModel(modelVersion, synthetic) {
    if (modelVersion) version.textContent = modelVersion;
    if (synthetic !== undefined) notice.hidden = !synthetic;
  }

  function showVerdict(body) {
    const percent = Math.round(body.fake_probability * 1000) / 10;
    verdict.textContent = body.label === "FAKE" ? "FAKE (AI-generated)" : "REAL (photo)";
    verdict.dataset.label = body.label;
    bar.style.width = percent + "%";
    bar.className = "bar-fill " + (body.label === "FAKE" ? "fake" : "real");
    meter.setAttribute("aria-valuenow", String(percent));
    probability.textContent = percent.toFixed(1) + "%";
    result.hidden = false;
    statusLine.textContent = "";
    showModel(body.model_version, body.synthetic_data);
  }

  async function send(file) {
    errorLine.hidden = true;
    result.hidden = true;
    if (!file) return;
    if (file.size === 0) return showError("The file is empty.");
    if (file.size > maxBytes) {
      return showError("The file is larger than the limit of " + (maxBytes / 1048576) + " MB.");
    }
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = URL.createObjectURL(file);
    preview.src = previewUrl;
    preview.hidden = false;
    statusLine.textContent = "Checking\u2026";
    const data = new FormData();
    data.append("image", file, file.name);
    try {
      const response = await fetch("/api/predict", { method: "POST", body: data });
      const body = await response.json().catch(() => ({}));
      if (!response.ok) return showError(body.error || "The request failed (HTTP " + response.status + ").");
      showVerdict(body);
    } catch (err) {
      showError("Could not reach the server; check your connection and try again.");
    }
  }

  input.addEventListener("change", () => send(input.files[0]));
  // The image failing to render in the browser is not an error: the server decides what it can read.
  preview.addEventListener("error", () => { preview.hidden = true; });
  ["dragenter", "dragover"].forEach((name) => zone.addEventListener(name, (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  }));
  ["dragleave", "drop"].forEach((name) => zone.addEventListener(name, (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
  }));
  zone.addEventListener("drop", (event) => send(event.dataTransfer.files[0]));
  form.addEventListener("submit", (event) => { event.preventDefault(); send(input.files[0]); });

  fetch("/healthz").then((r) => r.json()).then((body) => {
    if (body.model_version) showModel(body.model_version);
    else version.textContent = "unavailable (predictor not ready)";
  }).catch(() => { version.textContent = "unavailable"; });
})();
