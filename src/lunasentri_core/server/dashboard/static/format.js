// How the dashboard writes a metric's value: one function for chart axes,
// legends and tables, so every figure of a series reads the same everywhere.
(function () {
  "use strict";
  var BINARY = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];

  // The unit a metric is measured in, from its name (the collectors' conventions).
  function unitOf(metric) {
    if (/\.percent$/.test(metric)) return "percent";
    if (/_rate$/.test(metric)) return "bytes/s";
    if (/_bytes$/.test(metric) || /^(mem|swap|disk)\.(total|used|free|available)$/.test(metric)) {
      return "bytes";
    }
    return "";
  }

  function plain(value) {
    if (Math.abs(value) >= 1000) return Math.round(value).toLocaleString("en");
    return String(Number(value.toPrecision(3)));
  }

  function bytes(value) {
    var size = Math.abs(value);
    var i = 0;
    while (size >= 1024 && i < BINARY.length - 1) { size /= 1024; i++; }
    if (i === 0) return Math.round(value) + " B";
    var digits = size >= 100 ? 0 : size >= 10 ? 1 : 2;
    return (value < 0 ? "-" : "") + size.toFixed(digits) + " " + BINARY[i];
  }

  function format(metric, value) {
    if (value === null || value === undefined || !isFinite(value)) return "–";
    switch (unitOf(metric)) {
      case "percent": return value.toFixed(1) + " %";
      case "bytes": return bytes(value);
      case "bytes/s": return bytes(value) + "/s";
      default: return plain(value);
    }
  }

  window.LunaFormat = { unitOf: unitOf, format: format };
})();
