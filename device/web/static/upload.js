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
  drop.addEventListener("drop", ev => {
    input.files = ev.dataTransfer.files;
    document.getElementById("upload-form").submit();
  });
})();
