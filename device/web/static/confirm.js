// Forms with data-confirm ask before they are sent (the Content-Security-Policy allows
// no inline handlers, so this replaces onsubmit="return confirm(...)").
(function () {
  document.querySelectorAll("form[data-confirm]").forEach(form => {
    form.addEventListener("submit", ev => {
      if (!window.confirm(form.dataset.confirm)) ev.preventDefault();
    });
  });
})();
