// Drag-and-drop onto the upload box; the plain file input works without this script.
(function () {
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
