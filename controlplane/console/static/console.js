// Aegis console: keeps a page's live parts current over server-sent events, and asks before
// the irreversible buttons. The server renders (and escapes) every fragment; this only places it.
"use strict";
(function () {
  const root = document.querySelector("main[data-live]");
  if (root && window.EventSource) {
    const events = new EventSource(root.dataset.live);
    events.addEventListener("fragment", function (event) {
      const part = JSON.parse(event.data);
      const target = document.getElementById(part.target);
      if (!target) return;
      target.innerHTML = part.html;
      target.dataset.updatedAt = String(Date.now());
    });
    // The session ended (signed out elsewhere, or expired): reload into the sign-in form.
    events.addEventListener("end", function () {
      events.close();
      window.location.reload();
    });
  }
  document.addEventListener("submit", function (event) {
    const form = event.target;
    if (form instanceof HTMLFormElement && form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
      event.preventDefault();
    }
  });
})();
