// VT.PGA dashboard: keeps the ten analyses, the recent transactions, the rule set in force,
// the latest reference changes (SPEC §11), the health figures and the live operator graph
// (issue 16) from the Server-Sent Events of /api/stream, and draws every chart in plain SVG.
// With a token on the server, a sign-in form asks for it once per tab: it is kept in
// sessionStorage and sent as "Authorization: Bearer", never in a URL (URLs end up in
// histories, logs and Referer headers). EventSource cannot send headers, so the stream is
// read with fetch() and its frames parsed here.
(function () {
  "use strict";

  var NAMES = ["status_counts", "value_histogram", "hour_histogram", "value_risk_distribution",
    "hour_risk_outcome", "state_approval", "insufficient_funds", "mode_rejections",
    "minute_frequency", "distance_band_outcome"];
  var STATUSES = ["invalid", "late", "duplicate", "unknown_reference", "stale",
    "insufficient_balance", "insufficient_limit", "rejected_risk", "approved"];
  var VALUE_BANDS = ["0-10", "10-50", "50-100", "100-500", "500-1000", "1000-5000", "5000-10000", "10000+"];
  var BAND_LABEL = { "0-10": "0", "10-50": "10", "50-100": "50", "100-500": "100",
    "500-1000": "500", "1000-5000": "1k", "5000-10000": "5k", "10000+": "10k+" };
  var DIST_BANDS = ["short", "medium_short", "medium_long", "long"];
  var DIST_LABEL = { short: "< 50 km", medium_short: "50–300 km", medium_long: "300–1000 km", long: "≥ 1000 km" };
  var DIST_COLOR = { short: "#38bdf8", medium_short: "#22c55e", medium_long: "#f59e0b", long: "#f97066" };
  var MODES = ["pix", "debito", "credito", "boleto"];
  var MODE_LABEL = { pix: "PIX", debito: "Débito", credito: "Crédito", boleto: "Boleto" };
  var C = {
    approved: "#22c55e", rejected: "#f97066", balance: "#f59e0b", limit: "#a78bfa",
    risk: "#f97066", accent: "#38bdf8", neutral: "#64748b"
  };
  var STATUS_COLOR = {
    invalid: "#475569", late: "#64748b", duplicate: "#7c8aa5", unknown_reference: "#94a3b8",
    stale: "#cbd5e1", insufficient_balance: C.balance, insufficient_limit: C.limit,
    rejected_risk: C.risk, approved: C.approved
  };
  var MINUTES_LINE = 120;   // minutes shown by chart 9
  var MINUTES_BARS = 20;    // minutes shown by chart 10
  var TABLE_ROWS = 30;
  var CONTROL_ROWS = 200;   // reference changes kept (the server keeps as many)
  var RULES_POLL_MS = 15000; // standalone: the rule set is read from /api/rules

  var TOKEN_KEY = "vtpga.token";
  var RECONNECT_MS = 2000;
  var token = null;
  try { token = sessionStorage.getItem(TOKEN_KEY); } catch (e) { token = null; }

  function authHeaders() {
    return token ? { Authorization: "Bearer " + token } : {};
  }

  // ---- state ----
  var rows = {};            // name -> Map(key -> row)
  var dirty = {};           // name -> true
  var recent = [];          // newest first
  var recentSeen = {};      // "partition:offset" -> true
  var freshKeys = {};
  var health = null;
  var rules = null;         // {in_force, pending}
  var rulesVersion = null;  // the version drawn last (to flash a change)
  var rulesTimer = null;    // standalone: polling /api/rules
  var standalone = false;   // the stream carries no live changes (a Redis mirror)
  var controls = [];        // reference changes, newest first
  var controlsSeen = {};    // "partition:offset" -> true
  var freshControls = {};
  var lastSeq = 0;
  var scheduled = false;
  NAMES.forEach(function (n) { rows[n] = new Map(); });

  function keyOf(name, r) {
    switch (name) {
      case "status_counts": return r.status;
      case "value_histogram": return r.band;
      case "hour_histogram": return String(r.hour);
      case "value_risk_distribution": return String(r.bucket);
      case "hour_risk_outcome": return String(r.hour_risk);
      case "state_approval": return r.uf;
      case "insufficient_funds": return r.reason;
      case "mode_rejections": return r.mode;
      case "minute_frequency": return r.minute;
      case "distance_band_outcome": return r.minute + "|" + r.band;
    }
    return JSON.stringify(r);
  }

  function isZero(r) {
    for (var k in r) {
      if (typeof r[k] === "number" && k !== "hour" && k !== "bucket" && k !== "hour_risk" && r[k] !== 0) return false;
    }
    return true;
  }

  function setAnalysis(name, list) {
    var m = new Map();
    (list || []).forEach(function (r) { m.set(keyOf(name, r), r); });
    rows[name] = m;
    dirty[name] = true;
  }

  function upsertRows(name, list) {
    var m = rows[name];
    list.forEach(function (r) {
      var k = keyOf(name, r);
      if (isZero(r)) m.delete(k); else m.set(k, r);
    });
    dirty[name] = true;
  }

  function txKey(t) { return t.partition + ":" + t.offset; }

  function addTransactions(list, replace) {
    if (replace) { recent = []; recentSeen = {}; }
    var fresh = [];
    for (var i = list.length - 1; i >= 0; i--) {   // oldest first
      var t = list[i], k = txKey(t);
      if (recentSeen[k]) continue;
      recentSeen[k] = true;
      fresh.push(t);
      if (!replace) freshKeys[k] = true;
    }
    recent = fresh.reverse().concat(recent);
    if (recent.length > 500) {
      recent.slice(500).forEach(function (t) { delete recentSeen[txKey(t)]; });
      recent.length = 500;
    }
    dirty.__recent = true;
  }

  // A control record's position identifies it: it is applied or rejected once.
  function addControls(list, replace) {
    if (replace) { controls = []; controlsSeen = {}; }
    var fresh = [];
    for (var i = list.length - 1; i >= 0; i--) {   // oldest first
      var c = list[i], k = txKey(c);
      if (controlsSeen[k]) continue;
      controlsSeen[k] = true;
      fresh.push(c);
      if (!replace) freshControls[k] = true;
    }
    controls = fresh.reverse().concat(controls);
    if (controls.length > CONTROL_ROWS) {
      controls.slice(CONTROL_ROWS).forEach(function (c) { delete controlsSeen[txKey(c)]; });
      controls.length = CONTROL_ROWS;
    }
    dirty.__controls = true;
  }

  function setRules(r) {
    rules = r ? { in_force: r.in_force, pending: r.pending || [] } : null;
    dirty.__rules = true;
  }

  // Standalone, the stream carries no rules (the server reads them from PostgreSQL).
  function fetchRules() {
    fetch("/api/rules", { headers: authHeaders(), cache: "no-store" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (b) { if (b && b.in_force) { setRules(b); schedule(); } })
      .catch(function () { /* shown as unknown */ });
  }

  function onSnapshot(d) {
    lastSeq = d.seq || 0;
    NAMES.forEach(function (n) { setAnalysis(n, (d.analyses || {})[n]); });
    addTransactions(d.transactions || [], true);
    addControls(d.controls || [], true);
    clearInterval(rulesTimer);
    rulesTimer = null;
    standalone = d.rules === null;
    if (d.rules) setRules(d.rules);
    else {
      setRules(null);
      fetchRules();
      rulesTimer = setInterval(fetchRules, RULES_POLL_MS);
    }
    health = d.health; dirty.__health = true;
    schedule();
  }

  function onChange(d) {
    if (d.seq && d.seq <= lastSeq) return;
    lastSeq = d.seq || lastSeq;
    var a = d.analyses || {};
    Object.keys(a).forEach(function (n) { if (rows[n]) setAnalysis(n, a[n]); });
    var mr = d.minute_rows || {};
    Object.keys(mr).forEach(function (n) { if (rows[n]) upsertRows(n, mr[n]); });
    if (d.transactions && d.transactions.length) addTransactions(d.transactions, false);
    if (d.controls && d.controls.length) addControls(d.controls, false);
    if (d.rules) setRules(d.rules);
    if (d.health) { health = d.health; dirty.__health = true; }
    schedule();
  }

  function onHealth(d) {
    if (d.health) { health = d.health; dirty.__health = true; schedule(); }
  }

  // ---- sign-in ----
  var signinWrap = document.getElementById("signin-wrap"), signinForm = document.getElementById("signin");
  var signinInput = document.getElementById("signin-token"), signinError = document.getElementById("signin-error");
  var signoutBtn = document.getElementById("signout");

  function showSignIn(message) {
    setConn("down", "sign in");
    signinError.textContent = message || "";
    signinWrap.hidden = false;
    signinInput.focus();
  }

  signinForm.addEventListener("submit", function (ev) {
    ev.preventDefault();   // the field has no name either: nothing of it can reach a URL
    token = signinInput.value;
    signinInput.value = "";
    try { sessionStorage.setItem(TOKEN_KEY, token); } catch (e) { /* kept in memory only */ }
    signinWrap.hidden = true;
    connect();
  });

  signoutBtn.addEventListener("click", function () {
    token = null;
    try { sessionStorage.removeItem(TOKEN_KEY); } catch (e) { /* nothing kept */ }
    clearTimeout(retryTimer);
    clearInterval(rulesTimer);
    rulesTimer = null;
    stopWhatif();
    var open = stream;
    stream = null;          // so that the aborted read does not reconnect
    if (open) open.abort();
    signoutBtn.hidden = true;
    showSignIn("");
  });

  // ---- connection ----
  var connEl = document.getElementById("conn"), connText = document.getElementById("conn-text");
  function setConn(cls, text) { connEl.className = "conn " + cls; connText.textContent = text; }

  var stream = null;        // the AbortController of the open stream
  var retryTimer = null;

  function dispatch(kind, data) {
    if (!data) return;
    var d;
    try { d = JSON.parse(data); } catch (e) { return; }
    if (kind === "snapshot") { setConn("live", "live"); onSnapshot(d); }
    else if (kind === "change") { setConn("live", "live"); onChange(d); }
    else if (kind === "health") { onHealth(d); }
    else if (kind === "dataflow") onDataflow(d);
  }

  // Server-Sent Events framing (the WHATWG "event stream" rules): lines end in CRLF, LF or
  // CR; "event:" names the event, "data:" lines join with LF, a blank line dispatches,
  // lines starting with ":" are comments (keep-alives).
  function readEvents(reader) {
    var decoder = new TextDecoder("utf-8");
    var buf = "", kind = "", data = [];
    function line(l) {
      if (l === "") {
        if (data.length) dispatch(kind || "message", data.join("\n"));
        kind = ""; data = [];
        return;
      }
      if (l.charAt(0) === ":") return;
      var i = l.indexOf(":"), field = i < 0 ? l : l.slice(0, i), value = i < 0 ? "" : l.slice(i + 1);
      if (value.charAt(0) === " ") value = value.slice(1);
      if (field === "event") kind = value;
      else if (field === "data") data.push(value);
    }
    function pump() {
      return reader.read().then(function (r) {
        if (r.done) return;
        buf += decoder.decode(r.value, { stream: true });
        var m, re = /\r\n|\n|\r(?!$)/g, start = 0;
        while ((m = re.exec(buf)) !== null) { line(buf.slice(start, m.index)); start = re.lastIndex; }
        buf = buf.slice(start);
        return pump();
      });
    }
    return pump();
  }

  function reconnectSoon() {
    clearTimeout(retryTimer);
    retryTimer = setTimeout(connect, RECONNECT_MS);
  }

  function connect() {
    clearTimeout(retryTimer);
    if (stream) stream.abort();
    fetchDataflow();
    startWhatif();
    var ctl = new AbortController();
    stream = ctl;
    fetch("/api/stream", { headers: authHeaders(), cache: "no-store", signal: ctl.signal })
      .then(function (resp) {
        if (resp.status === 401) {
          stream = null;
          signoutBtn.hidden = true;
          showSignIn(token ? "That token was not accepted." : "");
          return;
        }
        if (!resp.ok || !resp.body) throw new Error("stream: HTTP " + resp.status);
        signoutBtn.hidden = !token;
        return readEvents(resp.body.getReader()).then(function () {
          // The server closed the stream (a restart): come back.
          if (stream === ctl) { setConn("down", "reconnecting…"); reconnectSoon(); }
        });
      })
      .catch(function () {
        if (stream !== ctl) return;   // replaced or signed out
        setConn("down", "reconnecting…");
        reconnectSoon();
      });
  }

  // The footer's JSON links: with a token, a plain link would be refused, so they are
  // fetched with the header and shown from a blob: URL.
  document.querySelectorAll("footer a[data-api]").forEach(function (a) {
    a.addEventListener("click", function (ev) {
      if (!token) return;
      ev.preventDefault();
      var w = window.open("", "_blank");
      fetch(a.getAttribute("href"), { headers: authHeaders(), cache: "no-store" })
        .then(function (r) { return r.blob(); })
        .then(function (b) { if (w) w.location.href = URL.createObjectURL(b); })
        .catch(function () { if (w) w.close(); });
    });
  });

  // ---- formatting ----
  var nf = new Intl.NumberFormat("en-US");
  var cf = new Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 1 });
  function fmt(n) { return nf.format(n); }
  function compact(n) { return Math.abs(n) < 10000 ? nf.format(Math.round(n)) : cf.format(n); }
  function brl(cents) { return "R$ " + (Math.abs(cents) >= 1e7 ? cf.format(cents / 100) : nf.format(Math.round(cents / 100))); }
  function brlExact(cents) {
    return "R$ " + (cents / 100).toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
  }
  function pct(x) { return isFinite(x) ? (x * 100).toFixed(1) + "%" : "–"; }
  function esc(s) {
    return String(s).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }
  function ms(x) { return x == null ? "–" : (x < 10 ? x.toFixed(2) : x < 100 ? x.toFixed(1) : Math.round(x)) + " ms"; }
  function duration(s) {
    s = Math.floor(s || 0);
    var d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60), sec = s % 60;
    if (d) return d + "d " + h + "h";
    if (h) return h + "h " + m + "m";
    if (m) return m + "m " + sec + "s";
    return sec + "s";
  }
  function hhmm(minute) { return minute.slice(11, 16); }
  function when(msSinceEpoch) {
    if (msSinceEpoch == null) return "–";
    if (!msSinceEpoch) return "from the start";
    var d = new Date(msSinceEpoch);
    return isNaN(d.getTime()) ? String(msSinceEpoch) : d.toISOString().replace("T", " ").slice(0, 23) + "Z";
  }
  function span(msLength) {
    if (msLength == null) return "–";
    if (msLength >= 3600000 && msLength % 3600000 === 0) return fmt(msLength / 3600000) + " h";
    if (msLength >= 60000 && msLength % 60000 === 0) return fmt(msLength / 60000) + " min";
    if (msLength >= 1000 && msLength % 1000 === 0) return fmt(msLength / 1000) + " s";
    return fmt(msLength) + " ms";
  }
  function short(s, n) { s = String(s); return s.length > n ? s.slice(0, n - 1) + "…" : s; }

  // ---- SVG helpers ----
  function niceMax(v) {
    if (!(v > 0)) return 1;
    var p = Math.pow(10, Math.floor(Math.log10(v))), f = v / p;
    var n = f <= 1 ? 1 : f <= 2 ? 2 : f <= 2.5 ? 2.5 : f <= 5 ? 5 : 10;
    return n * p;
  }
  function width(el) { return Math.max(260, Math.floor(el.clientWidth || el.getBoundingClientRect().width || 360)); }
  function svg(w, h, body) {
    return '<svg viewBox="0 0 ' + w + " " + h + '" width="' + w + '" height="' + h + '" role="img">' + body + "</svg>";
  }
  function rect(x, y, w, h, color, title, extra) {
    if (!(h > 0) || !(w > 0)) return "";
    return '<rect class="bar" x="' + x.toFixed(1) + '" y="' + y.toFixed(1) + '" width="' + w.toFixed(1) +
      '" height="' + h.toFixed(1) + '" rx="2" fill="' + color + '"' + (extra || "") + "><title>" + esc(title) + "</title></rect>";
  }
  function text(x, y, s, anchor, cls) {
    return '<text x="' + x.toFixed(1) + '" y="' + y.toFixed(1) + '"' + (anchor ? ' text-anchor="' + anchor + '"' : "") +
      (cls ? ' class="' + cls + '"' : "") + ">" + esc(s) + "</text>";
  }
  function legend(items) {
    return '<div class="legend">' + items.map(function (it) {
      return '<span><i style="background:' + it[1] + '"></i>' + esc(it[0]) + "</span>";
    }).join("") + "</div>";
  }
  function yAxis(x0, x1, top, h, max, fmtTick) {
    var out = "";
    for (var i = 0; i <= 4; i++) {
      var v = max * i / 4, y = top + h - h * i / 4;
      out += '<line class="gridline" x1="' + x0 + '" x2="' + x1 + '" y1="' + y.toFixed(1) + '" y2="' + y.toFixed(1) + '"/>';
      out += text(x0 - 6, y + 3.5, (fmtTick || compact)(v), "end");
    }
    return out;
  }

  // Vertical bars: categories × series, grouped or stacked.
  function bars(el, opt) {
    var cats = opt.categories, series = opt.series, stacked = opt.stacked;
    var w = width(el), h = opt.height || 220, left = opt.left || 46, right = 8, top = 10, bottom = opt.bottom || 34;
    var ih = h - top - bottom, iw = w - left - right;
    var max = 0;
    cats.forEach(function (_, i) {
      if (stacked) {
        var s = 0; series.forEach(function (se) { s += se.values[i] || 0; }); max = Math.max(max, s);
      } else series.forEach(function (se) { max = Math.max(max, se.values[i] || 0); });
    });
    max = niceMax(max);
    var body = yAxis(left, w - right, top, ih, max, opt.tick);
    var slot = iw / cats.length, pad = Math.min(slot * 0.18, 10), bw = slot - 2 * pad;
    var every = Math.max(1, Math.ceil(cats.length * (opt.labelWidth || 34) / iw));
    cats.forEach(function (c, i) {
      var x = left + i * slot + pad, base = top + ih;
      if (stacked) {
        series.forEach(function (se) {
          var v = se.values[i] || 0, bh = ih * v / max;
          body += rect(x, base - bh, bw, bh, se.color, (opt.tipLabel ? opt.tipLabel(c) : c) + " · " + se.name + ": " + (opt.valueText || fmt)(v));
          base -= bh;
        });
      } else {
        var sw = bw / series.length;
        series.forEach(function (se, j) {
          var v = se.values[i] || 0, bh = ih * v / max;
          body += rect(x + j * sw, base - bh, Math.max(1, sw - 1), bh, se.color, (opt.tipLabel ? opt.tipLabel(c) : c) + " · " + se.name + ": " + (opt.valueText || fmt)(v));
        });
      }
      if (i % every === 0) body += text(x + bw / 2, top + ih + 15, opt.catLabel ? opt.catLabel(c) : c, "middle");
      if (opt.subLabel) body += text(x + bw / 2, top + ih + 29, opt.subLabel(c, i), "middle");
    });
    if (opt.xTitle) body += text(left + iw / 2, h - 3, opt.xTitle, "middle");
    el.innerHTML = svg(w, h, body) + (opt.legend === false ? "" : legend(series.map(function (s) { return [s.name, s.color]; })));
  }

  function empty(el, msg) {
    el.innerHTML = '<div class="empty">' + esc(msg || "waiting for assessed transactions…") + "</div>";
    el.removeAttribute("data-drawn");
  }
  function drawn(el) { el.setAttribute("data-drawn", "true"); }

  function get(name, key) { return rows[name].get(key); }

  // ---- the ten charts ----
  function drawStatus() {
    var el = document.getElementById("chart-status_counts");
    var counts = {}, total = 0;
    STATUSES.forEach(function (s) { var r = get("status_counts", s); counts[s] = r ? r.count : 0; total += counts[s]; });
    var rejected = counts.insufficient_balance + counts.insufficient_limit + counts.rejected_risk;
    var assessed = rejected + counts.approved;
    var approvedEl = document.getElementById("approved-count");
    approvedEl.textContent = fmt(counts.approved);
    approvedEl.setAttribute("data-value", String(counts.approved));
    document.getElementById("approved-rate").textContent = assessed ? pct(counts.approved / assessed) + " of assessed" : "–";
    document.getElementById("rejected-count").textContent = fmt(rejected);
    document.getElementById("unprocessed-count").textContent = fmt(total - assessed);
    document.getElementById("total-count").textContent = fmt(total);
    document.getElementById("total-sub").textContent = assessed ? fmt(assessed) + " assessed" : "decided";
    if (!total) { empty(el, "waiting for decisions…"); return; }
    // donut of the assessed outcomes
    var size = 170, r = 76, ri = 52, cx = size / 2, cy = size / 2, a0 = -Math.PI / 2, body = "";
    var parts = [["approved", counts.approved, C.approved], ["insufficient_balance", counts.insufficient_balance, C.balance],
      ["insufficient_limit", counts.insufficient_limit, C.limit], ["rejected_risk", counts.rejected_risk, C.risk]];
    if (!assessed) parts = [["none", 1, "#243149"]];
    var sum = parts.reduce(function (s, p) { return s + p[1]; }, 0);
    parts.forEach(function (p) {
      if (!p[1]) return;
      var frac = p[1] / sum, a1 = a0 + frac * 2 * Math.PI;
      if (frac >= 0.9999) a1 = a0 + 2 * Math.PI - 0.0001;
      var large = a1 - a0 > Math.PI ? 1 : 0;
      var d = "M" + (cx + r * Math.cos(a0)) + " " + (cy + r * Math.sin(a0)) +
        " A" + r + " " + r + " 0 " + large + " 1 " + (cx + r * Math.cos(a1)) + " " + (cy + r * Math.sin(a1)) +
        " L" + (cx + ri * Math.cos(a1)) + " " + (cy + ri * Math.sin(a1)) +
        " A" + ri + " " + ri + " 0 " + large + " 0 " + (cx + ri * Math.cos(a0)) + " " + (cy + ri * Math.sin(a0)) + " Z";
      body += '<path class="arc" d="' + d + '" fill="' + p[2] + '"><title>' + esc(p[0] + ": " + fmt(p[1]) + " (" + pct(frac) + ")") + "</title></path>";
      a0 = a1;
    });
    body += text(cx, cy + 2, assessed ? pct(counts.approved / assessed) : "–", "middle", "big");
    body += text(cx, cy + 20, "approved", "middle");
    var list = STATUSES.map(function (s) {
      return '<div><span><i style="display:inline-block;width:8px;height:8px;border-radius:2px;margin-right:6px;background:' +
        STATUS_COLOR[s] + '"></i>' + esc(s.replace(/_/g, " ")) + "</span><b>" + fmt(counts[s]) + "</b></div>";
    }).join("");
    el.innerHTML = '<div class="status-layout"><div class="donut">' + svg(size, size, body) + '</div><div class="statuses">' + list + "</div></div>";
    drawn(el);
  }

  function outcomeSeries(name, cats, keyFn) {
    var a = [], r = [];
    cats.forEach(function (c) { var row = get(name, keyFn ? keyFn(c) : c); a.push(row ? row.approved : 0); r.push(row ? row.rejected : 0); });
    return [{ name: "approved", color: C.approved, values: a }, { name: "rejected", color: C.rejected, values: r }];
  }

  function drawValueHistogram() {
    var el = document.getElementById("chart-value_histogram"), name = "value_histogram";
    if (!rows[name].size) return empty(el);
    bars(el, { categories: VALUE_BANDS, series: outcomeSeries(name, VALUE_BANDS), labelWidth: 38,
      catLabel: function (c) { return BAND_LABEL[c] || c; }, valueText: fmt,
      xTitle: "band, from (BRL)" , bottom: 44 });
    drawn(el);
  }

  function drawHourHistogram() {
    var el = document.getElementById("chart-hour_histogram"), name = "hour_histogram";
    if (!rows[name].size) return empty(el);
    var hours = []; for (var i = 0; i < 24; i++) hours.push(String(i));
    bars(el, { categories: hours, series: outcomeSeries(name, hours), stacked: true, labelWidth: 22,
      catLabel: function (c) { return c.length < 2 ? "0" + c : c; } });
    drawn(el);
  }

  function drawValueRisk() {
    var el = document.getElementById("chart-value_risk_distribution"), name = "value_risk_distribution";
    if (!rows[name].size) return empty(el);
    var cats = []; for (var i = 0; i <= 10; i++) cats.push(String(i));
    var top = document.createElement("div"), bottom = document.createElement("div");
    el.innerHTML = ""; el.appendChild(top); el.appendChild(bottom);
    bars(top, { categories: cats, series: outcomeSeries(name, cats), stacked: true, height: 150, legend: false, labelWidth: 20 });
    var aa = [], ra = [];
    cats.forEach(function (c) { var r = get(name, c); aa.push(r ? r.approved_amount_cents : 0); ra.push(r ? r.rejected_amount_cents : 0); });
    bars(bottom, { categories: cats, stacked: true, height: 140, labelWidth: 20, left: 58,
      tick: function (v) { return "R$" + cf.format(v / 100); }, valueText: brlExact,
      series: [{ name: "approved amount", color: "#15803d", values: aa }, { name: "rejected amount", color: "#c2410c", values: ra }],
      xTitle: "bucket (0 = no value risk)" });
    var lg = document.createElement("div");
    lg.innerHTML = legend([["approved", C.approved], ["rejected", C.rejected], ["approved R$", "#15803d"], ["rejected R$", "#c2410c"]]);
    var old = bottom.querySelector(".legend"); if (old) old.remove();
    el.appendChild(lg.firstChild);
    drawn(el);
  }

  // 100%-stacked horizontal bars with counts.
  function shareBars(el, cats, labels, series, opt) {
    var w = width(el), rowH = opt && opt.rowH || 34, left = opt && opt.left || 70, right = 64, top = 4;
    var h = top + cats.length * rowH + 4, iw = w - left - right, body = "";
    cats.forEach(function (c, i) {
      var total = 0; series.forEach(function (s) { total += s.values[i] || 0; });
      var y = top + i * rowH + 6, bh = rowH - 14, x = left;
      body += text(left - 8, y + bh / 2 + 4, labels[i], "end", "v");
      body += '<rect x="' + left + '" y="' + y + '" width="' + iw + '" height="' + bh + '" rx="3" fill="#1f2a40"/>';
      series.forEach(function (s) {
        var v = s.values[i] || 0, bw = total ? iw * v / total : 0;
        body += rect(x, y, bw, bh, s.color, labels[i] + " · " + s.name + ": " + fmt(v) + (total ? " (" + pct(v / total) + ")" : ""));
        if (bw > 44) body += text(x + bw / 2, y + bh / 2 + 4, pct(v / total), "middle", "v");
        x += bw;
      });
      body += text(w - right + 6, y + bh / 2 + 4, opt && opt.totalText ? opt.totalText(i, total) : compact(total), "start");
    });
    el.innerHTML = svg(w, h, body) + legend(series.map(function (s) { return [s.name, s.color]; }));
  }

  function drawHourRisk() {
    var el = document.getElementById("chart-hour_risk_outcome"), name = "hour_risk_outcome";
    if (!rows[name].size) return empty(el);
    var cats = ["0", "0.5", "1"];
    shareBars(el, cats, ["0.0 (07–21h)", "0.5 (06h, 22–23h)", "1.0 (00–05h)"], outcomeSeries(name, cats), { left: 118, rowH: 40 });
    drawn(el);
  }

  function drawStates() {
    var el = document.getElementById("chart-state_approval"), name = "state_approval";
    if (!rows[name].size) return empty(el);
    var list = Array.from(rows[name].values()).map(function (r) {
      var t = r.approved + r.rejected; return { uf: r.uf, a: r.approved, r: r.rejected, t: t, rate: t ? r.approved / t : 0 };
    }).filter(function (x) { return x.t > 0; });
    list.sort(function (x, y) { return y.rate - x.rate || y.t - x.t || (x.uf < y.uf ? -1 : 1); });
    var w = width(el), n = list.length, left = 34, right = 8, top = 16, bottom = 26, h = 230;
    var iw = w - left - right, ih = h - top - bottom, slot = iw / Math.max(n, 1), bw = Math.max(2, slot * 0.7);
    var lo = Math.min.apply(null, list.map(function (x) { return x.rate; }));
    var hi = Math.max.apply(null, list.map(function (x) { return x.rate; }));
    var step = lo > 0.7 ? 0.05 : 0.1;
    var floor = Math.max(0, Math.floor(lo / step - 0.5) * step), body = "";
    for (var v = floor; v <= 1.0001; v += step) {
      var y = top + ih - ih * (v - floor) / (1 - floor);
      body += '<line class="gridline" x1="' + left + '" x2="' + (w - right) + '" y1="' + y.toFixed(1) + '" y2="' + y.toFixed(1) + '"/>';
      body += text(left - 5, y + 3.5, Math.round(v * 100) + "%", "end");
    }
    var avgA = 0, avgT = 0;
    list.forEach(function (x, i) {
      avgA += x.a; avgT += x.t;
      var bh = ih * (x.rate - floor) / (1 - floor), xx = left + i * slot + (slot - bw) / 2;
      var hue = 30 + 110 * (hi > lo ? (x.rate - lo) / (hi - lo) : 1);
      body += rect(xx, top + ih - bh, bw, Math.max(bh, 1), "hsl(" + hue.toFixed(0) + ",65%,48%)",
        x.uf + ": " + pct(x.rate) + " approved (" + fmt(x.a) + " of " + fmt(x.t) + ")");
      body += text(xx + bw / 2, top + ih + 14, x.uf, "middle");
      if (slot > 26) body += text(xx + bw / 2, top + ih - bh - 4, Math.round(x.rate * 100) + "", "middle", "v");
    });
    if (avgT) {
      var avg = avgA / avgT, ay = top + ih - ih * (avg - floor) / (1 - floor);
      body += '<line x1="' + left + '" x2="' + (w - right) + '" y1="' + ay.toFixed(1) + '" y2="' + ay.toFixed(1) + '" stroke="#38bdf8" stroke-width="1.5" stroke-dasharray="5 4"><title>all states ' + pct(avg) + "</title></line>";
      document.getElementById("sub-state_approval").textContent = "Transaction region's UF, sorted by approval rate · dashed line: all states " + pct(avg);
    }
    el.innerHTML = svg(w, h, body);
    drawn(el);
  }

  function drawFunds() {
    var el = document.getElementById("chart-insufficient_funds"), name = "insufficient_funds";
    if (!rows[name].size) return empty(el, "no insufficient balance or limit yet…");
    var b = get(name, "insufficient_balance") || { count: 0, amount_cents: 0 };
    var l = get(name, "insufficient_limit") || { count: 0, amount_cents: 0 };
    var sc = get("status_counts", "approved"), approved = sc ? sc.count : 0;
    var tiles = '<div class="funds">' +
      '<div class="f"><span style="color:' + C.balance + '">● insufficient balance</span><b>' + fmt(b.count) + '</b><small>' + brl(b.amount_cents) + " refused</small></div>" +
      '<div class="f"><span style="color:' + C.limit + '">● insufficient limit</span><b>' + fmt(l.count) + '</b><small>' + brl(l.amount_cents) + " refused</small></div></div>";
    var holder = document.createElement("div");
    el.innerHTML = tiles; el.appendChild(holder);
    shareBars(holder, ["c", "a"], ["count", "amount"], [
      { name: "balance", color: C.balance, values: [b.count, b.amount_cents] },
      { name: "limit", color: C.limit, values: [l.count, l.amount_cents] }], { left: 60, rowH: 34,
      totalText: function (i, total) { return i ? brl(total) : compact(total); } });
    if (approved) holder.insertAdjacentHTML("beforeend", '<div class="legend">' + pct((b.count + l.count) / (b.count + l.count + approved)) + " of balance/limit checks refused</div>");
    drawn(el);
  }

  function drawModes() {
    var el = document.getElementById("chart-mode_rejections"), name = "mode_rejections";
    if (!rows[name].size) return empty(el);
    var series = outcomeSeries(name, MODES);
    bars(el, { categories: MODES, series: series, height: 214, bottom: 46, labelWidth: 50,
      catLabel: function (m) { return MODE_LABEL[m]; },
      subLabel: function (m, i) {
        var a = series[0].values[i], r = series[1].values[i];
        return a + r ? pct(r / (a + r)) + " rejected" : "";
      } });
    drawn(el);
  }

  function sortedMinutes(name) {
    return Array.from(rows[name].values()).sort(function (a, b) { return a.minute < b.minute ? -1 : a.minute > b.minute ? 1 : 0; });
  }

  function drawMinuteFrequency() {
    var el = document.getElementById("chart-minute_frequency"), name = "minute_frequency";
    if (!rows[name].size) return empty(el);
    var all = sortedMinutes(name), pts = all.slice(-MINUTES_LINE);
    var w = width(el), h = 210, left = 48, right = 12, top = 12, bottom = 28, iw = w - left - right, ih = h - top - bottom;
    var max = niceMax(Math.max.apply(null, pts.map(function (p) { return p.count; })));
    var body = yAxis(left, w - right, top, ih, max);
    var n = pts.length, step = n > 1 ? iw / (n - 1) : 0;
    var xy = pts.map(function (p, i) { return [left + (n > 1 ? i * step : iw / 2), top + ih - ih * p.count / max]; });
    var line = xy.map(function (q, i) { return (i ? "L" : "M") + q[0].toFixed(1) + " " + q[1].toFixed(1); }).join(" ");
    body += '<defs><linearGradient id="mf" x1="0" x2="0" y1="0" y2="1"><stop offset="0" stop-color="#38bdf8" stop-opacity=".35"/><stop offset="1" stop-color="#38bdf8" stop-opacity="0"/></linearGradient></defs>';
    if (n > 1) body += '<path d="' + line + " L" + xy[n - 1][0].toFixed(1) + " " + (top + ih) + " L" + xy[0][0].toFixed(1) + " " + (top + ih) + ' Z" fill="url(#mf)"/>';
    body += '<path d="' + line + '" fill="none" stroke="#38bdf8" stroke-width="2" stroke-linejoin="round"/>';
    var every = Math.max(1, Math.ceil(n * 44 / iw));
    pts.forEach(function (p, i) {
      if ((n - 1 - i) % every === 0) body += text(xy[i][0], top + ih + 16, hhmm(p.minute), "middle");
      body += '<circle cx="' + xy[i][0].toFixed(1) + '" cy="' + xy[i][1].toFixed(1) + '" r="' + (n <= 40 ? 3 : 1.6) + '" fill="#38bdf8"><title>' +
        esc(p.minute + ": " + fmt(p.count)) + "</title></circle>";
    });
    var last = pts[n - 1];
    body += text(xy[n - 1][0] - 4, xy[n - 1][1] - 8, fmt(last.count), "end", "v");
    el.innerHTML = svg(w, h, body);
    document.getElementById("sub-minute_frequency").textContent = "Assessed transactions per event-time minute (UTC) · " +
      (all.length > n ? "last " + n + " of " + all.length + " minutes" : all.length + " minute" + (all.length > 1 ? "s" : "")) +
      " · " + pts[0].minute.slice(0, 10);
    drawn(el);
  }

  function drawDistance() {
    var el = document.getElementById("chart-distance_band_outcome"), name = "distance_band_outcome";
    if (!rows[name].size) return empty(el);
    var byMinute = new Map();
    rows[name].forEach(function (r) {
      var m = byMinute.get(r.minute);
      if (!m) { m = {}; byMinute.set(r.minute, m); }
      m[r.band] = r;
    });
    var minutes = Array.from(byMinute.keys()).sort().slice(-MINUTES_BARS);
    var w = width(el), h = 230, left = 48, right = 8, top = 10, bottom = 30, iw = w - left - right, ih = h - top - bottom;
    var max = 0;
    minutes.forEach(function (m) {
      var a = 0, r = 0, b = byMinute.get(m);
      DIST_BANDS.forEach(function (d) { if (b[d]) { a += b[d].approved; r += b[d].rejected; } });
      max = Math.max(max, a, r);
    });
    max = niceMax(max);
    var body = yAxis(left, w - right, top, ih, max);
    var slot = iw / minutes.length, pad = Math.min(slot * 0.14, 8), bw = (slot - 2 * pad) / 2;
    var every = Math.max(1, Math.ceil(minutes.length * 44 / iw));
    minutes.forEach(function (m, i) {
      var b = byMinute.get(m), x = left + i * slot + pad;
      ["approved", "rejected"].forEach(function (o, j) {
        var base = top + ih;
        DIST_BANDS.forEach(function (d) {
          var v = b[d] ? b[d][o] : 0, bh = ih * v / max;
          body += rect(x + j * bw, base - bh, Math.max(1, bw - 1.5), bh, DIST_COLOR[d],
            hhmm(m) + " · " + o + " · " + DIST_LABEL[d] + ": " + fmt(v), o === "rejected" ? ' fill-opacity="0.55"' : "");
          base -= bh;
        });
      });
      if ((minutes.length - 1 - i) % every === 0) body += text(x + bw, top + ih + 15, hhmm(m), "middle");
    });
    el.innerHTML = svg(w, h, body) + legend(DIST_BANDS.map(function (d) { return [DIST_LABEL[d], DIST_COLOR[d]]; })
      .concat([["solid = approved, faded = rejected", "transparent"]]));
    drawn(el);
  }

  function drawRecent() {
    var tbody = document.querySelector("#recent tbody");
    var html = recent.slice(0, TABLE_ROWS).map(function (t) {
      var k = txKey(t), cls = freshKeys[k] ? ' class="fresh"' : "";
      var risk = t.risk != null ? '<span class="riskbar"><i style="width:' + Math.min(100, t.risk * 100).toFixed(0) + "%;background:" +
        (t.risk > 0.5 ? C.rejected : t.risk > 0 ? C.balance : C.approved) + '"></i></span>' + t.risk.toFixed(2) : "–";
      var f = function (x) { return x != null ? x.toFixed(2) : "–"; };
      var when = t.event_time ? t.event_time.slice(11, 23) : new Date(t.t).toISOString().slice(11, 23);
      return "<tr" + cls + ' title="' + esc(JSON.stringify(t)) + '"><td class="mono">' + esc(when) +
        '</td><td class="mono hide-sm">' + esc(t.id ? (t.id.length > 14 ? t.id.slice(0, 13) + "…" : t.id) : "–") +
        "</td><td>" + esc(t.mode ? MODE_LABEL[t.mode] || t.mode : "–") +
        '</td><td class="num">' + (t.amount_cents != null ? brlExact(t.amount_cents) : "–") +
        '</td><td><span class="badge ' + esc(t.status) + '">' + esc(t.status.replace(/_/g, " ")) +
        '</span></td><td class="num hide-sm">' + f(t.value_risk) + '</td><td class="num hide-sm">' + f(t.hour_risk) +
        '</td><td class="num hide-sm">' + f(t.distance_risk) + '</td><td class="num">' + risk +
        '</td><td class="mono hide-sm">' + esc(t.rules_version != null ? short(t.rules_version, 16) : "–") + "</td></tr>";
    }).join("");
    tbody.innerHTML = html || '<tr><td colspan="10" style="color:var(--muted);text-align:center;padding:18px">waiting for transactions…</td></tr>';
    freshKeys = {};
    document.getElementById("tx-sub").textContent = "Newest first, updated live · " + fmt(recent.length) + " kept, " + Math.min(TABLE_ROWS, recent.length) + " shown";
  }

  function drawRules() {
    var set = function (id, v) { document.getElementById(id).textContent = v; };
    var f = rules && rules.in_force;
    set("rules-version", f ? short(f.version, 40) : "–");
    document.getElementById("rules-version").title = f ? f.version : "";
    set("rules-since", f ? "in force since " + when(f.effective_ms) +
      (f.partition != null ? " · control " + f.partition + ":" + f.offset : " · initial set") : "not known");
    set("rules-threshold", f ? String(f.risk_threshold) : "–");
    set("rules-delay", f ? span(f.max_delay_ms) : "–");
    set("rules-window", f ? span(f.dedup_window_ms) : "–");
    var pend = rules ? rules.pending : [];
    document.getElementById("rules-pending").innerHTML = pend.length ? pend.slice(0, 5).map(function (p) {
      return '<span><span class="badge scheduled">pending</span> ' + esc(short(p.version, 24)) + " from " + esc(when(p.effective_ms)) +
        " · risk " + esc(String(p.risk_threshold)) + " · delay " + esc(span(p.max_delay_ms)) + " · window " + esc(span(p.dedup_window_ms)) + "</span>";
    }).join("") + (pend.length > 5 ? "<span>+" + (pend.length - 5) + " more</span>" : "") : "";
    var card = document.getElementById("rules-card");
    if (f && rulesVersion !== null && rulesVersion !== f.version) {
      card.classList.remove("rules-changed");
      void card.offsetWidth;   // restart the animation
      card.classList.add("rules-changed");
    }
    rulesVersion = f ? f.version : null;
  }

  function controlDetail(c) {
    if (c.outcome === "rejected") return c.error || "";
    var v = c.values || {};
    switch (c.type) {
      case "user": return (v.name || "") + " · region " + (v.region_id || "") + " · opening " + brlExact(v.balance_cents) + " · limit " + brlExact(v.credit_limit_cents);
      case "balance_adjustment": return (v.amount_cents > 0 ? "+" : "") + brlExact(v.amount_cents);
      case "region": return (v.name || "") + " · " + (v.uf || "") + " · " + v.lat + ", " + v.lon;
      case "rules": return "risk " + v.risk_threshold + " · delay " + span(v.max_delay_ms) + " · window " + span(v.dedup_window_ms);
    }
    return "";
  }

  function drawControls() {
    var tbody = document.querySelector("#controls tbody");
    var html = controls.map(function (c) {
      var k = txKey(c), cls = freshControls[k] ? ' class="fresh"' : "";
      var rejected = c.outcome === "rejected", detail = controlDetail(c);
      return "<tr" + cls + ' title="' + esc(JSON.stringify(c)) + '"><td class="mono">' + esc(when(c.effective_ms)) +
        '</td><td><span class="badge ' + (rejected ? "refused" : esc(c.outcome)) + '">' + esc(c.outcome) +
        "</span></td><td>" + esc(c.type ? c.type.replace(/_/g, " ") : "–") +
        '</td><td class="mono">' + esc(c.id != null ? short(c.id, 24) : "–") +
        '</td><td class="hide-sm' + (rejected ? " err" : "") + '">' + esc(short(detail, 160)) + "</td></tr>";
    }).join("");
    tbody.innerHTML = html || '<tr><td colspan="5" style="color:var(--muted);text-align:center;padding:18px">' +
      (standalone ? "shown by the pipeline's own dashboard (this server mirrors Redis)" : "no reference changes yet…") + "</td></tr>";
    freshControls = {};
    var refused = controls.filter(function (c) { return c.outcome === "rejected"; }).length;
    document.getElementById("controls-sub").textContent = "Newest first, updated live · " + fmt(controls.length) + " kept" +
      (refused ? ", " + fmt(refused) + " refused" : "");
  }

  function drawHealth() {
    if (!health) return;
    var set = function (id, v) { document.getElementById(id).textContent = v; };
    set("h-rate", health.tx_per_s != null ? compact(health.tx_per_s) : "–");
    set("h-p50", health.latency_ms ? ms(health.latency_ms.p50) : "–");
    set("h-p99", health.latency_ms ? ms(health.latency_ms.p99) : "–");
    set("h-lag", health.consumer_lag != null ? compact(health.consumer_lag) : "–");
    set("h-workers", health.workers != null ? String(health.workers) : "–");
    set("h-uptime", duration(health.uptime_s));
    set("h-time", health.closed_time_ms ? new Date(health.closed_time_ms).toISOString().slice(11, 19) + "Z" : "–");
    if (health.redis && !health.redis.connected) setConn("down", "Redis unreachable");
  }

  // ---- what-if: shadow rule sets (SPEC §12) ----
  // /api/whatif is polled once a second while the page is visible (the stream does not
  // carry it). Each shadow decides every message again under its own rule set; its rows
  // pair the status of record with the shadow's, one row per (primary, shadow) pair, so
  // every message is in exactly one row. The card stays hidden while there is no shadow.
  var WHATIF_POLL_MS = 1000;
  var WHATIF_TIMEOUT_MS = 10000;
  var WHATIF_404_SKIP = 14;     // no /api/whatif on this server: ask again every ~15 s
  var ASSESSED = { approved: true, insufficient_balance: true, insufficient_limit: true, rejected_risk: true };
  var HAS_BIG = typeof BigInt === "function";
  var wiData = null;            // the latest payload, not yet drawn
  var wiTimer = null;
  var wiBusy = false;           // a request is in flight
  var wiSkip = 0;               // ticks to skip (after a 404)
  var wiUpdates = 0;

  function startWhatif() {
    if (!wiTimer) wiTimer = setInterval(pollWhatif, WHATIF_POLL_MS);
    wiSkip = 0;
    pollWhatif();
  }

  function stopWhatif() {
    clearInterval(wiTimer);
    wiTimer = null;
  }

  // Cents sums beyond 2^53 stay exact: long integer literals are read as strings, then
  // summed as BigInt where the browser has it.
  function wiParse(text) {
    return JSON.parse(text.replace(/("amount_cents"\s*:\s*)(-?\d{16,})(?=\s*[,}\]])/g, '$1"$2"'));
  }
  function big(x) {
    if (!HAS_BIG) return Number(x) || 0;
    if (typeof x === "string" && /^-?\d+$/.test(x)) return BigInt(x);
    var n = Math.round(Number(x));
    return isFinite(n) ? BigInt(n) : BigInt(0);
  }
  function intStr(x) {
    if (typeof x === "bigint") return x.toString();
    return Math.abs(x) < 1e21 ? Number(x).toFixed(0) : String(x);
  }
  // "R$ 1,234.56" from an integer of cents, exactly.
  function centsText(x) {
    var s = intStr(x), neg = s.charAt(0) === "-";
    if (neg) s = s.slice(1);
    if (!/^\d+$/.test(s)) return "R$ " + s;
    while (s.length < 3) s = "0" + s;
    var reais = s.slice(0, -2).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
    return (neg ? "−" : "") + "R$ " + reais + "." + s.slice(-2);
  }
  function shellWord(s) {
    s = String(s);
    return /^[A-Za-z0-9._:@%+=,\/-]+$/.test(s) ? s : "'" + s.replace(/'/g, "'\\''") + "'";
  }
  function numWord(x) { return typeof x === "number" && isFinite(x) ? String(x) : shellWord(x); }

  function pollWhatif() {
    if (wiBusy || document.hidden) return;
    if (wiSkip > 0) { wiSkip--; return; }
    wiBusy = true;
    var ctl = typeof AbortController === "function" ? new AbortController() : null;
    var killer = ctl ? setTimeout(function () { ctl.abort(); }, WHATIF_TIMEOUT_MS) : null;
    fetch("/api/whatif", { headers: authHeaders(), cache: "no-store", signal: ctl ? ctl.signal : undefined })
      .then(function (r) {
        if (r.status === 401 || r.status === 403) { stopWhatif(); onWhatif(null); return null; }   // connect() starts it again after sign-in
        if (r.status === 404) { wiSkip = WHATIF_404_SKIP; onWhatif(null); return null; }
        if (!r.ok) return null;                                     // next tick
        return r.text();
      })
      .then(function (t) { if (t != null) onWhatif(wiParse(t)); })
      .catch(function () { /* next tick */ })
      .then(function () { clearTimeout(killer); wiBusy = false; });
  }

  document.addEventListener("visibilitychange", function () { if (!document.hidden && wiTimer) pollWhatif(); });

  function onWhatif(b) {
    var list = b && Array.isArray(b.shadows) ? b.shadows : [];
    if (!list.length) {
      document.getElementById("whatif-card").hidden = true;
      wiData = null;
      return;
    }
    wiData = list;
    dirty.__whatif = true;
    schedule();
  }

  // The figures of one shadow from its rows.
  function wiSummary(rowsIn) {
    var s = { total: 0, changed: 0, blocked: 0, blockedCents: big(0), released: 0, releasedCents: big(0),
      pa: 0, pAssessed: 0, sa: 0, sAssessed: 0, pairs: [] };
    rowsIn.forEach(function (r) {
      var n = Number(r.count) || 0, p = r.primary_status, q = r.shadow_status;
      s.total += n;
      if (ASSESSED[p]) s.pAssessed += n;
      if (ASSESSED[q]) s.sAssessed += n;
      if (p === "approved") s.pa += n;
      if (q === "approved") s.sa += n;
      if (p === q) return;
      s.changed += n;
      s.pairs.push(r);
      if (p === "approved") { s.blocked += n; s.blockedCents += big(r.amount_cents); }
      else if (q === "approved") { s.released += n; s.releasedCents += big(r.amount_cents); }
    });
    s.pairs.sort(function (x, y) {
      return (Number(y.count) || 0) - (Number(x.count) || 0) ||
        STATUSES.indexOf(x.primary_status) - STATUSES.indexOf(y.primary_status) ||
        STATUSES.indexOf(x.shadow_status) - STATUSES.indexOf(y.shadow_status);
    });
    return s;
  }

  function statusBadge(st) {
    return '<span class="badge ' + esc(st) + '">' + esc(String(st).replace(/_/g, " ")) + "</span>";
  }

  function wiPanel(sh) {
    var r = sh.rules || {}, version = sh.version != null ? String(sh.version) : String(r.version || "");
    var s = wiSummary(Array.isArray(sh.what_if) ? sh.what_if : []);
    var cmd = "vtpga control rules " + (version.charAt(0) === "-" ? "--version=" + shellWord(version) : "--version " + shellWord(version)) +
      " --risk-threshold " + numWord(r.risk_threshold) + " --max-delay-ms " + numWord(r.max_delay_ms) +
      " --dedup-window-ms " + numWord(r.dedup_window_ms);
    var promote = "vtpga control rules " + (version.charAt(0) === "-" ? "--from-shadow=" + shellWord(version) : "--from-shadow " + shellWord(version)) +
      " --api " + shellWord(location.origin);
    var rateOf = function (a, t) { return t ? pct(a / t) : "–"; };
    var html = '<div class="wi-head"><b class="mono" title="' + esc(version) + '">' + esc(short(version, 48)) + "</b>" +
      '<span class="wi-params">risk threshold <b>' + esc(r.risk_threshold != null ? String(r.risk_threshold) : "–") + "</b>" +
      " · max delay <b>" + esc(span(r.max_delay_ms)) + "</b> · dedup window <b>" + esc(span(r.dedup_window_ms)) + "</b></span>" +
      '<span class="wi-decided">' + fmt(Number(sh.decided) || 0) + " decided</span></div>";
    html += '<div class="wi-figs">' +
      '<div class="wi-fig block"><span>approvals it would block</span><b class="wi-approved-to-rejected" data-value="' + s.blocked + '">' + fmt(s.blocked) +
        '</b><small class="wi-blocked-amount" data-value="' + intStr(s.blockedCents) + '">' + esc(centsText(s.blockedCents)) + "</small></div>" +
      '<div class="wi-fig release"><span title="messages not approved of record that this set would approve">approvals it would add</span><b class="wi-rejected-to-approved" data-value="' + s.released + '">' + fmt(s.released) +
        '</b><small class="wi-released-amount" data-value="' + intStr(s.releasedCents) + '">' + esc(centsText(s.releasedCents)) + "</small></div>" +
      '<div class="wi-fig"><span>decisions changed</span><b class="wi-changed" data-value="' + s.changed + '">' + fmt(s.changed) +
        "</b><small>" + (s.total ? pct(s.changed / s.total) + " of messages" : "–") + "</small></div>" +
      '<div class="wi-fig"><span>messages compared</span><b class="wi-total" data-value="' + s.total + '">' + fmt(s.total) +
        "</b><small>approved " + rateOf(s.pa, s.pAssessed) + " of record → " + rateOf(s.sa, s.sAssessed) + " shadow (of assessed)</small></div>" +
      "</div>";
    var body = s.pairs.map(function (p) {
      var n = Number(p.count) || 0;
      return '<tr data-primary="' + esc(p.primary_status) + '" data-shadow="' + esc(p.shadow_status) + '" data-count="' + n +
        '" data-amount="' + esc(intStr(big(p.amount_cents))) + '"><td>' + statusBadge(p.primary_status) + '</td><td><span class="wi-arrow">→</span>' +
        statusBadge(p.shadow_status) + '</td><td class="num">' + fmt(n) + '</td><td class="num">' + esc(centsText(big(p.amount_cents))) + "</td></tr>";
    }).join("");
    html += '<div class="tablewrap short"><table class="tx wi-pairs"><thead><tr><th>of record</th><th>shadow</th><th class="num">count</th><th class="num">amount</th></tr></thead><tbody>' +
      (body || '<tr class="wi-empty"><td colspan="4">' + (s.total ? "no decision differs: this set decides every message as the record does" : "no message decided yet…") + "</td></tr>") +
      "</tbody></table></div>";
    html += '<div class="wi-help"><p>A shadow\'s decisions are never decisions of record: they reach no topic and move no balance. ' +
      "To promote this set, publish it as a <code>rules</code> control record (it then applies to messages from its arrival, or <code>--effective-from</code>, on; " +
      "the version must not have been used before; <code>--version</code> gives another). The command reads this set from this pipeline's API:</p>" +
      '<div class="wi-cmd wi-promote"><code class="mono">' + esc(promote) + '</code><button type="button" class="wi-copy" data-cmd="' + esc(promote) + '">copy</button></div>' +
      "<p>or, with its parameters spelled out:</p>" +
      '<div class="wi-cmd"><code class="mono">' + esc(cmd) + '</code><button type="button" class="wi-copy" data-cmd="' + esc(cmd) + '">copy</button></div>' +
      '<p class="wi-links"><a href="/api/shadows/' + esc(encodeURIComponent(version)) + '/analyses" data-api>its ten analyses (JSON)</a></p></div>';
    return html;
  }

  function drawWhatif() {
    var list = wiData;
    if (!list) return;
    wiData = null;
    var card = document.getElementById("whatif-card"), box = document.getElementById("whatif-shadows");
    var old = {};
    Array.prototype.forEach.call(box.children, function (el) { old[el.getAttribute("data-version")] = el; });
    var seen = {}, i = 0;
    list.forEach(function (sh) {
      var version = sh.version != null ? String(sh.version) : String((sh.rules || {}).version || "");
      if (seen[version]) return;
      seen[version] = true;
      var el = old[version];
      if (!el) {
        el = document.createElement("section");
        el.className = "wi-shadow";
        el.setAttribute("data-version", version);
      }
      if (box.children[i] !== el) box.insertBefore(el, box.children[i] || null);
      i++;
      var html = wiPanel(sh);
      if (el._wiHtml !== html) {   // unchanged figures leave the panel (and a selection in it) alone
        var wrap = el.querySelector(".tablewrap"), left = wrap ? wrap.scrollLeft : 0, top = wrap ? wrap.scrollTop : 0;
        el.innerHTML = html;
        el._wiHtml = html;
        wrap = el.querySelector(".tablewrap");
        if (wrap) { wrap.scrollLeft = left; wrap.scrollTop = top; }
      }
    });
    Object.keys(old).forEach(function (v) { if (!seen[v] && old[v].parentNode === box) box.removeChild(old[v]); });
    var n = box.children.length;
    document.getElementById("whatif-sub").textContent = n + " shadow rule set" + (n === 1 ? "" : "s") +
      ": the same messages decided again as if each set had been in force from the start, compared with the decisions of record · updated every second";
    card.hidden = false;
    wiUpdates++;
    card.setAttribute("data-updates", String(wiUpdates));
    card.setAttribute("data-drawn", "true");
  }

  // Copy the command; links to JSON go with the token, as the footer's do.
  document.getElementById("whatif-card").addEventListener("click", function (ev) {
    var t = ev.target;
    var btn = t && t.closest ? t.closest(".wi-copy") : null;
    if (btn) {
      var cmd = btn.getAttribute("data-cmd"), code = btn.parentNode.querySelector("code");
      var done = function () { btn.textContent = "copied"; setTimeout(function () { btn.textContent = "copy"; }, 1500); };
      var select = function () {
        var range = document.createRange(), sel = window.getSelection();
        range.selectNodeContents(code); sel.removeAllRanges(); sel.addRange(range);
        btn.textContent = "selected";
        setTimeout(function () { btn.textContent = "copy"; }, 1500);
      };
      if (navigator.clipboard && window.isSecureContext) navigator.clipboard.writeText(cmd).then(done, select);
      else select();
      return;
    }
    var a = t && t.closest ? t.closest("a[data-api]") : null;
    if (!a || !token) return;
    ev.preventDefault();
    var w = window.open("", "_blank");
    fetch(a.getAttribute("href"), { headers: authHeaders(), cache: "no-store" })
      .then(function (r) { return r.blob(); })
      .then(function (b) { if (w) w.location.href = URL.createObjectURL(b); })
      .catch(function () { if (w) w.close(); });
  });

  // ---- the operator graph (issue 16) ----
  // /api/dataflow and the stream's `dataflow` events carry the timely operators and their
  // channels with figures over the last window (about a second). The layout — layers left
  // to right along the data path, the feedback edges left out of the layering and drawn as
  // back arcs — is computed once per graph shape; each payload then only updates colours,
  // widths and figures in place, so nothing flickers.
  var SVGNS = "http://www.w3.org/2000/svg";
  var DF_MAJOR = /^(FeedSource|Dedup|Decide|Tally|BatchSink|Arrange|Users|Regions|Rules|RouteControl|CountTotal|Feedback|Join)/;
  var DF_HEAT = [[0, [27, 37, 56]], [0.25, [44, 62, 120]], [0.5, [126, 48, 120]], [0.72, [214, 72, 38]], [1, [251, 176, 36]]];
  var DF_FONT = { name: "600 10.5px", fig: "9.5px", helper: "9px" };
  var DF_GAP = 24;           // horizontal room between two layers, for the edges
  var DF_NAME_MAX = 84;      // wider names of the named stages wrap onto two lines
  var dfData = null;         // the latest payload, not yet drawn
  var dfView = null;         // the drawn graph: key, layout, element handles, latest figures
  var dfUpdates = 0;
  var dfHover = null, dfPinned = null;
  var dfCtx = null, dfFamily = null;

  function onDataflow(d) {
    if (!d || !Array.isArray(d.operators)) return;
    dfData = d;
    document.getElementById("dataflow-card").hidden = false;
    dirty.__dataflow = true;
    schedule();
  }

  // Once at the start (and after signing in), so the graph shows before the first event.
  function fetchDataflow() {
    fetch("/api/dataflow", { headers: authHeaders(), cache: "no-store" })
      .then(function (r) {
        if (r.status === 404 && !dfView && !dfData) document.getElementById("dataflow-card").hidden = true;
        return r.ok ? r.json() : null;
      })
      .then(function (b) { if (b) onDataflow(b); })
      .catch(function () { /* the stream brings it */ });
  }

  function textW(s, font) {
    if (!dfCtx) {
      dfCtx = document.createElement("canvas").getContext("2d");
      dfFamily = getComputedStyle(document.body).fontFamily || "sans-serif";
    }
    dfCtx.font = font + " " + dfFamily;
    return dfCtx.measureText(s).width;
  }

  function heat(t) {
    t = Math.max(0, Math.min(1, t));
    for (var i = 1; i < DF_HEAT.length; i++) {
      if (t <= DF_HEAT[i][0] || i === DF_HEAT.length - 1) {
        var a = DF_HEAT[i - 1], b = DF_HEAT[i], f = (t - a[0]) / (b[0] - a[0]);
        return "rgb(" + a[1].map(function (c, k) { return Math.round(c + (b[1][k] - c) * f); }).join(",") + ")";
      }
    }
    return "rgb(27,37,56)";
  }
  // A share of the busy time onto the colour scale: 50% and more is the hottest.
  function heatOf(share) { return heat(Math.sqrt(Math.max(0, share) / 0.5)); }
  function edgeWidth(rps) { return Math.min(8, 0.8 + 1.3 * Math.log10(1 + Math.max(0, rps || 0))); }
  function rate(x) { return (x >= 100 ? compact(x) : x >= 10 ? x.toFixed(0) : x > 0 ? x.toFixed(1) : "0") + "/s"; }
  function usMs(us) { return us >= 1e6 ? (us / 1e6).toFixed(us >= 1e7 ? 0 : 1) + " s" : us >= 1000 ? ms(us / 1000) : Math.round(us) + " µs"; }
  function fig4(o) { return o || { activations: 0, elapsed_us: 0, records_in: 0, records_out: 0 }; }

  // Splits a long name in two where the widths are most even (at a space or a capital).
  function splitName(name, font) {
    if (textW(name, font) <= DF_NAME_MAX) return [name];
    var best = null, bw = Infinity;
    for (var i = 1; i < name.length; i++) {
      var c = name.charAt(i), p = name.charAt(i - 1);
      if (!(p === " " || (/[A-Z]/.test(c) && /[a-z]/.test(p)))) continue;
      var w = Math.max(textW(name.slice(0, i), font), textW(name.slice(i), font));
      if (w < bw) { bw = w; best = i; }
    }
    return best ? [name.slice(0, best), name.slice(best)] : [name];
  }

  // The graph's shape: what decides whether the layout is computed again.
  function dfKey(d) {
    return d.operators.map(function (o) { return o.id + ":" + o.name + ":" + (o.workers || []).map(function (w) { return w.worker; }).join("."); }).join(",") +
      "|" + (d.edges || []).map(function (e) { return e.id + ":" + e.from + ">" + e.to + (e.feedback ? "f" : ""); }).join(",");
  }

  // Layered (Sugiyama) layout: longest-path layers over the edges that are not feedback
  // (nor close another cycle), sources moved up to their first consumer, a dummy vertex
  // where an edge crosses a layer, barycenter sweeps against crossings, then each layer's
  // heights by a weighted isotonic fit to its neighbours (long edges kept straight).
  function dfLayout(d) {
    var V = [], byId = {};
    d.operators.forEach(function (o) {
      var major = DF_MAJOR.test(o.name) || !!o.arrangement, v = { id: String(o.id), op: o, real: true, major: major,
        layer: 0, preds: [], succs: [], predW: [], succW: [], nw: (o.workers || []).length };
      if (major) {
        v.lines = splitName(o.name, DF_FONT.name);
        var nameW = Math.max.apply(null, v.lines.map(function (l) { return textW(l, DF_FONT.name); }));
        v.w = Math.ceil(Math.max(58, nameW + 14, textW("00.0%", DF_FONT.fig) + 14, v.nw * 9 + 14));
        v.h = 7 + v.lines.length * 12 + 12 + 11;
        v.pw = v.w / 2;
      } else {
        // a helper is a dot with its name above or below (alternating by layer, so that the
        // names of neighbouring layers, which may overhang their column, do not collide)
        v.textW = textW(o.name, DF_FONT.helper);
        v.w = Math.ceil(Math.max(16, v.textW - 26));
        v.h = 34;
        v.pw = 7;
      }
      byId[v.id] = v; V.push(v);
    });
    var edges = (d.edges || []).filter(function (e) { return byId[e.from] && byId[e.to]; });
    var back = {}, outs = {};
    V.forEach(function (v) { outs[v.id] = []; });
    edges.forEach(function (e) {
      if (e.feedback || e.from === e.to) back[e.id] = true;
      else outs[e.from].push(e);
    });
    var incoming = {};
    edges.forEach(function (e) { if (!back[e.id]) incoming[e.to] = true; });
    var state = {};
    function dfs(id) {
      state[id] = 1;
      outs[id].forEach(function (e) {
        if (state[e.to] === 1) back[e.id] = true;
        else if (!state[e.to]) dfs(String(e.to));
      });
      state[id] = 2;
    }
    V.forEach(function (v) { if (!incoming[v.id]) dfs(v.id); });
    V.forEach(function (v) { if (!state[v.id]) dfs(v.id); });
    var fwd = edges.filter(function (e) { return !back[e.id]; });
    var indeg = {}, ins = {};
    V.forEach(function (v) { indeg[v.id] = 0; ins[v.id] = []; outs[v.id] = []; });
    fwd.forEach(function (e) { indeg[e.to]++; ins[e.to].push(e); outs[e.from].push(e); });
    var queue = V.filter(function (v) { return !indeg[v.id]; }).map(function (v) { return v.id; });
    while (queue.length) {
      var id = queue.shift();
      outs[id].forEach(function (e) {
        var t = byId[e.to];
        t.layer = Math.max(t.layer, byId[id].layer + 1);
        if (--indeg[e.to] === 0) queue.push(String(e.to));
      });
    }
    V.forEach(function (v) {
      if (ins[v.id].length || !outs[v.id].length) return;
      v.layer = Math.min.apply(null, outs[v.id].map(function (e) { return byId[e.to].layer; })) - 1;
    });
    var used = [], nL = 0;   // drop the layers left empty
    V.forEach(function (v) { used[v.layer] = true; });
    var remap = used.map(function (u) { return u ? nL++ : -1; });
    V.forEach(function (v) { v.layer = remap[v.layer]; });
    nL = Math.max(nL, 1);
    var layers = [];
    for (var l = 0; l < nL; l++) layers.push([]);
    V.forEach(function (v) { layers[v.layer].push(v); });
    var chains = {};
    fwd.forEach(function (e) {
      var a = byId[e.from], b = byId[e.to], chain = [a];
      var w = 1 + Math.log10(1 + (e.records || 0)) / 4;
      for (var k = a.layer + 1; k < b.layer; k++) {
        var dm = { real: false, layer: k, preds: [], succs: [], predW: [], succW: [], w: 0, h: 0 };
        layers[k].push(dm); chain.push(dm);
      }
      chain.push(b);
      for (var i = 0; i + 1 < chain.length; i++) {
        var sw = w * (chain[i].real ? (chain[i + 1].real ? 1 : 2) : (chain[i + 1].real ? 2 : 8));
        chain[i].succs.push(chain[i + 1]); chain[i].succW.push(sw);
        chain[i + 1].preds.push(chain[i]); chain[i + 1].predW.push(sw);
      }
      chains[e.id] = chain;
    });

    // order within the layers
    var ord = 0, seen = new Set();
    function visit(v) {
      if (seen.has(v)) return;
      seen.add(v); v.ord = ord++;
      v.succs.forEach(visit);
    }
    layers.forEach(function (L) { L.forEach(function (v) { if (!v.preds.length) visit(v); }); });
    layers.forEach(function (L) {
      L.sort(function (a, b) { return a.ord - b.ord; });
      L.forEach(function (v, i) { v.pos = i; });
    });
    function crossings() {
      var c = 0;
      for (var k = 0; k + 1 < nL; k++) {
        var segs = [];
        layers[k].forEach(function (v) { v.succs.forEach(function (s) { segs.push([v.pos, s.pos]); }); });
        for (var i = 0; i < segs.length; i++) {
          for (var j = i + 1; j < segs.length; j++) {
            if ((segs[i][0] - segs[j][0]) * (segs[i][1] - segs[j][1]) < 0) c++;
          }
        }
      }
      return c;
    }
    function sweep(down) {
      for (var k = down ? 1 : nL - 2; down ? k < nL : k >= 0; k += down ? 1 : -1) {
        var L = layers[k];
        L.forEach(function (v) {
          var nb = down ? v.preds : v.succs;
          v.bc = nb.length ? nb.reduce(function (s, u) { return s + u.pos; }, 0) / nb.length : v.pos;
        });
        L.sort(function (a, b) { return a.bc - b.bc || a.pos - b.pos; });
        L.forEach(function (v, i) { v.pos = i; });
      }
    }
    var best = layers.map(function (L) { return L.slice(); }), bestC = crossings();
    for (var it = 0; it < 16 && bestC > 0; it++) {
      sweep(it % 2 === 0);
      var c = crossings();
      if (c < bestC) { bestC = c; best = layers.map(function (L) { return L.slice(); }); }
    }
    layers = best;
    // the source of a back edge goes to the bottom of its layer: its arc runs underneath
    edges.forEach(function (e) {
      if (!back[e.id] || e.from === e.to) return;
      var s = byId[e.from], L = layers[s.layer];
      L.splice(L.indexOf(s), 1); L.push(s);
    });
    layers.forEach(function (L) { L.forEach(function (v, i) { v.pos = i; }); });

    // heights
    function sep(a, b) { return a.h / 2 + b.h / 2 + (a.real && b.real ? 12 : a.real || b.real ? 9 : 6); }
    layers.forEach(function (L) {
      var y = 0;
      L.forEach(function (v, i) { if (i) y += sep(L[i - 1], v); v.y = y; });
      L.forEach(function (v) { v.y -= y / 2; });
    });
    function place(L, up, down) {
      var off = [0], z = [], wt = [];
      for (var i = 1; i < L.length; i++) off.push(off[i - 1] + sep(L[i - 1], L[i]));
      L.forEach(function (v, i) {
        var s = 0, sw = 0;
        if (up) v.preds.forEach(function (u, j) { s += u.y * v.predW[j]; sw += v.predW[j]; });
        if (down) v.succs.forEach(function (u, j) { s += u.y * v.succW[j]; sw += v.succW[j]; });
        z.push((sw ? s / sw : v.y) - off[i]); wt.push(sw || 0.3);
      });
      var blocks = [];   // pool adjacent violators: z must not decrease
      z.forEach(function (zi, i) {
        blocks.push({ s: zi * wt[i], w: wt[i], n: 1 });
        while (blocks.length > 1 && blocks[blocks.length - 2].s / blocks[blocks.length - 2].w > blocks[blocks.length - 1].s / blocks[blocks.length - 1].w) {
          var b = blocks.pop(), a = blocks[blocks.length - 1];
          a.s += b.s; a.w += b.w; a.n += b.n;
        }
      });
      var i = 0;
      blocks.forEach(function (b) { for (var j = 0; j < b.n; j++, i++) L[i].y = b.s / b.w + off[i]; });
    }
    for (it = 0; it < 12; it++) {
      for (l = 1; l < nL; l++) place(layers[l], true, it > 8);
      for (l = nL - 2; l >= 0; l--) place(layers[l], it > 8, true);
    }

    // columns
    var TOP = 12, colX = [], colW = [], x = 10;
    layers.forEach(function (L, k) {
      var w = 0;
      L.forEach(function (v) { w = Math.max(w, v.w); });
      colW.push(w); colX.push(x); x += w + DF_GAP;
    });
    var W = x - DF_GAP + 10, minY = Infinity, maxY = -Infinity;
    layers.forEach(function (L, k) {
      L.forEach(function (v) {
        v.x = colX[k] + colW[k] / 2;
        minY = Math.min(minY, v.y - v.h / 2); maxY = Math.max(maxY, v.y + v.h / 2);
      });
    });
    layers.forEach(function (L) { L.forEach(function (v) { v.y += TOP - minY; }); });
    var H = maxY - minY + TOP + 12;

    // ports: the channels of a node spread along its side, in the order of their ends
    function ports(v, list, key) {
      var k = list.length;
      if (k < 2) { list.forEach(function (p) { p[key] = v.y; }); return; }
      list.sort(function (a, b) { return a.other.y - b.other.y || a.other.x - b.other.x; });
      var span = Math.min(v.major ? v.h - 10 : 6, (k - 1) * 6);
      list.forEach(function (p, i) { p[key] = v.y - span / 2 + span * i / (k - 1); });
    }
    var outP = {}, inP = {}, routes = {};
    V.forEach(function (v) { outP[v.id] = []; inP[v.id] = []; });
    fwd.forEach(function (e) {
      var ch = chains[e.id], r = { e: e, ch: ch };
      routes[e.id] = r;
      outP[ch[0].id].push({ r: r, other: ch[1] });
      inP[ch[ch.length - 1].id].push({ r: r, other: ch[ch.length - 2] });
    });
    V.forEach(function (v) {
      ports(v, outP[v.id], "y0"); ports(v, inP[v.id], "y1");
      outP[v.id].forEach(function (p) { p.r.y0 = p.y0; });
      inP[v.id].forEach(function (p) { p.r.y1 = p.y1; });
    });
    var out = { W: W, H: H, nodes: V, edges: [] };
    fwd.forEach(function (e) {
      var r = routes[e.id], ch = r.ch, a = ch[0], b = ch[ch.length - 1];
      var pts = [[a.x + a.pw, r.y0]];
      ch.slice(1, -1).forEach(function (dm) {
        pts.push([colX[dm.layer], dm.y], [colX[dm.layer] + colW[dm.layer], dm.y]);
      });
      pts.push([b.x - b.pw - 1, r.y1]);
      var dd = "M" + pts[0][0].toFixed(1) + " " + pts[0][1].toFixed(1);
      for (var i = 1; i < pts.length; i++) {
        var p = pts[i - 1], q = pts[i], dx = (q[0] - p[0]) / 2;
        if (Math.abs(q[1] - p[1]) < 0.5) dd += " L" + q[0].toFixed(1) + " " + q[1].toFixed(1);
        else dd += " C" + (p[0] + dx).toFixed(1) + " " + p[1].toFixed(1) + " " + (q[0] - dx).toFixed(1) + " " + q[1].toFixed(1) + " " + q[0].toFixed(1) + " " + q[1].toFixed(1);
      }
      out.edges.push({ e: e, d: dd, mid: [(pts[0][0] + pts[1][0]) / 2, (pts[0][1] + pts[1][1]) / 2] });
    });
    // back edges: from under their source, along the bottom, up into their target
    var nBack = 0;
    edges.forEach(function (e) {
      if (!back[e.id]) return;
      var a = byId[e.from], b = byId[e.to], lo = Math.min(a.layer, b.layer), hi = Math.max(a.layer, b.layer), bottom = 0;
      for (var k = lo; k <= hi; k++) layers[k].forEach(function (v) { bottom = Math.max(bottom, v.y + v.h / 2); });
      var ba = a.y + (a.major ? a.h / 2 : 5), bb = b.y + (b.major ? b.h / 2 : 5);
      var yb = bottom + 14 + 14 * nBack++, r = 9, dd;
      var xa = a.x + (a === b ? a.w / 4 : 0), xb = b.x - (a === b ? b.w / 4 : 0), dir = xb < xa ? -1 : 1;
      dd = "M" + xa.toFixed(1) + " " + ba.toFixed(1) + " L" + xa.toFixed(1) + " " + (yb - r).toFixed(1) +
        " Q" + xa.toFixed(1) + " " + yb.toFixed(1) + " " + (xa + dir * r).toFixed(1) + " " + yb.toFixed(1) +
        " L" + (xb - dir * r).toFixed(1) + " " + yb.toFixed(1) +
        " Q" + xb.toFixed(1) + " " + yb.toFixed(1) + " " + xb.toFixed(1) + " " + (yb - r).toFixed(1) +
        " L" + xb.toFixed(1) + " " + (bb + 1).toFixed(1);
      out.edges.push({ e: e, d: dd, back: true, label: [(xa + xb) / 2, yb + 13] });
      out.H = Math.max(out.H, yb + 20);
    });
    return out;
  }

  function svgNode(tag, attrs, parent) {
    var n = document.createElementNS(SVGNS, tag);
    for (var k in attrs) n.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(n);
    return n;
  }

  // Builds the SVG of a new graph shape and keeps handles on what each payload updates.
  function dfBuild(d, key) {
    var svgEl = document.getElementById("dataflow-graph"), lay = dfLayout(d);
    while (svgEl.firstChild) svgEl.removeChild(svgEl.firstChild);
    svgEl.setAttribute("viewBox", "0 0 " + Math.ceil(lay.W) + " " + Math.ceil(lay.H));
    svgEl.style.minWidth = Math.round(lay.W * 0.8) + "px";
    svgEl.style.maxWidth = Math.round(lay.W * 1.15) + "px";
    var defs = svgNode("defs", {}, svgEl);
    [["df-a0", "#3a4a68"], ["df-a1", "#38bdf8"], ["df-ax", "#a78bfa"], ["df-af", "#f59e0b"]].forEach(function (m) {
      var mk = svgNode("marker", { id: m[0], viewBox: "0 0 10 10", refX: "9", refY: "5", markerWidth: "8", markerHeight: "8",
        markerUnits: "userSpaceOnUse", orient: "auto" }, defs);
      svgNode("path", { d: "M0 0 L10 5 L0 10 z", fill: m[1] }, mk);
    });
    var gEdges = svgNode("g", { "class": "df-edges" }, svgEl), gMarks = svgNode("g", { "class": "df-marks" }, svgEl);
    var gNodes = svgNode("g", { "class": "df-nodes" }, svgEl);
    var view = { key: key, W: lay.W, H: lay.H, nodes: {}, edges: {}, ops: {}, ins: {}, outs: {} };
    lay.edges.forEach(function (r) {
      var e = r.e, cls = "df-edge" + (r.back || e.feedback ? " df-feedback" : "");
      var p = svgNode("path", { "class": cls, d: r.d, "data-id": String(e.id), "data-from": String(e.from), "data-to": String(e.to) }, gEdges);
      var t = svgNode("title", {}, p);
      var h = { path: p, title: t, e: e };
      // whether a channel exchanges is updated in place: the ⇄ mark is there, hidden or not
      if (r.back) {
        h.label = svgNode("text", { "class": "df-fblabel", x: r.label[0].toFixed(1), y: r.label[1].toFixed(1), "text-anchor": "middle" }, gMarks);
      } else {
        h.mark = svgNode("g", { "class": "df-xmark", transform: "translate(" + r.mid[0].toFixed(1) + "," + r.mid[1].toFixed(1) + ")" }, gMarks);
        svgNode("circle", { r: "7" }, h.mark);
        svgNode("text", { y: "3.5", "text-anchor": "middle" }, h.mark).textContent = "⇄";
        svgNode("title", {}, h.mark).textContent = "exchange: records move between workers";
      }
      view.edges[String(e.id)] = h;
      (view.outs[String(e.from)] = view.outs[String(e.from)] || []).push(e.id);
      (view.ins[String(e.to)] = view.ins[String(e.to)] || []).push(e.id);
    });
    lay.nodes.forEach(function (v) {
      if (!v.real) return;
      var o = v.op, g = svgNode("g", { "class": "df-node " + (v.major ? "df-major" : "df-helper") + (o.arrangement ? " df-arrangement" : ""),
        "data-id": v.id, "data-name": o.name, transform: "translate(" + v.x.toFixed(1) + "," + v.y.toFixed(1) + ")" }, gNodes);
      var h = { g: g, v: v, bars: [] };
      var name;
      if (v.major) {
        if (o.arrangement) svgNode("rect", { "class": "df-arr", x: -v.w / 2 - 3, y: -v.h / 2 - 3, width: v.w + 6, height: v.h + 6, rx: 9 }, g);
        h.box = svgNode("rect", { "class": "df-box", x: -v.w / 2, y: -v.h / 2, width: v.w, height: v.h, rx: 7 }, g);
        name = svgNode("text", { "class": "df-name", "text-anchor": "middle", y: -v.h / 2 + 14 }, g);
        if (v.lines.length === 1) name.textContent = o.name;
        else v.lines.forEach(function (line, i) { svgNode("tspan", { x: "0", dy: i ? "12" : "0" }, name).textContent = line; });
        h.fig = svgNode("text", { "class": "df-fig", "text-anchor": "middle", y: -v.h / 2 + 14 + v.lines.length * 12 }, g);
        h.figMax = v.w - 8;
        var n = Math.max(1, v.nw), bx = -v.w / 2 + 7, bw = (v.w - 14) / n;
        // one track per worker, filled in proportion to the busiest worker's time
        h.barW = Math.max(1, bw - 2);
        for (var i = 0; i < v.nw; i++) {
          svgNode("rect", { "class": "df-wtrack", x: (bx + i * bw + 1).toFixed(1), y: v.h / 2 - 9, width: h.barW.toFixed(1), height: 5, rx: 1 }, g);
          h.bars.push(svgNode("rect", { "class": "df-wbar", x: (bx + i * bw + 1).toFixed(1), y: v.h / 2 - 9, width: "0", height: 5, rx: 1 }, g));
        }
      } else {
        var below = v.layer % 2 === 1, tw = v.textW + 4;
        svgNode("rect", { "class": "df-hit", x: (-tw / 2).toFixed(1), y: below ? -7 : -19, width: tw.toFixed(1), height: 26 }, g);
        if (o.arrangement) svgNode("rect", { "class": "df-arr", x: -10, y: -8, width: 20, height: 16, rx: 8 }, g);
        h.box = svgNode("rect", { "class": "df-box", x: -7, y: -5, width: 14, height: 10, rx: 5 }, g);
        name = svgNode("text", { "class": "df-name", "text-anchor": "middle", y: below ? 16 : -9 }, g);
        name.textContent = o.name;
      }
      view.nodes[v.id] = h;
    });
    if (dfPinned != null && !view.nodes[dfPinned]) dfPinned = null;
    if (dfHover != null && !view.nodes[dfHover]) dfHover = null;
    return view;
  }

  function opBusy(o) {
    if (o.window) return o.window.elapsed_us || 0;
    return (o.workers || []).reduce(function (s, w) { return s + fig4(w.window).elapsed_us; }, 0);
  }

  function drawDataflow() {
    var d = dfData;
    if (!d) return;
    dfData = null;
    var svgEl = document.getElementById("dataflow-graph"), key = dfKey(d);
    if (!dfView || dfView.key !== key) dfView = dfBuild(d, key);
    var v = dfView;
    v.d = d;
    // Colours by the share of the window's busy time; with nothing in the window (the
    // run has ended), by the share of the busy time since the start.
    var winTotal = 0, allTotal = 0;
    d.operators.forEach(function (o) { winTotal += opBusy(o); allTotal += fig4(o.totals).elapsed_us; });
    var useWin = winTotal > 0, total = useWin ? winTotal : allTotal;
    v.useWin = useWin; v.total = total;
    d.operators.forEach(function (o) {
      var id = String(o.id), h = v.nodes[id];
      v.ops[id] = o;
      if (!h) return;
      var busy = useWin ? opBusy(o) : fig4(o.totals).elapsed_us, share = total ? busy / total : 0;
      h.g.setAttribute("data-busy-us", String(opBusy(o)));
      h.g.setAttribute("data-records-in", String(fig4(o.totals).records_in));
      h.g.setAttribute("data-share", share.toFixed(4));
      h.box.setAttribute("fill", heatOf(share));
      h.g.classList.toggle("df-hot", share >= 0.01);
      h.g.classList.toggle("df-idle", busy === 0);
      if (h.fig) {
        var f = share >= 0.001 ? pct(share) : busy ? "<0.1%" : "idle";
        if (busy && textW(f + " · " + usMs(busy), DF_FONT.fig) <= h.figMax) f += " · " + usMs(busy);
        h.fig.textContent = f;
      }
      if (h.bars.length) {
        var ws = (o.workers || []).map(function (w) { return useWin ? fig4(w.window).elapsed_us : w.elapsed_us || 0; });
        var max = Math.max.apply(null, ws.concat([0]));
        h.bars.forEach(function (b, i) {
          b.setAttribute("width", (max ? Math.max(ws[i] ? 1 : 0, h.barW * (ws[i] || 0) / max) : 0).toFixed(1));
        });
      }
    });
    var rps = 0;
    (d.edges || []).forEach(function (e) {
      var h = v.edges[String(e.id)];
      if (!h) return;
      h.e = e;
      rps += e.records_per_s || 0;
      h.path.setAttribute("stroke-width", edgeWidth(e.records_per_s).toFixed(2));
      h.path.classList.toggle("on", (e.records_per_s || 0) > 0);
      h.path.classList.toggle("df-exchange", !!e.exchange);
      if (h.mark) h.mark.style.display = e.exchange ? "" : "none";
      if (h.label) h.label.textContent = (e.feedback ? "credits +1 ms" : "loop") + (e.exchange ? " ⇄" : "");
      var from = v.ops[String(e.from)], to = v.ops[String(e.to)];
      h.title.textContent = (from ? from.name : e.from) + " → " + (to ? to.name : e.to) + ": " + rate(e.records_per_s || 0) +
        " · " + fmt(e.records || 0) + " records in all" + (e.exchange ? " · exchanged between workers" : "") +
        (e.feedback ? " · feedback (credits, +1 ms)" : "");
    });
    var reported = d.workers_reported || [];
    var sub = "process " + (d.process != null ? d.process : "?") + " of " + (d.processes != null ? d.processes : "?") +
      " · worker" + (reported.length === 1 ? " " : "s ") + reported.join(", ") + " of " + (d.workers_total != null ? d.workers_total : "?") +
      " · window " + fmt(d.window_ms || 0) + " ms · " + compact(rps) + " records/s over " + (d.edges || []).length + " channels";
    if (useWin && d.window_ms && reported.length) sub += " · busy " + pct(winTotal / (d.window_ms * 1000 * reported.length)) + " of the workers' time";
    if (!useWin) sub += " · nothing ran in the window: colours show busy time since the start";
    document.getElementById("dataflow-sub").textContent = sub;
    var sc = document.getElementById("df-scroll");
    document.querySelector("#dataflow-card .df-swipe").hidden = !(sc.scrollWidth > sc.clientWidth + 2);
    dfUpdates++;
    svgEl.setAttribute("data-updates", String(dfUpdates));
    svgEl.setAttribute("data-drawn", "true");
    dfFocus();
    dfDetail();
  }

  function dfShown() { return dfHover != null ? dfHover : dfPinned; }

  // The channels and neighbours of the operator shown stand out; the rest fades.
  function dfFocus() {
    if (!dfView) return;
    var svgEl = document.getElementById("dataflow-graph"), id = dfShown(), on = {};
    svgEl.classList.toggle("df-focus", id != null);
    if (id != null) {
      on[id] = true;
      (dfView.ins[id] || []).concat(dfView.outs[id] || []).forEach(function (eid) {
        var e = dfView.edges[String(eid)].e;
        on["e" + eid] = true; on[String(e.from)] = true; on[String(e.to)] = true;
      });
    }
    Object.keys(dfView.nodes).forEach(function (k) {
      var g = dfView.nodes[k].g;
      g.classList.toggle("df-on", !!on[k]);
      g.classList.toggle("df-sel", k === id);
      g.classList.toggle("df-pin", k === dfPinned);
    });
    Object.keys(dfView.edges).forEach(function (k) { dfView.edges[k].path.classList.toggle("df-on", !!on["e" + k]); });
  }

  function dfDetail() {
    var box = document.getElementById("df-detail"), id = dfShown(), v = dfView;
    var o = id != null && v ? v.ops[id] : null;
    if (!o) {
      box.innerHTML = '<div class="df-hint">Hover or tap an operator for its figures per worker' +
        (v && v.d && (v.d.workers_reported || []).length > 1 ? " (the bars in a box compare the workers' busy time: uneven bars, skew)" : "") + ".</div>";
      return;
    }
    var useWin = v.useWin, win = fig4(o.window), tot = fig4(o.totals), busy = useWin ? opBusy(o) : tot.elapsed_us;
    var workers = o.workers || [];
    var ws = workers.map(function (w) { return useWin ? fig4(w.window).elapsed_us : w.elapsed_us || 0; });
    var max = Math.max.apply(null, ws.concat([0])), sum = ws.reduce(function (s, x) { return s + x; }, 0);
    var mean = workers.length ? sum / workers.length : 0;
    function link(eid, dir) {
      var e = v.edges[String(eid)].e, other = v.ops[String(dir === "in" ? e.from : e.to)];
      return '<span class="df-link' + (e.feedback ? " fb" : "") + '">' + esc(other ? other.name : "?") + " " +
        (e.feedback ? "↺ " : "") + (e.exchange ? "⇄ " : "") + esc(rate(e.records_per_s || 0)) + "</span>";
    }
    var ins = (v.ins[id] || []).map(function (e) { return link(e, "in"); }).join(""), outs = (v.outs[id] || []).map(function (e) { return link(e, "out"); }).join("");
    var html = '<div class="df-dh"><b>' + esc(o.name) + '</b><span class="mono">#' + esc(o.id) + " · address " + esc((o.addr || []).join(".")) + "</span>" +
      (o.arrangement ? '<span class="badge scheduled">arrangement · ' + fmt(o.arrangement.batches) + " batches · " + fmt(o.arrangement.records) + " records</span>" : "") +
      (dfPinned === id ? '<span class="badge">pinned · tap elsewhere to release</span>' : "") + "</div>";
    html += '<div class="df-ds">' + (useWin ? "busy " + usMs(busy) + " in the last " + fmt(v.d.window_ms || 0) + " ms" : "busy " + usMs(busy) + " since the start") +
      " · " + (v.total ? pct(busy / v.total) : "–") + " of all operators' busy time" +
      " · " + fmt(useWin ? win.activations : tot.activations) + " activations" +
      " · records in " + fmt(tot.records_in) + ", out " + fmt(tot.records_out) + " since the start" +
      (workers.length > 1 && mean > 0 ? " · skew (busiest ÷ mean) " + (max / mean).toFixed(2) + "×" : "") + "</div>";
    if (ins || outs) html += '<div class="df-ds df-links">' + (ins ? "<span>from</span> " + ins : "") + (outs ? " <span>to</span> " + outs : "") + "</div>";
    html += '<div class="tablewrap"><table class="tx df-workers"><thead><tr><th>worker</th><th>busy<span class="hide-sm"> ' + (useWin ? "(window)" : "(all)") + '</span></th>' +
      '<th class="num"><span class="hide-sm">activations</span><span class="df-sm" title="activations">act.</span></th><th class="num">in</th><th class="num">out</th><th class="num hide-sm">in, total</th><th class="num hide-sm">out, total</th><th class="num hide-sm">busy, total</th></tr></thead><tbody>';
    workers.forEach(function (w, i) {
      var ww = fig4(w.window);
      html += "<tr><td>" + esc(w.worker) + '</td><td><span class="riskbar df-wb"><i style="width:' + (max ? (100 * ws[i] / max).toFixed(0) : 0) + '%"></i></span>' +
        esc(usMs(ws[i])) + ' <small class="df-muted hide-sm">' + (sum ? pct(ws[i] / sum) : "–") + "</small></td>" +
        '<td class="num">' + fmt(useWin ? ww.activations : w.activations || 0) + '</td><td class="num">' + fmt(useWin ? ww.records_in : w.records_in || 0) +
        '</td><td class="num">' + fmt(useWin ? ww.records_out : w.records_out || 0) + '</td><td class="num hide-sm">' + fmt(w.records_in || 0) +
        '</td><td class="num hide-sm">' + fmt(w.records_out || 0) + '</td><td class="num hide-sm">' + esc(usMs(w.elapsed_us || 0)) + "</td></tr>";
    });
    html += '<tr class="df-sum"><td>all</td><td>' + esc(usMs(busy)) + '</td><td class="num">' + fmt(useWin ? win.activations : tot.activations) +
      '</td><td class="num">' + fmt(useWin ? win.records_in : tot.records_in) + '</td><td class="num">' + fmt(useWin ? win.records_out : tot.records_out) +
      '</td><td class="num hide-sm">' + fmt(tot.records_in) + '</td><td class="num hide-sm">' + fmt(tot.records_out) + '</td><td class="num hide-sm">' + esc(usMs(tot.elapsed_us)) + "</td></tr>";
    html += "</tbody></table></div>";
    var wrap = box.querySelector(".tablewrap"), left = wrap ? wrap.scrollLeft : 0;
    box.innerHTML = html;
    if (left) box.querySelector(".tablewrap").scrollLeft = left;
  }

  (function () {
    var svgEl = document.getElementById("dataflow-graph");
    function nodeOf(ev) {
      var g = ev.target && ev.target.closest ? ev.target.closest(".df-node") : null;
      return g ? g.getAttribute("data-id") : null;
    }
    svgEl.addEventListener("mouseover", function (ev) {
      var id = nodeOf(ev);
      if (id !== dfHover) { dfHover = id; dfFocus(); dfDetail(); }
    });
    svgEl.addEventListener("mouseleave", function () {
      if (dfHover != null) { dfHover = null; dfFocus(); dfDetail(); }
    });
    svgEl.addEventListener("click", function (ev) {
      var id = nodeOf(ev);
      dfPinned = id != null && id !== dfPinned ? id : null;
      if (id == null) dfHover = null;
      dfFocus(); dfDetail();
    });
  })();

  var DRAW = {
    status_counts: drawStatus, value_histogram: drawValueHistogram, hour_histogram: drawHourHistogram,
    value_risk_distribution: drawValueRisk, hour_risk_outcome: drawHourRisk, state_approval: drawStates,
    insufficient_funds: drawFunds, mode_rejections: drawModes, minute_frequency: drawMinuteFrequency,
    distance_band_outcome: drawDistance, __recent: drawRecent, __health: drawHealth,
    __rules: drawRules, __controls: drawControls, __dataflow: drawDataflow,
    __whatif: drawWhatif
  };

  function schedule() {
    if (scheduled) return;
    scheduled = true;
    requestAnimationFrame(render);
  }

  function render() {
    scheduled = false;
    if (dirty.status_counts) dirty.insufficient_funds = true;
    var names = Object.keys(dirty);
    dirty = {};
    names.forEach(function (n) {
      try { DRAW[n](); } catch (e) { if (window.console) console.error(n, e); }
    });
  }

  var resizeTimer = null;
  window.addEventListener("resize", function () {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(function () { NAMES.forEach(function (n) { dirty[n] = true; }); schedule(); }, 150);
  });

  NAMES.forEach(function (n) { dirty[n] = true; });
  dirty.__recent = true;
  dirty.__rules = true;
  dirty.__controls = true;
  schedule();
  connect();
})();
