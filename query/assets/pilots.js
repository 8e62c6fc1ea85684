// The pilot page: choose a pilot or draw a new area on the map, then see its report
// (schemas/PILOTS.md): the numbers, two charts (uPlot) and the area's coverage before and during
// the pilot side by side. Like the rest of the page it talks to nobody but Hexpulse.
import uPlot from '/assets/vendor/uPlot.esm.js';

const EMPTY = { type: 'FeatureCollection', features: [] };

/** The map layers of the pilot page: the chosen pilot's cells and the area being drawn. */
export function pilotSources() {
  return { 'pilot-area': { type: 'geojson', data: EMPTY }, 'pilot-draft': { type: 'geojson', data: EMPTY } };
}

export function pilotLayers() {
  return [
    { id: 'pilot-fill', type: 'fill', source: 'pilot-area', paint: {
      'fill-color': ['case', ['get', 'covered_during'], '#1a9850', '#f46d43'], 'fill-opacity': 0.45 } },
    { id: 'pilot-line', type: 'line', source: 'pilot-area', paint: { 'line-color': '#333', 'line-width': 0.6 } },
    { id: 'pilot-draft-fill', type: 'fill', source: 'pilot-draft', filter: ['==', ['geometry-type'], 'Polygon'],
      paint: { 'fill-color': '#6a51a3', 'fill-opacity': 0.2 } },
    { id: 'pilot-draft-line', type: 'line', source: 'pilot-draft', paint: { 'line-color': '#6a51a3', 'line-width': 2, 'line-dasharray': [2, 1] } },
    { id: 'pilot-draft-points', type: 'circle', source: 'pilot-draft', filter: ['==', ['geometry-type'], 'Point'],
      paint: { 'circle-radius': 4, 'circle-color': '#6a51a3' } },
  ];
}

const pct = (v) => (v == null ? '–' : `${(100 * v).toFixed(1)}%`);
const num = (v, digits = 1) => (v == null ? '–' : Number(v).toFixed(digits));
const usd = (v) => (v == null ? '–' : `$${Math.round(v).toLocaleString('en')}`);
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

/**
 * Wires the pilot panel. `ctx` has the map, `api(path)` (GET JSON with the page's token),
 * `send(method, path, body)` and `$`.
 */
