// The cleanup console's only script. Every page works without it: it refreshes pages
// whose content is still moving (tasks running) in place, instead of reloading them.
"use strict";

(function () {
  const REFRESH = "data-refresh";

  function schedule() {
    const main = document.getElementById("main");
    const seconds = main && Number(main.getAttribute(REFRESH));
    if (!seconds) return;
    setTimeout(refresh, seconds * 1000);
  }

  async function refresh() {
    // Not while someone is typing in a form on the page.
    const active = document.activeElement;
    if (active && ["INPUT", "SELECT", "TEXTAREA"].includes(active.tagName)) {
      schedule();
      return;
    }
    try {
      const response = await fetch(window.location.href, {
        credentials: "same-origin",
        headers: { "Accept": "text/html" },
      });
      if (response.redirected || !response.ok) {
        window.location.reload();
        return;
      }
      const doc = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = doc.getElementById("main");
      const main = document.getElementById("main");
      if (fresh && main) {
        main.replaceWith(fresh);
        document.title = doc.title;
      }
    } catch (e) {
      // Offline for a moment: try again later.
    }
    schedule();
  }

  document.addEventListener("DOMContentLoaded", schedule);
})();
