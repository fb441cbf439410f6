/* Per-class pixel-share bar chart as inline SVG (no chart library: the UI works offline).
 *
 * renderShareChart(classes, shares, title) -> <figure> holding an <svg role="img"> with one bar per
 * class (in class-id order, so it reads next to the legend) and a text summary for screen readers.
 */
(function (global) {
  "use strict";

  const SVG = "http://www.w3.org/2000/svg";

  function el(name, attrs, text) {
    const node = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function percent(share) {
    const p = share * 100;
    return p > 0 && p < 0.1 ? "<0.1%" : `${p.toFixed(1)}%`;
  }

  function renderShareChart(classes, shares, title) {
    const rowH = 18;
    const labelW = 104;
    const barW = 150;
    const valueW = 48;
    const width = labelW + barW + valueW;
    const height = classes.length * rowH + 4;
    const max = Math.max(1e-9, ...classes.map((c) => shares[c.id] || 0));

    const figure = document.createElement("figure");
    figure.className = "share-chart";
    const svg = el("svg", {
      viewBox: `0 0 ${width} ${height}`,
      width,
      height,
      role: "img",
      "aria-label": title,
    });
    svg.appendChild(el("title", {}, title));
    classes.forEach((c, i) => {
      const share = shares[c.id] || 0;
      const y = i * rowH + 2;
      const g = el("g", { class: "bar", "data-class": c.name, "data-share": share.toFixed(6) });
      g.appendChild(el("text", { x: labelW - 6, y: y + 12, "text-anchor": "end" }, c.name));
      g.appendChild(el("rect", { x: labelW, y: y + 2, width: barW, height: rowH - 5, class: "track" }));
      g.appendChild(
        el("rect", {
          x: labelW,
          y: y + 2,
          width: Math.max(share > 0 ? 1 : 0, (share / max) * barW),
          height: rowH - 5,
          fill: c.css,
          class: "fill",
        }),
      );
      g.appendChild(el("text", { x: labelW + barW + 6, y: y + 12, class: "value" }, percent(share)));
      svg.appendChild(g);
    });
    figure.appendChild(svg);

    const caption = document.createElement("figcaption");
    caption.className = "visually-hidden";
    const top = classes
      .filter((c) => (shares[c.id] || 0) > 0)
      .sort((a, b) => shares[b.id] - shares[a.id])
      .map((c) => `${c.name} ${percent(shares[c.id])}`);
    caption.textContent = `${title}: ${top.join(", ") || "no pixels"}`;
    figure.appendChild(caption);
    return figure;
  }

  global.RoadsegChart = { renderShareChart };
})(window);
