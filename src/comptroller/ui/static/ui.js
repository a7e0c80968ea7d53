// comptroller UI: draws the charts whose data the page embeds as JSON (no inline script, no CDN).
(function () {
  "use strict";
  var COLORS = ["#2f5bea", "#d9480f", "#2b8a3e", "#ae3ec9", "#f08c00", "#1098ad", "#e64980", "#5c940d", "#868e96"];

  function usd(mc) { return "$" + (mc / 100000).toFixed(mc >= 100000 ? 2 : 4); }

  function draw(el) {
    var source = document.getElementById(el.getAttribute("data-chart"));
    if (!source || typeof uPlot === "undefined") { return; }
    var data = JSON.parse(source.textContent);
    if (!data.days.length || !data.names.length) { el.textContent = "No spend in this range."; return; }
    var series = [{}];
    var columns = [data.days];
    data.names.forEach(function (name, i) {
      series.push({ label: name, stroke: COLORS[i % COLORS.length], width: 2,
                    value: function (u, v) { return v == null ? "-" : usd(v); } });
      columns.push(data.values[i]);
    });
    var opts = {
      width: Math.max(320, el.clientWidth), height: 300, series: series,
      scales: { x: { time: true } },
      axes: [{}, { size: 70, values: function (u, ticks) { return ticks.map(usd); } }],
      legend: { live: true }
    };
    el.textContent = "";
    var plot = new uPlot(opts, columns, el);
    window.addEventListener("resize", function () { plot.setSize({ width: Math.max(320, el.clientWidth), height: 300 }); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-chart]").forEach(draw);
  });
}());
