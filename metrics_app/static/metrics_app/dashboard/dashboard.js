/*
 * The staff dashboard: asks the analytics API, with the staff member's session,
 * for the filters the page shows, then charts the answers as they are.
 * No figure is computed here beyond picking it out of an answer.
 */
(function () {
  "use strict";

  const TOP_INTENTS = 5;
  const root = document.getElementById("mlops-dashboard");
  if (!root) return;
  const config = JSON.parse(document.getElementById("dashboard-config").textContent);
  const status = document.getElementById("dashboard-status");
  const charts = window.MlopsCharts;
  const getJSON = charts.getJSON;

  const integer = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
  const fmt = {
    count: (v) => integer.format(v),
    ms: (v) => `${integer.format(v)} ms`,
    axisMs: (v) => integer.format(v),
    usd: (v) => (v >= 100 ? `$${integer.format(v)}` : `$${Number(v).toFixed(v >= 1 ? 2 : 4)}`),
    percent: (v) => `${(100 * v).toFixed(1)}%`,
    score: (v) => `${v >= 0 ? "+" : ""}${Number(v).toFixed(2)}`,
  };

  function bucketLabel(iso) {
    // Buckets start at local midnight or on the hour in the chosen time zone: show that wall time.
    const local = iso.slice(0, 16).replace("T", " ");
    return config.filters.bucket === "day" ? local.slice(5, 10) : local.slice(5, 16);
  }

  // --- The API's answers, picked apart (the API docs at /api/docs/ define each figure).

  function summaryFigures(answer) {
    const s = answer.summary;
    return {
      events: s.events,
      conversations: s.conversations,
      success_rate: s.success_rate,
      error_rate: s.error_rate,
      p50: s.latency_p50_ms,
      p95: s.latency_p95_ms,
      cost: s.cost_usd,
      cost_per_conversation: s.cost_per_conversation_usd,
      bookings: s.conversations_booked,
      cost_per_booking: s.cost_per_booked_appointment_usd,
      handoff_rate: s.handoff_rate,
      cached_share: s.cached_input_share,
      cache_savings: s.cache_savings_usd,
      sentiment: s.sentiment_mean,
    };
  }

  function buckets(answer) {
    return answer.series || [];
  }

  // --- Drawing.

  const KPIS = [
    ["events", "Events", fmt.count, 1],
    ["conversations", "Conversations", fmt.count, 1],
    ["success_rate", "Success rate", fmt.percent, 1],
    ["error_rate", "Failed replies", fmt.percent, -1],
    ["p50", "Latency p50", fmt.ms, -1],
    ["p95", "Latency p95", fmt.ms, -1],
    ["cost", "Cost", fmt.usd, -1],
    ["cost_per_conversation", "Cost / conversation", fmt.usd, -1],
    ["bookings", "Conversations booked", fmt.count, 1],
    ["cost_per_booking", "Cost / booked appointment", fmt.usd, -1],
    ["handoff_rate", "Handoff rate", fmt.percent, -1],
    ["cached_share", "Input from cache", fmt.percent, 1],
    ["cache_savings", "Saved by caching", fmt.usd, 1],
    ["sentiment", "Customer sentiment (-1..+1)", fmt.score, 1],
  ];

  function drawKpis(current, previous) {
    const box = document.getElementById("kpis");
    box.textContent = "";
    const known = (v) => typeof v === "number" && Number.isFinite(v);
    for (const [key, name, format, better] of KPIS) {
      const value = known(current[key]) ? current[key] : null;
      const card = document.createElement("div");
      card.className = "mlops-kpi";
      card.dataset.kpi = key;
      card.dataset.value = value === null ? "" : value;
      const label = document.createElement("div");
      label.className = "name";
      label.textContent = name;
      const figure = document.createElement("div");
      figure.className = "value";
      figure.textContent = value === null ? "n/a" : format(value);
      const change = document.createElement("div");
      change.className = "change";
      const before = previous[key];
      if (value !== null && known(before) && before !== 0) {
        const delta = (value - before) / Math.abs(before);
        change.textContent = `${delta >= 0 ? "+" : ""}${(100 * delta).toFixed(1)}% vs previous period`;
        if (Math.abs(delta) >= 0.005) change.classList.add(delta * better > 0 ? "up" : "down");
      } else {
        change.textContent = "no previous figure";
      }
      card.append(label, figure, change);
      box.appendChild(card);
    }
  }

  function drawSeries(series) {
    const rows = buckets(series);
    const labels = rows.map((row) => row.start);
    const base = { labels, formatLabel: bucketLabel };
    // Events (bars) and conversations (a line below them) share the card: each gets its own colour
    // and a legend, so the line is not read as more events.
    charts.barChart(document.getElementById("chart-volume"), {
      ...base, format: fmt.count, legend: true,
      series: [{ name: "events", values: rows.map((row) => row.events) }],
    });
    const volume = document.getElementById("chart-volume");
    const conversations = document.createElement("div");
    volume.appendChild(conversations);
    charts.lineChart(conversations, {
      ...base, format: fmt.count, height: 160, legend: true, firstColour: 1,
      series: [{ name: "conversations", values: rows.map((row) => row.conversations) }],
    });
    charts.lineChart(document.getElementById("chart-latency"), {
      ...base, format: fmt.axisMs,
      series: ["p50", "p95", "p99"].map((key) => ({ name: key, values: rows.map((row) => row[`latency_${key}_ms`]) })),
    });
    charts.barChart(document.getElementById("chart-cost"), {
      ...base, format: fmt.usd,
      series: [{ name: "cost_usd", values: rows.map((row) => row.cost_usd) }],
    });
  }

  function drawFunnel(answer) {
    const funnel = answer.funnel;
    charts.funnelChart(document.getElementById("chart-funnel"), {
      format: fmt.count,
      steps: [
        ...funnel.steps.map((step) => ({ name: step.step, value: step.conversations })),
        { name: "human_handoffs", value: funnel.human_handoffs },
      ],
    });
  }

  function table(container, headings, rows) {
    // A plain table: one row per entry, each cell a figure already formatted, its raw value in data-value.
    container.textContent = "";
    const grid = document.createElement("table");
    const head = grid.createTHead().insertRow();
    for (const heading of headings) {
      const th = document.createElement("th");
      th.textContent = heading;
      head.appendChild(th);
    }
    const body = grid.createTBody();
    for (const { key, cells } of rows) {
      const row = body.insertRow();
      row.dataset.key = key;
      for (const [value, text] of cells) {
        const cell = row.insertCell();
        cell.dataset.value = value === null ? "" : value;
        cell.textContent = text;
      }
    }
    container.appendChild(grid);
  }

  function drawSentiment(breakdown) {
    // Sentiment per intent, from the same breakdown the intents chart starts from.
    const container = document.getElementById("table-sentiment");
    const rows = breakdown.rows.filter((row) => row.sentiment_scored_events > 0);
    if (!rows.length) return charts.empty(container, "No scored messages in this period.");
    table(container, ["intent", "mean sentiment", "scored replies"], rows.map((row) => ({
      key: row.key === null ? "" : row.key,
      cells: [[row.key, row.key === null ? "(none)" : row.key],
        [row.sentiment_mean, fmt.score(row.sentiment_mean)],
        [row.sentiment_scored_events, fmt.count(row.sentiment_scored_events)]],
    })));
  }

  async function drawAfterHours(params) {
    // Open against after hours, for one business: its hours are its own.
    const container = document.getElementById("table-after-hours");
    if (!params.business_id) return charts.empty(container, "Pick a business to split its figures by its opening hours.");
    const answer = await getJSON(config.api.opening_hours, params);
    if (!answer.opening_hours_set) return charts.empty(container, answer.note);
    const figures = [
      ["conversations", "conversations"],
      ["conversations_with_request", "appointment requested"],
      ["conversations_booked", "booked"],
      ["events", "replies"],
      ["cost_usd", "cost"],
    ];
    table(container, ["", "open", "after hours"], figures.map(([key, name]) => ({
      key,
      cells: [[null, name], ...[answer.open[key], answer.after_hours[key]].map((v) => [
        v, key === "cost_usd" ? fmt.usd(v) : fmt.count(v)])],
    })));
  }

  async function drawIntents(params) {
    // The busiest intents of the period, each charted from the time series filtered to it.
    const breakdown = await getJSON(config.api.intents, { ...params, limit: TOP_INTENTS + 1 });
    drawSentiment(breakdown);
    const top = breakdown.rows.map((row) => row.key).filter((key) => key !== null).slice(0, TOP_INTENTS);
    const container = document.getElementById("chart-intents");
    if (!top.length) return charts.empty(container);
    const answers = await Promise.all(top.map((intent) => getJSON(config.api.timeseries, { ...params, intent })));
    charts.barChart(container, {
      labels: buckets(answers[0]).map((row) => row.start), formatLabel: bucketLabel, format: fmt.count,
      series: top.map((intent, i) => ({ name: intent, values: buckets(answers[i]).map((row) => row.events) })),
    });
  }

  async function load() {
    const params = config.params;
    try {
      const [summary, previous, series, funnel] = await Promise.all([
        getJSON(config.api.summary, params),
        getJSON(config.api.summary, config.previous),
        getJSON(config.api.timeseries, params),
        getJSON(config.api.funnel, params),
      ]);
      drawKpis(summaryFigures(summary), summaryFigures(previous));
      drawSeries(series);
      drawFunnel(funnel);
      await drawAfterHours(params);
      status.textContent = `Figures for ${config.filters.label}, ${config.filters.business_id || "all businesses"}, `
        + `from ${config.params.start} to ${config.params.end} (${config.filters.tz}).`;
      root.dataset.state = "ready";
    } catch (err) {
      status.textContent = `The figures could not be loaded: ${err.message}`;
      root.dataset.state = "error";
      return;
    }
    // Intents over time come from the raw events (one query per intent), the
    // slowest figures on a large table: they follow once the rest is on screen.
    const intents = document.getElementById("chart-intents");
    intents.dataset.state = "loading";
    charts.empty(intents, "Loading the intents\u2026");
    try {
      await drawIntents(params);
      intents.dataset.state = "ready";
    } catch (err) {
      charts.empty(intents, `The intents could not be loaded: ${err.message}`);
      intents.dataset.state = "error";
    }
  }

  // Picking dates means a custom period.
  const form = document.getElementById("dashboard-filters");
  for (const input of form.querySelectorAll('input[type="date"]')) {
    input.addEventListener("change", () => { form.elements.period.value = "custom"; });
  }

  load();
})();
