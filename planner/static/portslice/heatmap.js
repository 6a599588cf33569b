/* portslice heatmap: draws the figure the server built, explains the cell under
 * the pointer, opens a slice's machine on click, keeps the zoom across modes and
 * refreshes utilization in place. No inline script: configuration comes from
 * data- attributes and JSON blocks (json_script), so a strict CSP holds. */
(function () {
  "use strict";

  var REFRESH_MS = 5000;
  var STATES = ["active", "draining"];
  var KINDS = {
    kept: "kept as it is",
    added: "added by this plan",
    draining: "starts draining in this plan",
    freed: "freed by this plan",
    revived: "given back to its owner",
    still_draining: "still draining"
  };
  var CONFIG = {
    displaylogo: false,
    responsive: true,
    modeBarButtonsToRemove: ["select2d", "lasso2d", "autoScale2d"],
    toImageButtonOptions: { filename: "portslice-heatmap" }
  };

  function number(n) { return Number(n).toLocaleString("en-US"); }
  function percent(v) { return (v * 100).toFixed(1) + "%"; }

  function Heatmap(root) {
    this.root = root;
    this.plot = root.querySelector(".heatmap-plot");
    this.tip = root.querySelector(".heatmap-tip");
    this.status = root.querySelector(".heatmap-status");
    this.form = root.querySelector("form.heatmap-controls");
    this.source = root.dataset.source || "";
    this.fixed = JSON.parse(root.dataset.fixed || "{}");
    this.timer = null;
    this.payload = null;
    this.byRow = [];
    this.bound = false;
  }

  Heatmap.prototype.params = function () {
    var params = new URLSearchParams();
    if (this.form) {
      new FormData(this.form).forEach(function (value, key) {
        if (value !== "" && value !== "auto") { params.set(key, value); }
      });
    }
    var fixed = this.fixed;
    Object.keys(fixed).forEach(function (key) { params.set(key, fixed[key]); });
    return params;
  };

  Heatmap.prototype.load = function () {
    var self = this;
    var params = self.params();
    clearTimeout(self.timer);
    return fetch(self.source + "?" + params.toString(), {
      credentials: "same-origin",
      headers: { Accept: "application/json" }
    }).then(function (response) {
      if (!response.ok) { throw new Error("the server answered " + response.status); }
      return response.json();
    }).then(function (payload) {
      self.draw(payload);
    }).catch(function (error) {
      self.say("Could not load the heatmap: " + error.message);
    }).then(function () {
      if (params.get("mode") === "utilization") {
        self.timer = setTimeout(function () { self.load(); }, REFRESH_MS);
      }
    });
  };

  Heatmap.prototype.say = function (text) {
    if (this.status) { this.status.textContent = text; }
  };

  Heatmap.prototype.draw = function (payload) {
    this.payload = payload;
    this.byRow = payload.rows.map(function () { return []; });
    var byRow = this.byRow;
    payload.slices.forEach(function (s) { byRow[s[0]].push(s); });
    var layout = payload.figure.layout;
    var p = this.params();
    // Same uirevision across modes: switching ownership/utilization keeps the zoom.
    layout.uirevision = [payload.collapsed, p.get("pool"), p.get("purpose"),
                         p.get("country"), p.get("ip")].join("|");
    // The same rows again (a refresh, the other mode): keep the x range the operator
    // chose, which the server's fitted range would otherwise replace.
    var shown = this.plot._fullLayout && this.plot.layout;
    if (shown && shown.uirevision === layout.uirevision && shown.xaxis && shown.xaxis.range) {
      layout.xaxis.range = shown.xaxis.range.slice();
    }
    Plotly.react(this.plot, payload.figure.data, layout, CONFIG);
    this.root.dataset.fit = payload.fit ? payload.fit.join("-") : "";
    // When the picture was drawn, in ms since the page's navigation: how long it took to settle.
    this.root.dataset.drawnMs = String(Math.round(performance.now()));
    this.syncWhole();
    this.highlight();
    this.root.dataset.rows = String(payload.rows.length);
    this.root.dataset.mode = payload.mode;
    this.root.dataset.collapsed = String(payload.collapsed);
    if (!this.bound) { this.bind(); }
    var when = new Date().toLocaleTimeString("en-GB");
    var rows = payload.collapsed ? payload.rows.length + " pools" : payload.rows.length + " IPs";
    this.say((payload.revision ? "revision " + payload.revision + " · " : "") + rows +
             (payload.mode === "utilization" ? " · updated " + when + ", every 5 s" : ""));
  };

  Heatmap.prototype.bind = function () {
    var self = this;
    self.bound = true;
    self.plot.on("plotly_hover", function (event) { self.hover(event); });
    self.plot.on("plotly_unhover", function () { self.tip.hidden = true; });
    self.plot.on("plotly_click", function (event) { self.click(event); });
    self.plot.on("plotly_relayout", function () { self.syncWhole(); });
    var whole = self.root.querySelector(".heatmap-whole");
    if (whole) {
      whole.addEventListener("click", function () { self.toggleWhole(whole); });
    }
    if (self.form) {
      self.form.addEventListener("change", function () { self.changed(); });
      self.form.addEventListener("submit", function (event) {
        event.preventDefault();
        self.changed();
      });
    }
  };

  // Search: a host name highlights its slices (the rest dimmed), an IP its row, and
  // ip:port also says who owns the port. The query comes from the form or ?highlight=.
  Heatmap.prototype.query = function () {
    var field = this.form && this.form.elements.highlight;
    var value = field ? field.value : new URLSearchParams(window.location.search).get("highlight");
    return (value || "").trim();
  };

  Heatmap.prototype.highlight = function () {
    var p = this.payload, q = this.query();
    var answer = this.root.querySelector(".heatmap-answer");
    var found = q ? this.find(q) : null;
    var shapes = [];
    if (found) {
      var trace = p.figure.data[0];
      var self = this;
      found.slices.forEach(function (s) {
        shapes.push(self.outline(s[0], s[1], s[2] + 1, trace));
      });
      found.rows.forEach(function (row) {
        shapes.push(self.outline(row, p.whole[0], p.whole[1], null));
      });
    }
    // Redraw only when there is something to outline or to clear: a picture without
    // a search settles with the one draw.
    if (shapes.length || this.outlined) {
      Plotly.relayout(this.plot, { shapes: shapes });
      Plotly.restyle(this.plot, { opacity: shapes.length ? 0.35 : 1 }, [0]);
    }
    this.outlined = shapes.length > 0;
    this.root.dataset.highlighted = String(found ? found.slices.length + found.rows.length : 0);
    if (answer) {
      answer.textContent = !q ? "" : (found ? found.text : (p.collapsed ?
        "One row per pool shows no slices: choose Rows “one per IP” to see “" + q + "”." :
        "“" + q + "” is not on this picture."));
      answer.hidden = !q;
    }
  };

  Heatmap.prototype.outline = function (row, x0, x1, trace) {
    var fill = "rgba(0,0,0,0)";
    if (trace && this.payload.mode === "ownership") {
      // The slice keeps its own colour at full strength while the rest is dimmed.
      var column = Math.max(0, this.payload.edges.findIndex(function (e) { return e > x0; }) - 1);
      var code = trace.z[row][column];
      var scale = trace.colorscale;
      if (typeof code === "number" && scale[code * 2]) { fill = scale[code * 2][1]; }
    }
    return { type: "rect", xref: "x", yref: "y", x0: x0, x1: x1, y0: row - 0.5, y1: row + 0.5,
             fillcolor: fill, line: { color: "#111", width: 2 }, layer: "above" };
  };

  Heatmap.prototype.find = function (q) {
    var p = this.payload;
    if (p.collapsed) { return null; }
    var match = /^\[?([0-9A-Fa-f:.]+?)\]?(?::(\d+))?$/.exec(q);
    var ip = match ? match[1] : "", port = match && match[2] !== undefined ? Number(match[2]) : null;
    var row = p.rows.findIndex(function (r) { return r.ip === ip; });
    if (row >= 0 && port === null) {
      return { slices: [], rows: [row], text: ip + ": its row is outlined." };
    }
    if (row >= 0) {
      var held = (this.byRow[row] || []).filter(function (s) { return s[1] <= port && s[2] >= port; });
      if (!held.length) {
        var column = p.edges.findIndex(function (e) { return e > port; }) - 1;
        var value = column >= 0 ? p.figure.data[0].z[row][column] : null;
        return { slices: [], rows: [row],
                 text: ip + ":" + port + " is not handed out: " + this.nobody(value) + "." };
      }
      var owner = p.machines[held[0][3]];
      var mine = this.slicesOf(owner);
      return { slices: mine, rows: [], text: ip + ":" + port + " belongs to " + owner +
               " (ports " + number(held[0][1]) + "–" + number(held[0][2]) + ", " + STATES[held[0][4]] +
               "); " + (mine.length === 1 ? "its slice is" : "its " + mine.length + " slices are") +
               " outlined, the others dimmed." };
    }
    var lower = q.toLowerCase();
    var names = p.machines.filter(function (m) { return m.toLowerCase() === lower; });
    if (!names.length) {
      names = p.machines.filter(function (m) { return m.toLowerCase().indexOf(lower) >= 0; });
    }
    if (names.length !== 1) {
      return names.length ? { slices: [], rows: [], text: names.length + " machines match “" + q +
        "”: type more of the name." } : null;
    }
    var slices = this.slicesOf(names[0]);
    return { slices: slices, rows: [], text: names[0] + ": " + slices.length + " slice" +
             (slices.length === 1 ? "" : "s") + " outlined, the others dimmed." };
  };

  Heatmap.prototype.slicesOf = function (name) {
    var index = this.payload.machines.indexOf(name);
    return this.payload.slices.filter(function (s) { return s[3] === index; });
  };

  // The button names the view it leads to, whatever zoomed last (a drag, a reset, a click).
  Heatmap.prototype.syncWhole = function () {
    var button = this.root.querySelector(".heatmap-whole");
    var p = this.payload;
    if (!button || !p) { return; }
    // Nothing to fit (no slice, or they fill the axis): the whole space is the view.
    button.hidden = !p.fit;
    var range = (this.plot._fullLayout && this.plot._fullLayout.xaxis.range) || [];
    var isWhole = range[0] <= p.whole[0] && range[1] >= p.whole[1];
    button.textContent = isWhole ? "Fit to the slices" : "Whole port space";
    button.setAttribute("aria-pressed", String(isWhole));
  };

  // One click between the whole port space and the fitted view the page opened on.
  Heatmap.prototype.toggleWhole = function (button) {
    var p = this.payload;
    if (!p) { return; }
    var showingWhole = button.getAttribute("aria-pressed") === "true";
    var target = showingWhole && p.fit ? p.fit : p.whole;
    Plotly.relayout(this.plot, { "xaxis.range": target.slice() });
  };

  Heatmap.prototype.changed = function () {
    if (this.root.dataset.syncUrl === "true") {
      var params = this.params();
      history.replaceState(null, "", "?" + params.toString());
    }
    this.load();
  };

  Heatmap.prototype.cell = function (event) {
    var point = event.points && event.points[0];
    if (!point || point.curveNumber !== 0 || !Array.isArray(point.pointNumber)) { return null; }
    return { row: point.pointNumber[0], column: point.pointNumber[1] };
  };

  Heatmap.prototype.slicesAt = function (row, lo, hi) {
    return (this.byRow[row] || []).filter(function (s) { return s[1] <= hi && s[2] >= lo; });
  };

  Heatmap.prototype.describe = function (row, column) {
    var p = this.payload;
    var info = p.rows[row];
    var lo = p.edges[column], hi = p.edges[column + 1] - 1;
    var value = p.figure.data[0].z[row][column];
    var ports = "ports " + number(lo) + "–" + number(hi);
    if (p.collapsed) {
      var share = value === null ? "free: nothing handed out here" :
        (value < 0 ? this.nobody(value) :
         (p.mode === "utilization" ? "use " + percent(value) :
          percent(value) + " of its " + info.ips + " IPs handed out"));
      return [info.pool_label + " (" + info.ips + " IPs)", ports, share, "click: show its IPs"];
    }
    var found = this.slicesAt(row, lo, hi);
    if (!found.length) {
      return [info.ip + " · " + info.pool_label, ports, "not handed out: " + this.nobody(value)];
    }
    var s = found[0];
    var lines = [
      info.ip + " · " + info.pool_label,
      "ports " + number(s[1]) + "–" + number(s[2]) + " (" + number(s[2] - s[1] + 1) + ")",
      "machine " + p.machines[s[3]],
      "state " + STATES[s[4]] + (s[5] ? ", drain ends " + s[5].replace("T", " ") : "")
    ];
    if (p.mode === "utilization") {
      lines.push(s[6] === null ? "use: no report yet" :
                 "use " + percent(s[6]) + " of the slice, " + percent(value) + " here");
    }
    if (s[7]) { lines.push("plan: " + (KINDS[s[7]] || s[7])); }
    if (found.length > 1) {
      var more = found.length - 1;
      lines.push("and " + more + " more slice" + (more === 1 ? "" : "s") + " in this column");
    }
    if (p.mode !== "diff" || s[7] !== "freed") { lines.push("click: open the machine"); }
    return lines;
  };

  Heatmap.prototype.nobody = function (value) {
    if (this.payload.mode === "utilization" || this.payload.collapsed) {
      if (value === null || value === undefined) { return "free"; }
      return value < -0.2 ? "unusable (outside the usable range or the slot grid)" :
        (value < -0.1 ? "reserved" : "no report yet");
    }
    if (value === 0) { return "unusable (outside the usable range or the slot grid)"; }
    return ["unusable", "reserved", "free"][value] || "free";
  };

  Heatmap.prototype.hover = function (event) {
    var cell = this.cell(event);
    if (!cell) { return; }
    var tip = this.tip;
    tip.textContent = "";
    this.describe(cell.row, cell.column).forEach(function (line, index) {
      var div = document.createElement("div");
      if (index === 0) { div.className = "tip-title"; }
      div.textContent = line;
      tip.appendChild(div);
    });
    var box = this.root.getBoundingClientRect();
    var x = event.event.clientX - box.left + 14, y = event.event.clientY - box.top + 14;
    tip.hidden = false;
    tip.style.left = Math.min(x, box.width - tip.offsetWidth - 4) + "px";
    tip.style.top = y + "px";
  };

  Heatmap.prototype.click = function (event) {
    var cell = this.cell(event);
    if (!cell) { return; }
    var p = this.payload;
    if (p.collapsed) {
      var info = p.rows[cell.row];
      if (this.form && this.form.elements.pool) {
        this.form.elements.pool.value = String(info.pool);
        this.form.elements.collapse.value = "0";
        this.changed();
      } else {
        window.location.assign("/pools/" + info.pool + "/");
      }
      return;
    }
    var found = this.slicesAt(cell.row, p.edges[cell.column], p.edges[cell.column + 1] - 1);
    var name = found.length ? p.machines[found[0][3]] : "";
    // A what-if machine exists only in the hypothetical plan: it has no page.
    if (found.length && found[0][7] !== "freed" && name.indexOf("what-if-") !== 0) {
      window.location.assign("/machines/" + encodeURIComponent(p.machines[found[0][3]]) + "/");
    }
  };

  function start(root) {
    var heatmap = new Heatmap(root);
    root.heatmap = heatmap;
    if (root.dataset.payload) {
      heatmap.draw(JSON.parse(document.getElementById(root.dataset.payload).textContent));
    } else {
      heatmap.load();
    }
  }

  function startCharts() {
    document.querySelectorAll("[data-figure]").forEach(function (element) {
      var figure = JSON.parse(document.getElementById(element.dataset.figure).textContent);
      Plotly.newPlot(element, figure.data, figure.layout, CONFIG);
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-heatmap]").forEach(start);
    startCharts();
  });
}());
