/* Atoll dashboard: keeps a server-rendered page current.
 *
 * At once and then every POLL_MS it fetches /api/v1/dashboard (all current values) and
 * /api/v1/dashboard/history?since=<newest sample> (chart points: all the server keeps, then the new ones).
 * Elements with data-field="<path>" get the value at that path (syntax: keys joined by ".", "%" and "." inside
 * a key written %25 and %2E, see atoll/admin/dashboard/paths.py), shown as their data-format says (the same
 * formats as atoll/admin/dashboard/units.py) and kept raw in data-value. Tables whose rows come and go
 * (data-rows) are re-fetched from the server's rendering of this page when their keys or a state change.
 * Actions open the #confirm dialog, then call the admin API with the session's CSRF header.
 * No inline script: the page's Content-Security-Policy is default-src 'self'.
 */
(function () {
  "use strict";

  var POLL_MS = 2000;
  var COLORS = ["#0f766e", "#c2410c", "#1d4ed8", "#7c3aed", "#b91c1c", "#15803d", "#a16207", "#0e7490", "#be185d",
    "#4b5563"];

  function $(selector, root) { return (root || document).querySelector(selector); }
  function $$(selector, root) { return Array.prototype.slice.call((root || document).querySelectorAll(selector)); }

  function readJson(id) {
    var el = document.getElementById(id);
    if (!el) { return null; }
    try { return JSON.parse(el.textContent); } catch (e) { return null; }
  }

  function csrf() {
    var meta = $('meta[name="atoll-csrf"]');
    return meta ? meta.getAttribute("content") : "";
  }

  // paths -----------------------------------------------------------------------------------------------------
  function lookup(doc, path) {
    var value = doc;
    var keys = path.split(".");
    for (var i = 0; i < keys.length; i++) {
      var key = decodeURIComponent(keys[i]);
      if (value === null || value === undefined) { return undefined; }
      if (Array.isArray(value)) {
        if (!/^\d+$/.test(key)) { return undefined; }
        value = value[Number(key)];
      } else if (typeof value === "object") {
        if (!Object.prototype.hasOwnProperty.call(value, key)) { return undefined; }
        value = value[key];
      } else {
        return undefined;
      }
    }
    return value;
  }

  function rowKeys(value) {
    if (Array.isArray(value)) {
      return value.map(function (item, index) {
        return String(item && typeof item === "object" && item.id !== undefined && item.id !== null ? item.id : index);
      });
    }
    if (value && typeof value === "object") { return Object.keys(value); }
    return [];
  }

  // formats (atoll/admin/dashboard/units.py) -----------------------------------------------------------------
  var BYTE_UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
  function none(v) { return v === null || v === undefined; }
  function pad(n) { return (n < 10 ? "0" : "") + n; }

  function fmtBytes(v) {
    if (none(v)) { return "\u2013"; }
    v = Number(v);
    var unit = 0;
    while (Math.abs(v) >= 1024 && unit < BYTE_UNITS.length - 1) { v /= 1024; unit++; }
    return unit === 0 ? Math.trunc(v) + " B" : v.toFixed(1) + " " + BYTE_UNITS[unit];
  }
  function fmtCount(v) {
    if (none(v)) { return "\u2013"; }
    v = Number(v);
    if (Number.isInteger(v)) { return String(v).replace(/\B(?=(\d{3})+(?!\d))/g, "\u202f"); }
    return v.toFixed(1);
  }
  function fmtRate(v) { return none(v) ? "\u2013" : fmtBytes(v) + "/s"; }
  function fmtPerSecond(v) { return none(v) ? "\u2013" : Number(v).toFixed(1) + "/s"; }
  function fmtPercent(v) { return none(v) ? "\u2013" : (Number(v) * 100).toFixed(1) + " %"; }
  function fmtSeconds(v) {
    if (none(v)) { return "\u2013"; }
    v = Number(v);
    if (v < 1) { return (v * 1000).toFixed(0) + " ms"; }
    if (v < 60) { return v.toFixed(1) + " s"; }
    var minutes = Math.floor(v / 60), seconds = Math.floor(v) % 60;
    if (minutes < 60) { return minutes + " m " + pad(seconds) + " s"; }
    var hours = Math.floor(minutes / 60);
    minutes = minutes % 60;
    if (hours < 48) { return hours + " h " + pad(minutes) + " m"; }
    return Math.floor(hours / 24) + " d " + (hours % 24) + " h";
  }
  function fmtClock(v) {
    if (!v) { return "\u2013"; }
    var d = new Date(Number(v) * 1000);
    return pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }
  function fmtDatetime(v) {
    if (!v) { return "\u2013"; }
    var d = new Date(Number(v) * 1000);
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " + fmtClock(v);
  }
  function fmtText(v) {
    if (none(v)) { return "\u2013"; }
    if (typeof v === "boolean") { return v ? "yes" : "no"; }
    if (Array.isArray(v)) { return v.join(", ") || "\u2013"; }
    return String(v);
  }
  var FORMATS = {bytes: fmtBytes, count: fmtCount, rate: fmtRate, per_second: fmtPerSecond, percent: fmtPercent,
    seconds: fmtSeconds, clock: fmtClock, datetime: fmtDatetime, text: fmtText, state: fmtText,
    fraction: fmtPercent};
  function format(v, kind) { return (FORMATS[kind] || fmtText)(v); }

  // live values -----------------------------------------------------------------------------------------------
  var refreshing = false;

  function applyDocument(doc) {
    var restructure = false;
    $$("[data-field]").forEach(function (el) {
      var value = lookup(doc, el.getAttribute("data-field"));
      if (value === undefined) { return; }
      var raw = JSON.stringify(value);
      var kind = el.getAttribute("data-format") || "text";
      var before = el.getAttribute("data-value");
      if (before !== null) {
        try { if (JSON.stringify(JSON.parse(before)) === raw) { return; } } catch (e) { /* rewrite it */ }
      }
      el.setAttribute("data-value", raw);
      if (el.tagName === "PROGRESS") {
        el.value = Number(value) || 0;
        el.textContent = fmtPercent(value);
      } else {
        el.textContent = format(value, kind);
      }
      if (kind === "state") {
        el.setAttribute("data-state", none(value) ? "" : String(value));
        restructure = true;  // a job that ended loses its Cancel button, a failed one gains its error
      }
    });
    $$("[data-rows]").forEach(function (el) {
      var keys = JSON.stringify(rowKeys(lookup(doc, el.getAttribute("data-rows"))));
      var shown;
      try { shown = JSON.stringify(JSON.parse(el.getAttribute("data-keys") || "[]")); } catch (e) { shown = ""; }
      if (keys !== shown) { restructure = true; }
    });
    var banner = $("#banner");
    if (banner && doc.banner) { banner.setAttribute("data-level", doc.banner.level); }
    var last = $("#last-update");
    if (last) {
      last.setAttribute("data-time", String(doc.time));
      last.textContent = fmtClock(doc.time);
    }
    if (restructure) { refreshTables(); }
  }

  function refreshTables() {
    if (refreshing) { return; }
    refreshing = true;
    fetch(location.pathname, {credentials: "same-origin", headers: {Accept: "text/html"}})
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        if (html === null) { return; }
        var fresh = new DOMParser().parseFromString(html, "text/html");
        $$("[data-rows], datalist[id]").forEach(function (el) {
          var selector = el.hasAttribute("data-rows")
            ? '[data-rows="' + CSS.escape(el.getAttribute("data-rows")) + '"]' : "datalist#" + CSS.escape(el.id);
          var replacement = fresh.querySelector(selector);
          if (replacement) { el.replaceWith(document.importNode(replacement, true)); }
        });
      })
      .catch(function () { /* the next poll tries again */ })
      .then(function () { refreshing = false; });
  }

  // charts ----------------------------------------------------------------------------------------------------
  var samples = [];  // the history's samples, oldest first; the first poll fetches all the server keeps
  var maxSamples = 721;
  var charts = [];

  function chartKeys(spec) {
    var seen = {};
    var keys = [];
    samples.forEach(function (sample) {
      var group = sample[spec.source];
      if (!group || typeof group !== "object") { return; }
      Object.keys(group).forEach(function (key) {
        if (!seen[key]) { seen[key] = true; keys.push(key); }
      });
    });
    return keys;
  }

  function chartData(spec, keys) {
    var data = [samples.map(function (s) { return s.time; })];
    keys.forEach(function (key) {
      data.push(samples.map(function (s) {
        var group = s[spec.source];
        var value = group ? group[key] : undefined;
        if (spec.metric) { value = value && typeof value === "object" ? value[spec.metric] : undefined; }
        return typeof value === "number" ? value : null;
      }));
    });
    return data;
  }

  function axisValue(unit) {
    return function (u, values) {
      return values.map(function (v) {
        if (unit === "state") { return ["healthy", "degraded", "partitioned"][v] || ""; }
        // Ticks are round numbers: show them without the table's fixed decimals (0.25/s, not 0.3/s).
        if (unit === "per_second") { return Number(v.toPrecision(3)) + "/s"; }
        if (unit === "count") { return String(Number(v.toPrecision(3))); }
        if (unit === "percent") { return Number((v * 100).toPrecision(3)) + " %"; }
        return format(v, unit);
      });
    };
  }

  // Byte-valued axes step in binary multiples (1, 2, 4 ... KiB, MiB, ...), so their labels come out round.
  var BINARY_INCRS = [];
  for (var power = 0; power < 7; power++) {
    for (var step = 1; step < 1024; step *= 2) { BINARY_INCRS.push(step * Math.pow(1024, power)); }
  }

  // Time ticks as HH:MM:SS on one line: uPlot's default two-line date labels collide on narrow charts.
  function clockTicks(u, splits) {
    return splits.map(function (t) {
      var d = new Date(t * 1000);
      return [d.getHours(), d.getMinutes(), d.getSeconds()].map(function (n) { return n < 10 ? "0" + n : "" + n; })
        .join(":");
    });
  }

  function makePlot(spec, keys, data) {
    var unit = spec.unit;
    var binary = unit === "bytes" || unit === "rate";
    var options = {
      width: Math.max(spec.el.clientWidth, 200), height: 200,
      scales: {x: {time: true}, y: unit === "state" ? {range: [0, 2]} : unit === "percent" ? {range: [0, 1]} : {
        range: function (u, min, max) { return [0, max > 0 ? max * 1.1 : 1]; }}},
      axes: [{stroke: "#5f6b7a", grid: {stroke: "#eef0f3"}, values: clockTicks},
        {stroke: "#5f6b7a", grid: {stroke: "#eef0f3"}, size: unit === "state" ? 90 : 96, values: axisValue(unit),
          splits: unit === "state" ? function () { return [0, 1, 2]; } : undefined,
          incrs: binary ? BINARY_INCRS : undefined}],
      series: [{}].concat(keys.map(function (key, i) {
        return {label: key, stroke: COLORS[i % COLORS.length], width: 1.5, paths: unit === "state" ?
          uPlot.paths.stepped({align: 1}) : undefined, value: function (u, v) { return format(v, unit); }};
      })),
      legend: {show: true},
      cursor: {drag: {x: false, y: false}}
    };
    spec.el.textContent = "";
    return new uPlot(options, data, spec.el);
  }

  function drawChart(spec) {
    var keys = chartKeys(spec);
    var data = chartData(spec, keys);
    if (!spec.plot || JSON.stringify(keys) !== JSON.stringify(spec.keys)) {
      if (spec.plot) { spec.plot.destroy(); }
      spec.plot = makePlot(spec, keys, data);
      spec.keys = keys;
    } else {
      spec.plot.setData(data);
    }
    spec.el.setAttribute("data-points", String(data[0].length));
  }

  function setUpCharts() {
    if (typeof uPlot === "undefined") { return; }
    charts = $$("[data-chart]").map(function (el) {
      return {el: el, source: el.getAttribute("data-source"), metric: el.getAttribute("data-metric") || "",
        unit: el.getAttribute("data-unit") || "count", plot: null, keys: []};
    });
    charts.forEach(drawChart);
    var resizing = null;
    window.addEventListener("resize", function () {
      clearTimeout(resizing);
      resizing = setTimeout(function () {
        charts.forEach(function (spec) {
          if (spec.plot) { spec.plot.setSize({width: Math.max(spec.el.clientWidth, 200), height: 200}); }
        });
      }, 150);
    });
  }

  function addSamples(newer) {
    if (!newer || !newer.length) { return; }
    var newest = samples.length ? samples[samples.length - 1].time : -Infinity;
    newer.forEach(function (sample) { if (sample.time > newest) { samples.push(sample); newest = sample.time; } });
    if (samples.length > maxSamples) { samples.splice(0, samples.length - maxSamples); }
    charts.forEach(drawChart);
  }

  // polling ---------------------------------------------------------------------------------------------------
  var timer = null;

  function getJson(url) {
    return fetch(url, {credentials: "same-origin", headers: {Accept: "application/json"}}).then(function (response) {
      if (response.status === 401) { location.assign("/login"); throw new Error("signed out"); }
      if (!response.ok) { throw new Error("HTTP " + response.status); }
      return response.json();
    });
  }

  function poll() {
    clearTimeout(timer);
    var since = samples.length ? samples[samples.length - 1].time : 0;
    Promise.all([getJson("/api/v1/dashboard"), getJson("/api/v1/dashboard/history?since=" + since)])
      .then(function (answers) {
        var doc = answers[0];
        if (doc.sampling) {
          maxSamples = Math.max(2, Math.round(doc.sampling.history_seconds / doc.sampling.interval) + 1);
        }
        applyDocument(doc);
        addSamples(answers[1].samples);
      })
      .catch(function () { /* a blip: the next poll tries again */ })
      .then(function () { timer = setTimeout(poll, POLL_MS); });
  }

  // actions ---------------------------------------------------------------------------------------------------
  var pending = null;

  function flash(outcome, text) {
    var el = $("#flash");
    if (!el) { return; }
    el.setAttribute("data-outcome", outcome);
    el.textContent = text;
    el.hidden = false;
  }

  function confirmThen(text, action) {
    var dialog = $("#confirm");
    $("#confirm-text").textContent = text;
    pending = action;
    dialog.showModal();
  }

  function call(method, url, body, success) {
    flash("pending", "Working\u2026");
    var init = {method: method, credentials: "same-origin",
      headers: {"X-Atoll-CSRF": csrf(), Accept: "application/json"}};
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    fetch(url, init).then(function (response) {
      return response.json().catch(function () { return null; }).then(function (answer) {
        if (response.ok) {
          flash("ok", success(answer || {}));
        } else if (answer && answer.error) {
          flash("error", answer.error.message + " (" + answer.error.code + ")");
        } else {
          flash("error", "The server answered " + response.status + ".");
        }
      });
    }).catch(function () {
      flash("error", "The server did not answer.");
    }).then(function () { poll(); refreshTables(); });
  }

  function bucketPath(bucket) { return "/api/v1/buckets/" + encodeURIComponent(bucket); }
  function where(bucket, prefix) { return bucket + "/" + (prefix || ""); }

  function onClick(event) {
    var button = event.target.closest("button[data-action]");
    if (!button) { return; }
    event.preventDefault();
    var action = button.getAttribute("data-action");
    if (action === "drain-pause") {
      confirmThen("Pause the drain? Writes stay journaled on the warm tier and nothing is uploaded to the cold " +
        "stores until it is resumed.", function () {
        call("POST", "/api/v1/drain/pause", undefined, function () { return "The drain is paused."; });
      });
    } else if (action === "drain-resume") {
      confirmThen("Resume the drain? Journaled writes are uploaded to the cold stores again.", function () {
        call("POST", "/api/v1/drain/resume", undefined, function () { return "The drain is resumed."; });
      });
    } else if (action === "cancel-job") {
      var id = button.getAttribute("data-job-id");
      confirmThen("Cancel staging job " + id + "? Objects already staged stay on the warm tier.", function () {
        call("DELETE", "/api/v1/jobs/" + encodeURIComponent(id), undefined, function (job) {
          return "Job " + id + " is " + (job.state || "cancelled") + ".";
        });
      });
    }
  }

  function onSubmit(event) {
    var form = event.target.closest("form[data-action]");
    if (!form) { return; }
    event.preventDefault();
    var action = form.getAttribute("data-action");
    var bucket = (form.elements.bucket.value || "").trim();
    var prefix = form.elements.prefix ? form.elements.prefix.value : "";
    if (action === "start-stage") {
      var pin = form.elements.pin ? form.elements.pin.checked : false;
      confirmThen("Stage everything under " + where(bucket, prefix) + (pin ? " and pin it" : "") + "?", function () {
        call("POST", "/api/v1/jobs", {kind: "stage", bucket: bucket, prefix: prefix, pin: pin}, function (job) {
          return "Staging job " + job.id + " started.";
        });
      });
    } else if (action === "pin") {
      var body = {prefix: prefix};
      var seconds = form.elements.seconds ? form.elements.seconds.value.trim() : "";
      if (seconds) { body.seconds = Number(seconds); }
      confirmThen("Pin " + where(bucket, prefix) + (seconds ? " for " + seconds + " s" : " until unpinned") + "?",
        function () {
          call("POST", bucketPath(bucket) + "/pins", body, function (answer) {
            return "Pinned " + fmtCount(answer.objects) + " objects (" + fmtBytes(answer.bytes) + ") under " +
              where(bucket, prefix) + ".";
          });
        });
    } else if (action === "unpin") {
      confirmThen("Unpin " + where(bucket, prefix) + "? Its objects may then be evicted.", function () {
        call("DELETE", bucketPath(bucket) + "/pins?prefix=" + encodeURIComponent(prefix), undefined,
          function (answer) {
            return "Unpinned " + fmtCount(answer.objects) + " objects under " + where(bucket, prefix) + ".";
          });
      });
    }
  }

  function setUpDialog() {
    var dialog = $("#confirm");
    if (!dialog) { return; }
    $("#confirm-yes").addEventListener("click", function () {
      var action = pending;
      pending = null;
      dialog.close();
      if (action) { action(); }
    });
    $("#confirm-no").addEventListener("click", function () {
      pending = null;
      dialog.close();
    });
    dialog.addEventListener("cancel", function () { pending = null; });
  }

  function start() {
    var doc = readJson("dashboard-data");
    if (!doc) { return; }  // the sign-in page
    if (doc.sampling) {
      maxSamples = Math.max(2, Math.round(doc.sampling.history_seconds / doc.sampling.interval) + 1);
    }
    setUpDialog();
    document.addEventListener("click", onClick);
    document.addEventListener("submit", onSubmit);
    setUpCharts();
    poll();  // at once: the charts' history
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
}());
