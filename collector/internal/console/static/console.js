// keyguard console: live event updates (Server-Sent Events) and the token form's break-glass fields.
// No inline script anywhere: the Content-Security-Policy only allows this file. Event data is put into
// the page with textContent, never as HTML.
(function () {
  "use strict";

  function cell(tr, text, cls) {
    var td = document.createElement("td");
    if (cls) { td.className = cls; }
    td.textContent = text || "";
    tr.appendChild(td);
    return td;
  }

  function startLive(el) {
    var url = el.getAttribute("data-stream");
    var state = document.getElementById("live-state");
    var count = document.getElementById("live-count");
    var tbody = document.getElementById("event-rows");
    var added = 0;
    if (!url || !window.EventSource || !tbody) { return; }
    var es = new EventSource(url);
    es.onopen = function () { state.textContent = "live: new events appear here"; el.classList.add("on"); };
    es.onerror = function () { state.textContent = "live updates interrupted, reconnecting…"; el.classList.remove("on"); };
    es.addEventListener("ev", function (msg) {
      var e;
      try { e = JSON.parse(msg.data); } catch (err) { return; }
      var empty = tbody.querySelector("tr.empty");
      if (empty) { empty.remove(); }
      var tr = document.createElement("tr");
      tr.className = "event new" + (/^[a-z]+$/.test(e.severity || "") ? " sev-" + e.severity : "") + (e.alert ? " alert" : "");
      tr.setAttribute("data-host", e.host || "");
      tr.setAttribute("data-seq", String(e.seq || 0));
      var td = document.createElement("td");
      var a = document.createElement("a");
      if (typeof e.url === "string" && e.url.charAt(0) === "/" && e.url.charAt(1) !== "/") { a.href = e.url; }
      a.textContent = e.time || "";
      td.appendChild(a);
      tr.appendChild(td);
      cell(tr, e.host, "host");
      cell(tr, e.severity, "severity");
      cell(tr, e.kind, "kind");
      cell(tr, e.decision, "decision");
      cell(tr, e.rule, "rule");
      cell(tr, e.actor, "actor");
      cell(tr, e.target, "target");
      cell(tr, e.summary, "summary");
      tbody.insertBefore(tr, tbody.firstChild);
      added++;
      count.textContent = added + " new";
      while (tbody.children.length > 500) { tbody.removeChild(tbody.lastChild); }
    });
  }

  function tokenForm() {
    var action = document.getElementById("t-action");
    var bg = document.getElementById("t-breakglass");
    if (!action || !bg) { return; }
    function sync() { bg.hidden = action.value !== "break-glass"; }
    action.addEventListener("change", sync);
    sync();
  }

  document.addEventListener("DOMContentLoaded", function () {
    var live = document.getElementById("live");
    if (live) { startLive(live); }
    tokenForm();
  });
})();
