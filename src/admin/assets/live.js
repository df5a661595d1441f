// The live view: blocked requests as the filter records them (server-sent events).
// Built with DOM calls only (never innerHTML): event fields come from the network.
(function () {
  var list = document.getElementById("live-list");
  var state = document.getElementById("live-state");
  if (!list || !window.EventSource) { return; }
  var src = new EventSource(list.getAttribute("data-src"));
  src.addEventListener("open", function () { state.textContent = state.getAttribute("data-on"); });
  src.addEventListener("error", function () { state.textContent = state.getAttribute("data-off"); });
  src.addEventListener("block", function (e) {
    var b;
    try { b = JSON.parse(e.data); } catch (err) { return; }
    var li = document.createElement("li");
    var t = document.createElement("time");
    t.textContent = b.local_time;
    li.appendChild(t);
    li.appendChild(document.createTextNode(" — " + b.host + " — " + (b.category || "") +
      " — " + b.profile + (b.who ? " — " + b.who : "") + " (" + b.service + ")"));
    list.insertBefore(li, list.firstChild);
    while (list.children.length > 200) { list.removeChild(list.lastChild); }
  });
})();