export function initPilots(ctx) {
  const { map, api, send, $ } = ctx;
  const draft = [];
  let drawing = false;
  const charts = [];
  const pilot = { id: null, report: null, drawing: false };
  window.hexpulse.pilot = pilot;

  const showDraft = () => {
    const features = draft.map((c) => ({ type: 'Feature', geometry: { type: 'Point', coordinates: c }, properties: {} }));
    if (draft.length >= 2) {
      features.push({ type: 'Feature', properties: {}, geometry: draft.length >= 3
        ? { type: 'Polygon', coordinates: [[...draft, draft[0]]] }
        : { type: 'LineString', coordinates: draft } });
    }
    map.getSource('pilot-draft').setData({ type: 'FeatureCollection', features });
    $('pilot-create').disabled = !(draft.length >= 3 && $('pilot-name').value.trim());
    $('pilot-hint').textContent = drawing
      ? `${draft.length} corners: click on the map to add more, then Create.`
      : '';
  };

  const startDrawing = () => {
    drawing = true;
    pilot.drawing = true;
    draft.length = 0;
    map.doubleClickZoom.disable();
    map.getCanvas().style.cursor = 'crosshair';
    showDraft();
  };
  const stopDrawing = () => {
    drawing = false;
    pilot.drawing = false;
    map.doubleClickZoom.enable();
    map.getCanvas().style.cursor = '';
  };
  map.on('click', (e) => {
    if (!drawing) return;
    draft.push([Number(e.lngLat.lng.toFixed(6)), Number(e.lngLat.lat.toFixed(6))]);
    showDraft();
  });

  async function loadList(select) {
    const list = await api('/v1/pilots');
    const sel = $('pilot-select');
    sel.innerHTML = '<option value="">choose a pilot</option>' + list.pilots.map((p) =>
      `<option value="${p.id}">${esc(p.name)} · ${p.cell_count} cells · from ${p.start.slice(0, 10)}</option>`).join('');
    if (select) sel.value = select;
    if (sel.value) await show(sel.value);
  }

  async function create() {
    const start = $('pilot-start').value ? new Date($('pilot-start').value) : new Date();
    const end = $('pilot-end').value ? new Date($('pilot-end').value) : null;
    const body = {
      name: $('pilot-name').value.trim(),
      start: start.toISOString(),
      ...(end ? { end: end.toISOString() } : {}),
      area: { type: 'Polygon', coordinates: [[...draft, draft[0]]] },
    };
    try {
      const p = await send('POST', '/v1/pilots', body);
      stopDrawing();
      draft.length = 0;
      showDraft();
      await loadList(p.id);
    } catch (e) {
      $('pilot-hint').textContent = String(e);
    }
  }

  function drawCharts(series, bucketS) {
    for (const c of charts.splice(0)) c.destroy();
    const xs = series.map((r) => Date.parse(r.bucket_start) / 1000);
    // The whole span of the buckets, also when there is only one.
    const span = xs.length ? [xs[0], xs[xs.length - 1] + bucketS] : [0, bucketS];
    const width = Math.max(260, $('pilots').clientWidth - 30);
    const opts = (title, label, s) => ({
      title, width, height: 150, legend: { show: true },
      scales: { x: { time: true, range: () => span } },
      axes: [{}, { label, size: 50 }],
      series: [{}, ...s],
    });
    charts.push(new uPlot(opts('Coverage of the area', 'share %', [
      { label: 'covered in the bucket', stroke: '#2b8cbe' },
      { label: 'covered since the start', stroke: '#1a9850', width: 2 },
    ]), [xs, series.map((r) => 100 * r.covered_share), series.map((r) => (r.cumulative_covered_share == null ? null : 100 * r.cumulative_covered_share))],
    $('chart-coverage')));
    charts.push(new uPlot(opts('Active devices', 'devices', [
      { label: 'active devices', stroke: '#6a51a3', fill: '#6a51a322' },
    ]), [xs, series.map((r) => r.active_devices)], $('chart-devices')));
  }

  /** The area's cells as two small maps: covered before, covered during. */
  function drawCompare(fc) {
    const rings = fc.features.map((f) => f.geometry.coordinates[0]);
    const pts = rings.flat();
    if (!pts.length) return;
    const xs = pts.map((p) => p[0]);
    const ys = pts.map((p) => p[1]);
    const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
    const k = Math.cos(((y0 + y1) / 2) * Math.PI / 180);
    const w = Math.max((x1 - x0) * k, y1 - y0) || 1;
    const path = (ring) => 'M' + ring.map(([x, y]) => `${(((x - x0) * k) / w * 200).toFixed(1)},${((y1 - y) / w * 200).toFixed(1)}`).join('L') + 'Z';
    for (const [id, key] of [['svg-before', 'covered_before'], ['svg-during', 'covered_during']]) {
      const svg = $(id);
      svg.setAttribute('viewBox', '-2 -2 204 204');
      svg.innerHTML = fc.features.map((f) => `<path class="${f.properties[key] ? 'covered' : 'dead'}" d="${path(f.geometry.coordinates[0])}"></path>`).join('');
    }
  }

  async function show(id) {
    pilot.id = id;
    pilot.report = null;
    $('pilot-report').textContent = 'loading…';
    const [r, fc] = await Promise.all([api(`/v1/pilots/${id}/report`), api(`/v1/pilots/${id}/report?format=geojson`)]);
    if (pilot.id !== id) return;
    const c = r.coverage; const d = r.deployment; const cost = r.cost;
    const qrow = (name, unit) => {
      const b = r.quality.before?.[name]; const du = r.quality.during?.[name];
      return `<tr><td>${name} p50 (p10–p90)</td><td>${num(b?.p50)} <small>(${num(b?.p10)}–${num(b?.p90)})</small></td>
        <td>${num(du?.p50)} <small>(${num(du?.p10)}–${num(du?.p90)})</small></td><td>${unit}</td></tr>`;
    };
    $('pilot-report').innerHTML = `<p><b>${esc(r.pilot.name)}</b> · ${r.status} · ${r.pilot.cells} cells at res ${r.pilot.resolution}
      · ${r.windows.during.from.slice(0, 16)} → ${r.windows.during.to.slice(0, 16)}</p>
      <table class="pilot-numbers">
      <tr><th></th><th>before</th><th>during</th><th></th></tr>
      <tr><td>coverage</td><td data-key="share_before">${pct(c.covered_share_before)}</td><td data-key="share_during">${pct(c.covered_share_during)}</td><td>${c.covered_cells_before} → ${c.covered_cells_during} cells</td></tr>
      <tr><td>active devices</td><td>${d.active_devices_before}</td><td>${d.active_devices_during}</td><td></td></tr>
      ${qrow('download_mbps', 'Mbit/s')}${qrow('upload_mbps', 'Mbit/s')}${qrow('latency_ms', 'ms')}${qrow('signal_dbm', 'dBm')}
      </table>
      <p>Dead → covered: <b data-key="dead_to_covered">${c.dead_to_covered.length}</b> cells. 50% of the final coverage after
      <b>${num(d.hours_to_50pct_coverage)}</b> h, 90% after <b>${num(d.hours_to_90pct_coverage)}</b> h (traditional: ${d.baseline_days_to_deploy} days a site).</p>
      <p>Cost: ${cost.points} points in ${cost.rests_on.epochs.length} sealed epochs = <b>${usd(cost.rewards_usd)}</b>,
      ${usd(cost.cost_per_covered_cell_usd)} per covered cell against ${usd(cost.baseline_cost_per_covered_cell_usd)} (traditional).</p>
      <p class="fresh">newest event ${r.freshness.newest_event_time || '–'}, watermark ${r.freshness.watermark || '–'}</p>`;
    drawCharts(r.series, r.windows.bucket === 'hour' ? 3600 : 86400);
    drawCompare(fc);
    map.getSource('pilot-area').setData(fc);
    const pts = fc.features.flatMap((f) => f.geometry.coordinates[0]);
    if (pts.length) {
      const xs = pts.map((p) => p[0]); const ys = pts.map((p) => p[1]);
      map.fitBounds([[Math.min(...xs), Math.min(...ys)], [Math.max(...xs), Math.max(...ys)]], { padding: 60, maxZoom: 14 });
    }
    pilot.report = r;
  }

  $('pilots-button').addEventListener('click', () => {
    const panel = $('pilots');
    panel.hidden = !panel.hidden;
    if (!panel.hidden) {
      $('epochs').hidden = true;
      loadList().catch((e) => { $('pilot-report').textContent = String(e); });
    }
  });
  $('pilot-select').addEventListener('change', () => {
    if ($('pilot-select').value) show($('pilot-select').value).catch((e) => { $('pilot-report').textContent = String(e); });
  });
  $('pilot-draw').addEventListener('click', startDrawing);
  $('pilot-name').addEventListener('input', showDraft);
  $('pilot-create').addEventListener('click', create);
}
