/*
 * Small SVG charts for the staff dashboard and the compare page (lines, bars, stacked bars, a funnel,
 * and bars with interval whiskers), and the API fetch both pages draw from.
 *
 * Every mark a chart draws carries the figure it stands for in data attributes
 * (data-series, data-x, data-value; data-low and data-high for an interval), so what a person sees can be read back
 * and checked against the API that supplied it.
 */
(function (global) {
  "use strict";

  const SVG_NS = "http://www.w3.org/2000/svg";
  const PALETTE = ["#2f6db5", "#d9822b", "#2e9e6a", "#b8433e", "#7b5ea7", "#8c6d46", "#c55a9b", "#6b7b8c"];
  const MARGIN = { top: 12, right: 16, bottom: 34, left: 64 };

  function el(name, attrs, parent) {
    const node = document.createElementNS(SVG_NS, name);
    for (const [key, value] of Object.entries(attrs || {})) {
      node.setAttribute(key, String(value));
    }
    if (parent) parent.appendChild(node);
    return node;
  }

  function title(node, text) {
    el("title", {}, node).textContent = text;
  }

  // The top of the y axis: four equal steps of 1, 2, 2.5 or 5 times a power of ten.
  function niceMax(value) {
    if (!(value > 0)) return 4;
    const rough = value / 4;
    const power = Math.pow(10, Math.floor(Math.log10(rough)));
    for (const step of [1, 2, 2.5, 5, 10]) {
      if (step * power >= rough) return 4 * step * power;
    }
    return 40 * power;
  }

  function frame(container, width, height) {
    container.textContent = "";
    const svg = el("svg", {
      viewBox: `0 0 ${width} ${height}`, width: "100%", role: "img", class: "mlops-chart",
      preserveAspectRatio: "xMidYMid meet",
    }, container);
    return svg;
  }

  function yAxis(svg, maxValue, innerWidth, innerHeight, format) {
    const axis = el("g", { class: "axis axis-y", transform: `translate(${MARGIN.left},${MARGIN.top})` }, svg);
    for (let i = 0; i <= 4; i += 1) {
      const value = (maxValue * i) / 4;
      const y = innerHeight - (innerHeight * i) / 4;
      el("line", { x1: 0, x2: innerWidth, y1: y, y2: y, class: "grid" }, axis);
      el("text", { x: -6, y: y + 4, "text-anchor": "end" }, axis).textContent = format(value);
    }
  }

  function xAxis(svg, labels, xOf, innerHeight, formatLabel) {
    const axis = el("g", { class: "axis axis-x", transform: `translate(${MARGIN.left},${MARGIN.top + innerHeight})` }, svg);
    const every = Math.max(1, Math.ceil(labels.length / 8));
    labels.forEach((label, i) => {
      if (i % every !== 0) return;
      el("text", { x: xOf(i), y: 18, "text-anchor": "middle" }, axis).textContent = formatLabel(label);
    });
  }

  // The colour of a chart's k-th series; `first` shifts it, so two charts drawn together differ.
  const colourOf = (k, first) => PALETTE[(first + k) % PALETTE.length];

  function legend(container, names, first) {
    const list = document.createElement("ul");
    list.className = "mlops-legend";
    names.forEach((name, i) => {
      const item = document.createElement("li");
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = colourOf(i, first);
      item.appendChild(swatch);
      item.appendChild(document.createTextNode(name));
      list.appendChild(item);
    });
    container.appendChild(list);
  }

  function empty(container, message) {
    container.textContent = "";
    const note = document.createElement("p");
    note.className = "mlops-empty";
    note.textContent = message || "No events in this period.";
    container.appendChild(note);
  }

  /*
   * Lines over a shared x axis. series: [{name, values: [number|null]}], one value per label.
   * A null value (no events in that bucket) breaks the line and draws no point.
   * A legend is drawn for several series, or when `legend` is true; `firstColour` picks the palette's start.
   */
  function lineChart(container, {
    labels, series, format, formatLabel, height = 240, legend: withLegend = series.length > 1, firstColour = 0,
  }) {
    if (!labels.length) return empty(container);
    const width = 720;
    const innerWidth = width - MARGIN.left - MARGIN.right;
    const innerHeight = height - MARGIN.top - MARGIN.bottom;
    const all = series.flatMap((s) => s.values.filter((v) => v !== null && v !== undefined));
    const maxValue = niceMax(Math.max(0, ...all));
    const xOf = (i) => (labels.length === 1 ? innerWidth / 2 : (innerWidth * i) / (labels.length - 1));
    const yOf = (v) => innerHeight - (innerHeight * v) / maxValue;
    const svg = frame(container, width, height);
    yAxis(svg, maxValue, innerWidth, innerHeight, format);
    xAxis(svg, labels, xOf, innerHeight, formatLabel);
    const plot = el("g", { transform: `translate(${MARGIN.left},${MARGIN.top})` }, svg);
    series.forEach((s, k) => {
      const colour = colourOf(k, firstColour);
      let d = "";
      let pen = false;
      s.values.forEach((v, i) => {
        if (v === null || v === undefined) { pen = false; return; }
        d += `${pen ? "L" : "M"}${xOf(i).toFixed(1)},${yOf(v).toFixed(1)}`;
        pen = true;
      });
      el("path", { d, fill: "none", stroke: colour, "stroke-width": 2, class: "line" }, plot);
      s.values.forEach((v, i) => {
        if (v === null || v === undefined) return;
        const point = el("circle", {
          cx: xOf(i).toFixed(1), cy: yOf(v).toFixed(1), r: 3, fill: colour, class: "mark",
          "data-series": s.name, "data-x": labels[i], "data-value": v,
        }, plot);
        title(point, `${s.name} ${formatLabel(labels[i])}: ${format(v)}`);
      });
    });
    if (withLegend) legend(container, series.map((s) => s.name), firstColour);
  }

  /*
   * Bars, stacked when there are several series. series: [{name, values: [number]}].
   * Legend and colours as for lineChart.
   */
  function barChart(container, {
    labels, series, format, formatLabel, height = 240, legend: withLegend = series.length > 1, firstColour = 0,
  }) {
    if (!labels.length) return empty(container);
    const width = 720;
    const innerWidth = width - MARGIN.left - MARGIN.right;
    const innerHeight = height - MARGIN.top - MARGIN.bottom;
    const totals = labels.map((_, i) => series.reduce((sum, s) => sum + (s.values[i] || 0), 0));
    const maxValue = niceMax(Math.max(0, ...totals));
    const slot = innerWidth / labels.length;
    const barWidth = Math.max(1, slot * 0.75);
    const xOf = (i) => slot * i + slot / 2;
    const svg = frame(container, width, height);
    yAxis(svg, maxValue, innerWidth, innerHeight, format);
    xAxis(svg, labels, xOf, innerHeight, formatLabel);
    const plot = el("g", { transform: `translate(${MARGIN.left},${MARGIN.top})` }, svg);
    labels.forEach((label, i) => {
      let base = 0;
      series.forEach((s, k) => {
        const v = s.values[i] || 0;
        const h = (innerHeight * v) / maxValue;
        const bar = el("rect", {
          x: (xOf(i) - barWidth / 2).toFixed(1), y: (innerHeight - base - h).toFixed(1),
          width: barWidth.toFixed(1), height: h.toFixed(1), fill: colourOf(k, firstColour), class: "mark",
          "data-series": s.name, "data-x": label, "data-value": s.values[i] === undefined ? 0 : s.values[i],
        }, plot);
        title(bar, `${s.name} ${formatLabel(label)}: ${format(v)}`);
        base += h;
      });
    });
    if (withLegend) legend(container, series.map((s) => s.name), firstColour);
  }

  /*
   * A funnel: one horizontal bar per step, its share of the first step written beside it.
   * steps: [{name, value}]
   */
  function funnelChart(container, { steps, format }) {
    if (!steps.length || !(steps[0].value > 0)) return empty(container);
    const width = 720;
    const rowHeight = 36;
    const labelWidth = 200;
    const barSpace = width - labelWidth - 120;
    const svg = frame(container, width, rowHeight * steps.length + 8);
    const first = steps[0].value;
    steps.forEach((step, i) => {
      const y = i * rowHeight + 4;
      el("text", { x: labelWidth - 8, y: y + rowHeight / 2, "text-anchor": "end", class: "label" }, svg)
        .textContent = step.name;
      const w = Math.max(1, (barSpace * step.value) / first);
      const bar = el("rect", {
        x: labelWidth, y, width: w.toFixed(1), height: rowHeight - 10, fill: PALETTE[i % PALETTE.length],
        class: "mark", "data-series": "funnel", "data-x": step.name, "data-value": step.value,
      }, svg);
      title(bar, `${step.name}: ${format(step.value)}`);
      const share = ((100 * step.value) / first).toFixed(1);
      el("text", { x: labelWidth + w + 6, y: y + rowHeight / 2, class: "label" }, svg)
        .textContent = `${format(step.value)} (${share}%)`;
    });
  }

  /*
   * One bar per series with its 95% interval as a whisker, on an axis from 0.
   * bars: [{series, value, low, high}]; a bar whose value is null (no data) is drawn as "n/a".
   * `x` names the figure in each mark's data-x. Bar k takes the palette's k-th colour, as lineChart's series do.
   */
  function intervalChart(container, { bars, x, format, height = 200 }) {
    if (!bars.some((bar) => bar.value !== null && bar.value !== undefined)) {
      return empty(container, "No conversations in either arm.");
    }
    const width = 360;
    const innerWidth = width - MARGIN.left - MARGIN.right;
    const innerHeight = height - MARGIN.top - MARGIN.bottom;
    const tops = bars.flatMap((bar) => [bar.value, bar.high]).filter((v) => v !== null && v !== undefined);
    const maxValue = niceMax(Math.max(0, ...tops));
    const slot = innerWidth / bars.length;
    const barWidth = slot * 0.5;
    const xOf = (i) => slot * i + slot / 2;
    const yOf = (v) => innerHeight - (innerHeight * v) / maxValue;
    const svg = frame(container, width, height);
    yAxis(svg, maxValue, innerWidth, innerHeight, format);
    xAxis(svg, bars.map((bar) => bar.series), xOf, innerHeight, (label) => label);
    const plot = el("g", { transform: `translate(${MARGIN.left},${MARGIN.top})` }, svg);
    bars.forEach((bar, k) => {
      const centre = xOf(k);
      if (bar.value === null || bar.value === undefined) {
        el("text", { x: centre, y: innerHeight - 6, "text-anchor": "middle", class: "label" }, plot).textContent = "n/a";
        return;
      }
      const colour = colourOf(k, 0);
      const rect = el("rect", {
        x: (centre - barWidth / 2).toFixed(1), y: yOf(bar.value).toFixed(1), width: barWidth.toFixed(1),
        height: (innerHeight - yOf(bar.value)).toFixed(1), fill: colour, "fill-opacity": 0.8, class: "mark",
        "data-series": bar.series, "data-x": x, "data-value": bar.value, "data-low": bar.low, "data-high": bar.high,
      }, plot);
      title(rect, `${bar.series}: ${format(bar.value)} (95% interval ${format(bar.low)} to ${format(bar.high)})`);
      const whisker = el("g", {
        class: "whisker", "data-series": bar.series, "data-x": x, "data-low": bar.low, "data-high": bar.high,
      }, plot);
      const cap = barWidth / 4;
      el("line", { x1: centre, x2: centre, y1: yOf(bar.high).toFixed(1), y2: yOf(bar.low).toFixed(1), class: "span" },
        whisker);
      el("line", { x1: centre - cap, x2: centre + cap, y1: yOf(bar.high).toFixed(1), y2: yOf(bar.high).toFixed(1),
        class: "end high" }, whisker);
      el("line", { x1: centre - cap, x2: centre + cap, y1: yOf(bar.low).toFixed(1), y2: yOf(bar.low).toFixed(1),
        class: "end low" }, whisker);
      el("text", { x: centre + cap + 4, y: yOf(bar.value) + 4, class: "label" }, plot).textContent = format(bar.value);
    });
  }

  // The API's answer as JSON, with the staff member's session; an error answer becomes an Error naming the
  // service's summary and each field's reason (the service's one error shape).
  async function getJSON(url, params) {
    const query = new URLSearchParams(params).toString();
    const response = await fetch(query ? `${url}?${query}` : url, {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
    });
    let body = null;
    try {
      body = await response.json();
    } catch (err) {
      body = null;
    }
    if (!response.ok) {
      let reason = body && body.error ? body.error : `HTTP ${response.status}`;
      if (body && body.errors) {
        reason += `: ${Object.entries(body.errors).map(([name, why]) => `${name} ${[].concat(why).join(", ")}`).join("; ")}`;
      }
      throw new Error(reason);
    }
    return body;
  }

  global.MlopsCharts = { lineChart, barChart, funnelChart, intervalChart, empty, getJSON };
})(window);
