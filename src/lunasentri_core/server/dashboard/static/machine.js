// A machine's page: charts from the history API over the chosen range, the live
// stream's samples appended for short ranges, and every figure (axes, legends,
// the latest values table) written by LunaFormat.format.
(function () {
  "use strict";
  var F = window.LunaFormat;
  var section = document.getElementById("charts");
  if (!section || !F) return;
  var base = document.body.dataset.base || "";
  var machine = section.dataset.machine;
  var api = base + "/api/v1/machines/" + encodeURIComponent(machine);
  var SECONDS = { "15m": 900, "1h": 3600, "6h": 21600, "24h": 86400, "7d": 604800, "30d": 2592000 };
  var LIVE = { "15m": true, "1h": true };
  var HEIGHT = 200;
  var COLORS = ["#3a66d6", "#d9822b", "#2e9d5b", "#b03a8c", "#7a5af5", "#c23b3b", "#1a9bb0", "#8a6d1f"];
  var NAMES = {
    "cpu.percent": "all CPUs", "proc.count": "processes", "mem.percent": "memory", "swap.percent": "swap", "net.rx_rate": "received",
    "net.tx_rate": "sent", "load.1": "1 min", "load.5": "5 min", "load.15": "15 min"
  };
  var BINARY_STEPS = [];
  for (var power = 0; power <= 50; power += 10) {
    [1, 2, 4, 8, 16, 32, 64, 128, 256, 512].forEach(function (m) {
      BINARY_STEPS.push(m * Math.pow(2, power));
    });
  }
  var DERIVED = { "mem.percent": "mem", "swap.percent": "swap", "disk.percent": "disk" };
  var range = SECONDS[section.dataset.range] ? section.dataset.range : "1h";
  // A custom range ({start, end} in seconds), typed in the form or dragged across a
  // chart; null while one of the preset ranges is shown.
  var custom = section.dataset.start
    ? { start: Date.parse(section.dataset.start) / 1000, end: Date.parse(section.dataset.end) / 1000 }
    : null;
  var form = section.querySelector("form.custom-range");
  var problem = document.getElementById("range-problem");
  var charts = [];
  var stream = null;

  function iso(seconds) { return new Date(seconds * 1000).toISOString(); }

  // The time axis' bounds: the custom range, or the preset range up to now.
  function bounds(now) {
    return custom ? [custom.start, custom.end] : [now - SECONDS[range], now];
  }

  function sortedLabels(labels) {
    var out = {};
    Object.keys(labels || {}).sort().forEach(function (k) { out[k] = labels[k]; });
    return out;
  }

  function seriesKey(metric, labels) {
    return metric + " " + JSON.stringify(sortedLabels(labels));
  }

  function legendName(chart, metric, labels) {
    var parts = [];
    if (chart.metrics.length > 1) parts.push(NAMES[metric] || metric);
    Object.keys(labels).sort().forEach(function (k) { parts.push(labels[k]); });
    return parts.length ? parts.join(" ") : NAMES[metric] || metric;
  }

  // One history call for several metrics; each series comes back with its metric.
  function fetchSeries(metrics, exact) {
    var span = custom
      ? "&start=" + encodeURIComponent(iso(custom.start)) + "&end=" + encodeURIComponent(iso(custom.end))
      : "&start=-" + range;
    var url = api + "/history?metric=" + encodeURIComponent(metrics.join(",")) + span +
      (exact ? "&exact=true" : "");
    return fetch(url, { headers: { accept: "application/json" }, credentials: "same-origin" })
      .then(function (r) {
        if (!r.ok) throw new Error("history of " + metrics.join(", ") + ": HTTP " + r.status);
        return r.json();
      })
      .then(function (body) {
        return body.series.map(function (s) {
          return { metric: s.metric, labels: s.labels, points: s.points };
        });
      });
  }

  // The machine's CPU as a whole (its unlabelled series) rather than one line per
  // core; all its series only where no whole one is stored.
  function fetchCpu() {
    return fetchSeries(["cpu.percent"], true).then(function (whole) {
      return whole.length ? whole : fetchSeries(["cpu.percent"], false);
    });
  }

  // Every chart's data in two calls (the CPU's, and all the others' at once); a
  // range chosen while another is loading: only the last one is drawn.
  var generation = 0;
  function loadAll() {
    var mine = ++generation;
    var others = [];
    var cpu = false;
    charts.forEach(function (chart) {
      chart.metrics.forEach(function (m) {
        if (m === "cpu.percent") cpu = true;
        else if (others.indexOf(m) < 0) others.push(m);
      });
    });
    var asks = [];
    if (cpu) asks.push(fetchCpu());
    if (others.length) asks.push(fetchSeries(others, false));
    return Promise.all(asks).then(function (found) {
      if (mine !== generation) return;
      var series = [].concat.apply([], found);
      charts.forEach(function (chart) {
        draw(chart, series.filter(function (s) { return chart.metrics.indexOf(s.metric) >= 0; }));
      });
    }).catch(function (error) {
      if (mine !== generation) return;
      charts.forEach(function (chart) { chart.plotEl.textContent = "Could not load: " + error.message; });
    });
  }

  function draw(chart, series) {
    if (chart.plot) { chart.plot.destroy(); chart.plot = null; }
    chart.plotEl.textContent = "";
    chart.keys = series.map(function (s) { return seriesKey(s.metric, s.labels); });
    if (!series.length) {
      chart.plotEl.textContent = "No data in this range.";
      chart.el.dataset.points = "0";
      return;
    }
    var tables = series.map(function (s) {
      return [
        s.points.map(function (p) { return Date.parse(p[0]) / 1000; }),
        s.points.map(function (p) { return p[1]; })
      ];
    });
    chart.data = tables.length === 1 ? tables[0] : uPlot.join(tables);
    var metric = chart.metrics[0];
    var fmt = function (v) { return F.format(metric, v); };
    var unit = F.unitOf(metric);
    var percent = unit === "percent";
    // Axis ticks: whole percentages; byte sizes on binary steps (512 KiB, 1 MiB, ...).
    var tick = function (v) { return fmt(v).replace(/\.0 %$/, " %"); };
    var opts = {
      width: Math.max(chart.plotEl.clientWidth, 200),
      height: HEIGHT,
      series: [{}].concat(series.map(function (s, i) {
        return {
          label: legendName(chart, s.metric, s.labels),
          stroke: COLORS[i % COLORS.length],
          width: 1.5,
          spanGaps: true,
          value: function (u, v) { return fmt(v); }
        };
      })),
      scales: {
        x: { time: true },
        y: {
          range: percent
            ? [0, 100]
            : function (u, min, max) { return [Math.min(0, min), max > 0 ? max * 1.1 : 1]; }
        }
      },
      axes: [
        { stroke: "#55607a", grid: { stroke: "#eef0f3" }, ticks: { stroke: "#e3e6eb" } },
        {
          stroke: "#55607a", grid: { stroke: "#eef0f3" }, ticks: { stroke: "#e3e6eb" }, size: 76,
          values: function (u, splits) { return splits.map(tick); }
        }
      ],
      // A drag asks the server for the selected span (finer data than the chart holds)
      // instead of stretching the points already drawn.
      cursor: { drag: { x: true, y: false, setScale: false } },
      hooks: { setSelect: [zoomTo] }
    };
    if (unit === "bytes" || unit === "bytes/s") opts.axes[1].incrs = BINARY_STEPS;
    chart.plot = new uPlot(opts, padded(chart.data, Date.now() / 1000), chart.plotEl);
    chart.el.dataset.points = String(chart.data[0].length);
  }

  // The data with empty points where the range starts (and where a custom range
  // ends), so that the time axis spans the whole range whatever the data covers.
  function padded(data, now) {
    var span = bounds(now);
    var out = data;
    if (!out[0].length || out[0][0] > span[0]) {
      out = out.map(function (col, i) { return [i === 0 ? span[0] : null].concat(col); });
    }
    if (custom && out[0][out[0].length - 1] < span[1]) {
      out = out.map(function (col, i) { return col.concat([i === 0 ? span[1] : null]); });
    }
    return out;
  }

  function zoomTo(u) {
    if (u.select.width < 3) return;
    var start = Math.floor(u.posToVal(u.select.left, "x"));
    var end = Math.ceil(u.posToVal(u.select.left + u.select.width, "x"));
    u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
    if (end > start) chooseCustom(start, end);
  }

  // A sample's readings by series key, with the percentages the server derives
  // (used / total * 100 for the same labels) where the sample does not carry them.
  function readings(sample) {
    var found = {};
    Object.keys(sample.metrics).forEach(function (metric) {
      var value = sample.metrics[metric];
      var items = typeof value === "number" ? [{ labels: {}, value: value }] : value;
      items.forEach(function (item) { found[seriesKey(metric, item.labels)] = item.value; });
    });
    Object.keys(DERIVED).forEach(function (derived) {
      var prefix = DERIVED[derived];
      var used = sample.metrics[prefix + ".used"];
      if (used === undefined || sample.metrics[derived] !== undefined) return;
      var items = typeof used === "number" ? [{ labels: {}, value: used }] : used;
      items.forEach(function (item) {
        var total = found[seriesKey(prefix + ".total", item.labels)];
        if (total > 0) found[seriesKey(derived, item.labels)] = item.value / total * 100;
      });
    });
    return found;
  }

  function append(chart, t, values) {
    if (!chart.plot || !chart.keys.length || custom) return;
    var xs = chart.data[0];
    if (xs.length && t <= xs[xs.length - 1]) return;
    var hit = chart.keys.some(function (k) { return values[k] !== undefined; });
    if (!hit) return;
    var data = [xs.concat([t])];
    chart.keys.forEach(function (k, i) {
      data.push(chart.data[i + 1].concat([values[k] === undefined ? null : values[k]]));
    });
    var oldest = t - SECONDS[range];
    while (data[0].length > 1 && data[0][0] < oldest) data.forEach(function (col) { col.shift(); });
    chart.data = data;
    chart.plot.setData(padded(data, t));
    chart.el.dataset.points = String(data[0].length);
  }

  function formatCells(root) {
    root.querySelectorAll("[data-metric][data-value]").forEach(function (cell) {
      cell.textContent = F.format(cell.dataset.metric, parseFloat(cell.dataset.value));
    });
  }

  function updateTable(at, values) {
    document.querySelectorAll("#latest tr[data-series]").forEach(function (row) {
      var value = values[row.dataset.series];
      if (value === undefined) return;
      var cell = row.querySelector("[data-value]");
      cell.dataset.value = String(value);
      cell.textContent = F.format(cell.dataset.metric, value);
      row.querySelector(".at").textContent = at.replace("T", " ").slice(0, 19);
    });
  }

  function onSample(event) {
    var sample = JSON.parse(event.data);
    var values = readings(sample);
    var t = Date.parse(sample.timestamp) / 1000;
    charts.forEach(function (chart) { append(chart, t, values); });
    updateTable(new Date(t * 1000).toISOString(), values);
  }

  function listen() {
    if (stream) { stream.close(); stream = null; }
    if (custom || !LIVE[range] || typeof EventSource === "undefined") return;
    stream = new EventSource(api + "/stream");
    stream.addEventListener("open", function () { document.body.dataset.live = "open"; });
    stream.addEventListener("error", function () { document.body.dataset.live = "retrying"; });
    stream.addEventListener("sample", onSample);
  }

  function markPreset(current) {
    section.querySelectorAll(".ranges a").forEach(function (a) {
      if (a.dataset.range === current) a.setAttribute("aria-current", "true");
      else a.removeAttribute("aria-current");
    });
  }

  function choose(next) {
    range = next;
    custom = null;
    section.dataset.range = next;
    markPreset(next);
    if (problem) problem.textContent = "";
    history.replaceState(null, "", "?range=" + next);
    listen();
    loadAll();
  }

  // datetime-local fields hold UTC minutes here, as the form's labels say.
  function fieldValue(seconds) { return iso(seconds).slice(0, 16); }
  function fieldSeconds(value) { return value ? Date.parse(value + "Z") / 1000 : NaN; }

  function chooseCustom(start, end) {
    custom = { start: start, end: end };
    markPreset(null);
    if (problem) problem.textContent = "";
    if (form) {
      form.elements.from.value = fieldValue(start);
      form.elements.to.value = fieldValue(end);
    }
    history.replaceState(null, "", "?from=" + encodeURIComponent(iso(start)) + "&to=" + encodeURIComponent(iso(end)));
    listen();
    loadAll();
  }

  if (form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var start = fieldSeconds(form.elements.from.value);
      var end = fieldSeconds(form.elements.to.value);
      if (isNaN(start) || isNaN(end)) {
        problem.textContent = "Give both From and To.";
      } else if (end <= start) {
        problem.textContent = "To must be after From.";
      } else {
        chooseCustom(start, end);
      }
    });
  }

  section.querySelectorAll(".ranges a").forEach(function (a) {
    a.addEventListener("click", function (event) {
      event.preventDefault();
      choose(a.dataset.range);
    });
  });
  section.querySelectorAll(".chart").forEach(function (el) {
    el.addEventListener("dblclick", function () { if (custom) choose(range); });
    charts.push({
      el: el, plotEl: el.querySelector(".plot"), metrics: el.dataset.metrics.split(" "),
      keys: [], data: [[]], plot: null
    });
  });
  window.addEventListener("resize", function () {
    charts.forEach(function (chart) {
      if (chart.plot) chart.plot.setSize({ width: Math.max(chart.plotEl.clientWidth, 200), height: HEIGHT });
    });
  });
  window.addEventListener("pagehide", function () { if (stream) stream.close(); });
  formatCells(document);
  listen();
  loadAll();
})();
