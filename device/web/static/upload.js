// Drag-and-drop onto the upload box, and one click per analysis; the plain form works
// without this script (the server also answers a repeated post with its first results).
(function () {
  const form = document.getElementById("upload-form");
  const button = document.getElementById("analyse");
  if (form && button) {
    form.addEventListener("submit", () => {
      button.disabled = true;
      button.textContent = "Analysing…";
    });
    window.addEventListener("pageshow", () => {  // Back to a cached page: usable again
      button.disabled = false;
      button.textContent = "Analyse";
    });
  }
  const drop = document.getElementById("drop");
  const input = document.getElementById("images");
  if (!drop || !input) return;
  ["dragenter", "dragover"].forEach(e => drop.addEventListener(e, ev => {
    ev.preventDefault(); drop.classList.add("over");
  }));
  ["dragleave", "drop"].forEach(e => drop.addEventListener(e, ev => {
    ev.preventDefault(); drop.classList.remove("over");
  }));
  // A dropped folder (a series as a PACS exports it) stands for the files in it, at any
  // depth; what macOS and viewers add beside the slices (hidden files, the DICOMDIR index)
  // is left out.
  const MAX_FILES = Number(drop.dataset.maxFiles || 400);
  function entries(reader) {
    return new Promise((done, fail) => reader.readEntries(done, fail));
  }
  async function filesOf(entry) {
    if (entry.name.startsWith(".") || entry.name.toUpperCase() === "DICOMDIR") return [];
    if (entry.isFile) return [await new Promise((done, fail) => entry.file(done, fail))];
    const reader = entry.createReader(), found = [];
    for (let batch = await entries(reader); batch.length; batch = await entries(reader)) {
      for (const child of batch) found.push(...await filesOf(child));
    }
    return found;
  }
  drop.addEventListener("drop", async ev => {
    const items = [...ev.dataTransfer.items].map(i => i.webkitGetAsEntry && i.webkitGetAsEntry());
    if (!items.some(e => e && e.isDirectory)) {
      input.files = ev.dataTransfer.files;
    } else {
      const files = (await Promise.all(items.filter(Boolean).map(filesOf))).flat();
      const message = document.getElementById("drop-message");
      if (files.length > MAX_FILES) {
        message.textContent = `The folder holds ${files.length} files; at most ${MAX_FILES} ` +
          "per upload. Send the series as a .zip, or fewer files.";
        return;
      }
      const chosen = new DataTransfer();
      files.forEach(f => chosen.items.add(f));
      input.files = chosen.files;
      message.textContent = `${files.length} files from the folder.`;
    }
    document.getElementById("upload-form").submit();
  });
})();
