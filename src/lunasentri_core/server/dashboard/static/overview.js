// The machines overview: redraw a card when its machine sends samples (the
// server's /live stream names them), and follow the list htmx swaps in when
// the filters change.
(function () {
  "use strict";
  var base = document.body.dataset.base || "";
  var stream = null;
  var watching = "";

  function ids() {
    return Array.prototype.map.call(document.querySelectorAll("#machine-list .card"), function (card) {
      return card.dataset.machine;
    });
  }

  function redraw(id) {
    var card = document.getElementById("card-" + id);
    if (!card || !window.htmx) return;
    htmx.ajax("GET", base + "/machines/" + encodeURIComponent(id) + "/card", {
      target: card, swap: "outerHTML"
    });
  }

  function listen() {
    var wanted = ids().join(",");
    if (wanted === watching && stream) return;
    if (stream) { stream.close(); stream = null; }
    watching = wanted;
    if (!wanted || typeof EventSource === "undefined") return;
    stream = new EventSource(base + "/live?machines=" + encodeURIComponent(wanted));
    // For people (and tests): whether the page is live right now.
    stream.addEventListener("open", function () { document.body.dataset.live = "open"; });
    stream.addEventListener("error", function () { document.body.dataset.live = "retrying"; });
    stream.addEventListener("changed", function (event) {
      JSON.parse(event.data).forEach(redraw);
    });
  }

  // After any swap (a filtered list, a redrawn card): watch what is now shown.
  document.body.addEventListener("htmx:afterSettle", listen);
  window.addEventListener("pagehide", function () { if (stream) stream.close(); });
  listen();
})();
