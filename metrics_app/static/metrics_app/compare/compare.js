/*
 * The compare page: asks the compare API (or a saved experiment's results), with the staff
 * member's session, for the question the page shows, then draws the answer as it is:
 * two bars with 95% whiskers per figure, the cumulative booking rate of each arm, the verdict.
 * No figure is computed here beyond picking it out of the answer.
 */
(function () {
  "use strict";

  const root = document.getElementById("mlops-compare");
  if (!root) return;
  const config = JSON.parse(document.getElementById("compare-config").textContent);
  const status = document.getElementById("compare-status");
  const charts = window.MlopsCharts;
  const getJSON = charts.getJSON;

  const integer = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
  const fmt = {
    count: (v) => integer.format(v),
    percent: (v) => `${(100 * v).toFixed(1)}%`,
    ms: (v) => `${integer.format(v)} ms`,
    usd: (v) => `$${Number(v).toFixed(Math.abs(v) >= 1 ? 2 : 4)}`,
    points: (v) => `${v >= 0 ? "+" : ""}${(100 * v).toFixed(1)} points`,
    p: (v) => (v < 0.001 ? v.toExponential(1) : v.toFixed(3)),
  };

  // Each figure drawn as two bars, in the order the page shows them; the API docs define each one.
  const FIGURES = [
    ["booking_rate", "Booking rate", fmt.percent, fmt.points],
    ["appointment_request_rate", "Appointment request rate", fmt.percent, fmt.points],
    ["handoff_rate", "Handoff rate", fmt.percent, fmt.points],
    ["error_rate", "Error rate (conversations with a failed reply)", fmt.percent, fmt.points],
    ["cost_per_conversation_usd", "Cost per conversation (USD)", fmt.usd, fmt.usd],
    ["conversation_latency_mean_ms", "Conversation mean latency (ms)", fmt.ms, fmt.ms],
  ];
  const STATUS = { winner: "a winner", no_difference_yet: "no difference yet", not_enough_data: "not enough data" };

  function node(tag, { className, text, data } = {}, parent) {
    const made = document.createElement(tag);
    if (className) made.className = className;
    if (text !== undefined) made.textContent = text;
    for (const [key, value] of Object.entries(data || {})) {
      made.dataset[key] = value === null || value === undefined ? "" : value;
    }
    if (parent) parent.appendChild(made);
    return made;
  }

  // --- Drawing.

  function drawVerdict(answer) {
    const verdict = answer.verdict;
    const box = document.getElementById("verdict");
    box.textContent = "";
    box.hidden = false;
    box.dataset.status = verdict.status;
    box.dataset.winner = verdict.winner || "";
    box.className = `mlops-verdict ${verdict.status}`;
    const heading = node("h2", {}, box);
    heading.append("Verdict: ");
    node("span", { className: "status", text: STATUS[verdict.status] || verdict.status }, heading);
    if (verdict.winner) heading.append(` \u2014 ${verdict.winner}`);
    node("p", { className: "text", text: verdict.text, data: { value: verdict.text } }, box).id = "verdict-text";
    const still = verdict.conversations_still_needed_per_arm;
    const needed = node("p", {
      className: "needed", data: { a: still ? still.a : null, b: still ? still.b : null },
    }, box);
    needed.id = "verdict-needed";
    needed.textContent = still
      ? `Conversations still needed for a ${fmt.points(verdict.lift).replace("+", "")} difference: `
        + `${fmt.count(still.a)} in ${answer.arms.a.variant}, ${fmt.count(still.b)} in ${answer.arms.b.variant}.`
      : "Conversations still needed: not known until an arm has some of each outcome.";
    node("p", {
      className: "test",
      text: `Always-valid p ${fmt.p(verdict.always_valid_p_value)} (alpha ${verdict.alpha}); ${verdict.test}.`
        + (verdict.decided_on ? ` Decided on ${verdict.decided_on}.` : ""),
      data: { value: verdict.always_valid_p_value },
    }, box);
    const ratio = answer.sample_ratio;
    if (ratio && ratio.mismatch) {
      const warning = node("p", { className: "warning", text: ratio.text, data: { value: ratio.p_value } }, box);
      warning.id = "sample-ratio";
      warning.setAttribute("role", "alert");
    }
  }

  function drawArms(answer) {
    const box = document.getElementById("arms");
    box.textContent = "";
    for (const name of ["a", "b"]) {
      const arm = answer.arms[name];
      const card = node("div", {
        className: "mlops-kpi",
        data: { arm: name, variant: arm.variant, conversations: arm.conversations, booked: arm.conversations_booked,
          events: arm.events },
      }, box);
      node("div", { className: "name", text: `Arm ${name}: ${arm.variant}` }, card);
      node("div", { className: "value", text: `${fmt.count(arm.conversations)} conversations` }, card);
      node("div", {
        className: "change",
        text: `${fmt.count(arm.conversations_booked)} booked, ${fmt.count(arm.events)} events`,
      }, card);
    }
  }

  function drawFigures(answer) {
    const grid = document.getElementById("figures");
    grid.textContent = "";
    for (const [key, name, format] of FIGURES) {
      const card = node("section", { className: "mlops-card" }, grid);
      node("h2", { text: name }, card);
      const chart = node("div", { className: "chart" }, card);
      chart.id = `chart-${key}`;
      charts.intervalChart(chart, {
        x: key, format,
        bars: ["a", "b"].map((arm) => {
          const figure = answer.arms[arm][key];
          return {
            series: answer.arms[arm].variant,
            value: figure ? figure.value : null,
            low: figure ? figure.ci_low : null,
            high: figure ? figure.ci_high : null,
          };
        }),
      });
    }
  }

  function drawCumulative(answer) {
    const points = answer.series;
    charts.lineChart(document.getElementById("chart-cumulative"), {
      labels: points.map((point) => point.date), format: fmt.percent, formatLabel: (day) => day.slice(5),
      legend: true,
      series: ["a", "b"].map((arm) => ({
        name: answer.arms[arm].variant, values: points.map((point) => point[arm].booking_rate),
      })),
    });
  }

  function drawDifferences(answer) {
    const box = document.getElementById("differences");
    box.textContent = "";
    const table = node("table", { className: "mlops-differences" }, box);
    const head = node("tr", {}, node("thead", {}, table));
    for (const title of ["figure", "difference", "95% interval", "p-value", "test"]) node("th", { text: title }, head);
    const body = node("tbody", {}, table);
    for (const [key, name, , formatDifference] of FIGURES) {
      const found = answer.comparisons[key];
      const row = node("tr", { data: { figure: key } }, body);
      node("td", { text: name }, row);
      if (!found) {
        node("td", { text: "n/a: too few conversations", data: { value: null } }, row).colSpan = 4;
        continue;
      }
      node("td", { className: "difference", text: formatDifference(found.difference), data: { value: found.difference } }, row);
      node("td", {
        className: "interval", text: `${formatDifference(found.ci_low)} to ${formatDifference(found.ci_high)}`,
        data: { low: found.ci_low, high: found.ci_high },
      }, row);
      node("td", { className: "p-value", text: fmt.p(found.p_value), data: { value: found.p_value } }, row);
      node("td", { className: "test", text: found.test }, row);
    }
  }

  async function load() {
    try {
      const answer = await getJSON(config.api.answer, config.params);
      drawVerdict(answer);
      drawArms(answer);
      drawFigures(answer);
      drawCumulative(answer);
      drawDifferences(answer);
      const period = answer.period;
      const which = answer.experiment ? `the experiment ${answer.experiment.name}` : "the compare";
      status.textContent = `Figures of ${which}: ${answer.dimension} ${answer.arms.a.variant} against `
        + `${answer.arms.b.variant}, ${(period.business_ids || []).join(", ")}, from ${period.start} to `
        + `${period.end} (${period.time_zone}).`;
      root.dataset.state = "ready";
    } catch (err) {
      status.textContent = `The compare could not be loaded: ${err.message}`;
      root.dataset.state = "error";
    }
  }

  // --- The variants offered: the dimension's most used values for the business in the period, from the
  // breakdown API (any other value may still be typed).

  const form = document.getElementById("compare-form");
  const values = document.getElementById("variant-values");
  const valuesStatus = document.getElementById("variant-values-status");

  async function offerVariants() {
    const business = form.elements.business.value;
    const dimension = form.elements.dimension.value;
    values.textContent = "";
    if (!business) return;
    values.dataset.state = "loading";
    try {
      const answer = await getJSON(config.api.values[dimension], { ...config.values_params, business_id: business });
      const keys = answer.rows.map((row) => row.key).filter((key) => key !== null && key !== "");
      for (const key of keys) node("option", {}, values).value = key;
      valuesStatus.textContent = keys.length
        ? `${keys.length} value(s) of ${dimension} seen in this period are offered in the variant fields.`
        : `No value of ${dimension} seen in this period; type the variants.`;
      values.dataset.state = "ready";
    } catch (err) {
      valuesStatus.textContent = `The recent values could not be loaded (${err.message}); type the variants.`;
      values.dataset.state = "error";
    }
  }

  form.elements.business.addEventListener("change", offerVariants);
  form.elements.dimension.addEventListener("change", offerVariants);
  for (const input of form.querySelectorAll('input[type="date"]')) {
    input.addEventListener("change", () => { form.elements.period.value = "custom"; });
  }

  offerVariants();
  if (config.mode !== "choose") load();
})();
