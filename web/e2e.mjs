// End-to-end test of the map page in Debian's Chromium, driven by playwright-core (no browser
// download). Usage: node web/e2e.mjs QUERY_BASE_URL SCREENSHOT_PATH [ADMIN_TOKEN]
// Loads the page, checks that the built-in basemap draws (land, place names), waits for rendered
// hexes, switches layers, clicks a hex and checks the popup's numbers against the API, and saves a
// screenshot; draws a pilot's area on the map, creates it (with the admin token) and checks its
// report, charts and before/during maps (a second screenshot, `pilot.png` beside the first); then
// loads the page in a Chromium without WebGL and checks the fallback table. Exit status 0 only if
// every check held.
import { chromium } from 'playwright-core';

const [base, shot, adminToken] = process.argv.slice(2);
const executablePath = process.env.HEXPULSE_CHROMIUM || '/usr/bin/chromium';
const fail = (msg) => { console.error(`e2e: FAIL: ${msg}`); process.exit(1); };
const log = (msg) => console.error(`e2e: ${msg}`);

const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--use-angle=swiftshader', '--enable-unsafe-swiftshader',
    '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update',
    '--disable-sync'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 800 } });
  const outside = [];
  page.on('request', (r) => { if (!r.url().startsWith(base) && !r.url().startsWith('data:') && !r.url().startsWith('blob:')) outside.push(r.url()); });
  page.on('pageerror', (e) => log(`page error: ${e}`));
  await page.goto(`${base}/`);
  await page.waitForFunction(() => window.hexpulse && window.hexpulse.ready, null, { timeout: 30_000 });
  log('map loaded');

  // The basemap draws under the hexes without any outside request (checked at the end): land with
  // its coastline, the borders' data, and place names, among them the most populous place on screen.
  await page.waitForFunction(() => window.hexpulse.state.basemap, null, { timeout: 30_000 })
    .catch(() => fail('the basemap did not load within 30 s'));
  await page.waitForFunction(() => {
    const m = window.hexpulse.map;
    return m.loaded() && m.queryRenderedFeatures({ layers: ['basemap-land'] }).length > 0
      && m.queryRenderedFeatures({ layers: ['basemap-places'] }).length > 0;
  }, null, { timeout: 30_000 }).catch(() => fail('no land or no place names rendered within 30 s'));
  const basemap = await page.evaluate(() => {
    const m = window.hexpulse.map;
    const names = [...new Set(m.queryRenderedFeatures({ layers: ['basemap-places'] }).map((f) => f.properties.name))];
    // The most populous place well inside the screen: the labels' sort key places it first.
    const b = m.getBounds();
    const [dx, dy] = [(b.getEast() - b.getWest()) * 0.15, (b.getNorth() - b.getSouth()) * 0.15];
    const inside = m.getSource('basemap-places').serialize().data.features
      .filter((f) => { const [x, y] = f.geometry.coordinates; return x > b.getWest() + dx && x < b.getEast() - dx && y > b.getSouth() + dy && y < b.getNorth() - dy; })
      .sort((a, c) => c.properties.pop - a.properties.pop);
    const borders = m.getSource('basemap-borders').serialize().data.geometry?.coordinates?.length || 0;
    const land = m.queryRenderedFeatures({ layers: ['basemap-land'] }).length;
    const coast = m.getLayer('basemap-coast') && m.getLayoutProperty('basemap-coast', 'visibility') !== 'none';
    return { names, biggest: inside[0]?.properties.name, borders, land, coast };
  });
  log(`basemap: ${basemap.land} land polygons drawn, ${basemap.borders} border lines, ${basemap.names.length} place names on screen (${basemap.names.slice(0, 6).join(', ')})`);
  if (!basemap.biggest) fail('no place of the basemap inside the screen');
  if (!basemap.names.includes(basemap.biggest)) fail(`the most populous place on screen, ${basemap.biggest}, has no label`);
  if (basemap.borders < 100) fail(`the borders hold ${basemap.borders} lines`);
  if (!basemap.coast) fail('no coastline layer');
  const rendered = (layer) => page.evaluate((l) => window.hexpulse.map.queryRenderedFeatures({ layers: [`${l}-fill`] }).length, layer);
  await page.waitForFunction(() => window.hexpulse.map.queryRenderedFeatures({ layers: ['coverage-fill'] }).length > 0, null, { timeout: 60_000 })
    .catch(() => fail('no coverage hexes rendered within 60 s'));
  log(`coverage hexes rendered: ${await rendered('coverage')}`);

  // Switch layers: each becomes the visible one.
  for (const layer of ['air', 'road', 'deadzones', 'coverage']) {
    await page.check(`input[name=layer][value=${layer}]`);
    await page.waitForTimeout(300);
    const vis = await page.evaluate((l) => window.hexpulse.map.getLayoutProperty(`${l}-fill`, 'visibility'), layer);
    if (vis !== 'visible') fail(`layer ${layer} not visible after switching`);
    if (layer === 'air') {
      await page.waitForFunction(() => window.hexpulse.map.queryRenderedFeatures({ layers: ['air-fill'] }).length > 0, null, { timeout: 30_000 })
        .catch(() => fail('no air hexes rendered'));
    }
    if (layer === 'deadzones') {
      await page.waitForFunction(() => window.hexpulse.map.querySourceFeatures('deadzones').length > 0, null, { timeout: 30_000 })
        .catch(() => fail('no dead zones loaded'));
    }
    log(`layer ${layer}: visible, ${await rendered(layer)} rendered`);
  }
  await page.selectOption('#metric', 'best_signal_dbm');

  // Freeze the window at a time the lake is complete up to (the watermark passed it), so the tiles
  // and the API answer from the same rows while traffic goes on.
  const to = Date.now() - 5_000;
  for (let i = 0; ; i++) {
    const r = await (await fetch(`${base}/readyz`)).json();
    if ((r.catalog.watermark_ms || 0) >= to) break;
    if (i > 120) fail(`the watermark did not pass ${new Date(to).toISOString()} within 60 s`);
    await new Promise((ok) => setTimeout(ok, 500));
  }
  await page.evaluate((w) => { window.hexpulse.state.frozen = w; window.hexpulse.refreshAll(); }, { from: to - 3_600_000, to });
  await page.waitForTimeout(1500);
  await page.waitForFunction(() => window.hexpulse.map.loaded() && window.hexpulse.map.queryRenderedFeatures({ layers: ['coverage-fill'] }).length > 0, null, { timeout: 30_000 })
    .catch(() => fail('no coverage hexes rendered in the frozen window'));

  // Click the biggest rendered coverage hex's centre and compare the popup with the API.
  const target = await page.evaluate(() => {
    const m = window.hexpulse.map;
    const fs = m.queryRenderedFeatures({ layers: ['coverage-fill'] });
    let best = null;
    for (const f of fs) {
      const ring = f.geometry.type === 'Polygon' ? f.geometry.coordinates[0] : f.geometry.coordinates[0][0];
      const pts = ring.map((c) => m.project(c));
      const xs = pts.map((p) => p.x); const ys = pts.map((p) => p.y);
      const w = Math.max(...xs) - Math.min(...xs);
      const cx = xs.reduce((a, b) => a + b, 0) / xs.length; const cy = ys.reduce((a, b) => a + b, 0) / ys.length;
      const inside = cx > 60 && cy > 60 && cx < m.getCanvas().clientWidth - 60 && cy < m.getCanvas().clientHeight - 60;
      if (inside && (!best || w > best.w)) best = { w, x: cx, y: cy, cell: f.properties.cell };
    }
    return best;
  });
  if (!target) fail('no coverage hex fully on screen to click');
  const box = await page.locator('#map canvas').boundingBox();
  await page.mouse.click(box.x + target.x, box.y + target.y);
  await page.waitForSelector('.hex-popup', { timeout: 10_000 }).catch(() => fail('no popup after clicking a hex'));
  await page.waitForFunction(() => !document.querySelector('.hex-popup .fresh').textContent.includes('loading'), null, { timeout: 15_000 });
  const popup = await page.evaluate(() => {
    const el = document.querySelector('.hex-popup');
    const nums = {};
    for (const td of el.querySelectorAll('td[data-key]')) nums[td.dataset.key] = td.textContent;
    return { cell: el.dataset.cell, nums, fresh: el.querySelector('.fresh').textContent };
  });
  log(`popup for ${popup.cell}: ${JSON.stringify(popup.nums)}; ${popup.fresh}`);
  if (!popup.fresh.includes('newest event 20')) fail(`popup shows no freshness: ${popup.fresh}`);
  // The API's numbers for the same hex and window.
  const win = await page.evaluate(() => window.hexpulse.state.window);
  const res = parseInt(popup.cell[1], 16);
  const c = await page.evaluate(() => window.hexpulse.map.getBounds().toArray().flat());
  const api = await (await fetch(`${base}/v1/coverage?bbox=${c.map((v) => v.toFixed(5)).join(',')}&res=${res}&from=${win.from}&to=${win.to}`)).json();
  const feature = api.features.find((f) => f.properties.cell === popup.cell);
  if (!feature) fail(`the API has no hex ${popup.cell}`);
  for (const k of ['devices', 'heartbeats', 'speed_tests']) {
    if (String(feature.properties[k]) !== popup.nums[k]) fail(`${k}: popup ${popup.nums[k]}, API ${feature.properties[k]}`);
  }
  const best = feature.properties.best_signal_dbm;
  if (Math.abs(best - Number(popup.nums.best_signal_dbm)) > 0.01) fail(`best_signal_dbm: popup ${popup.nums.best_signal_dbm}, API ${best}`);
  log('popup numbers match the API');

  // The epoch view: per-device summaries of the sealed epoch; a hotspot's hexes on the map.
  await page.click('#epochs-button');
  await page.waitForSelector('#epoch-table tr.device', { timeout: 15_000 }).catch(() => fail('no device rows in the epoch view'));
  const rows = await page.locator('#epoch-table tr.device').count();
  const hotspot = page.locator('#epoch-table tr.device', { hasText: 'heartbeat' }).first();
  await hotspot.click();
  await page.waitForFunction(() => window.hexpulse.map.getSource('device').serialize().data.features?.length > 0, null, { timeout: 15_000 })
    .catch(() => fail('clicking a hotspot showed none of its hexes'));
  log(`epoch view: ${rows} devices; a hotspot's hexes shown`);
  await page.waitForFunction(() => window.hexpulse.map.loaded(), null, { timeout: 20_000 }).catch(() => log('the map was still loading at the screenshot'));
  await page.screenshot({ path: shot });
  log(`screenshot: ${shot}`);

  // The pilot page: draw an area around the map's centre, create the pilot (the page asks for a
  // token: only admin may create pilots under make up), then its report, charts and the area
  // before and during.
  if (adminToken) {
    await page.click('#pilots-button');
    await page.waitForSelector('#pilots:not([hidden])');
    await page.evaluate(() => {
      const m = window.hexpulse.map;
      m.jumpTo({ center: window.hexpulse.state.config.center, zoom: 11 });
    });
    await page.waitForTimeout(500);
    await page.click('#pilot-new summary');
    await page.fill('#pilot-name', 'e2e pilot');
    const local = (ms) => { const d = new Date(ms - new Date().getTimezoneOffset() * 60_000); return d.toISOString().slice(0, 19); };
    await page.fill('#pilot-start', local(Date.now() - 45_000));
    await page.click('#pilot-draw');
    const canvas = await page.locator('#map canvas').boundingBox();
    const cx = canvas.x + canvas.width * 0.35; const cy = canvas.y + canvas.height / 2;
    for (const [dx, dy] of [[-220, -160], [220, -160], [220, 160], [-220, 160]]) {
      await page.mouse.click(cx + dx, cy + dy);
      await page.waitForTimeout(150);
    }
    const corners = await page.evaluate(() => window.hexpulse.map.getSource('pilot-draft').serialize().data.features.length);
    if (corners < 5) fail(`drawing: ${corners} draft features after 4 clicks`);
    await page.click('#pilot-create');
    await page.waitForSelector('#token-dialog[open]', { timeout: 10_000 }).catch(() => fail('creating a pilot did not ask for a token'));
    await page.fill('#token-input', adminToken);
    await page.click('#token-dialog button');
    await page.waitForFunction(() => window.hexpulse.pilot.report, null, { timeout: 60_000 })
      .catch(async () => fail(`no pilot report: ${await page.textContent('#pilot-hint')} ${await page.textContent('#pilot-report')}`));
    await page.waitForFunction(() => window.hexpulse.map.loaded() && window.hexpulse.map.queryRenderedFeatures({ layers: ['pilot-fill'] }).length > 0, null, { timeout: 20_000 })
      .catch(() => fail('the pilot\'s cells are not drawn on the map within 20 s'));
    const seen = await page.evaluate(() => {
      const r = window.hexpulse.pilot.report;
      return {
        cells: r.pilot.cells, during: r.coverage.covered_cells_during, series: r.series.length,
        before: document.querySelectorAll('#svg-before path').length,
        duringPaths: document.querySelectorAll('#svg-during path').length,
        duringCovered: document.querySelectorAll('#svg-during path.covered').length,
        charts: document.querySelectorAll('#pilots .uplot canvas').length,
        onMap: window.hexpulse.map.queryRenderedFeatures({ layers: ['pilot-fill'] }).length,
        text: document.querySelector('#pilot-report').textContent,
      };
    });
    log(`pilot: ${seen.cells} cells, ${seen.during} covered during, ${seen.series} buckets, ${seen.charts} charts, ${seen.onMap} cells drawn on the map`);
    if (seen.before !== seen.cells || seen.duringPaths !== seen.cells) fail(`the before/during maps show ${seen.before}/${seen.duringPaths} cells of ${seen.cells}`);
    if (seen.during < 1 || seen.duringCovered < 1) fail(`no covered cell during the pilot: ${seen.text}`);
    if (seen.charts < 2) fail(`${seen.charts} charts`);
    if (seen.onMap < 1) fail('the pilot\'s cells are not on the map');
    if (!seen.text.includes('e2e pilot') || !seen.text.includes('coverage')) fail(`report text: ${seen.text.slice(0, 300)}`);
    await page.waitForFunction(() => window.hexpulse.map.loaded(), null, { timeout: 20_000 }).catch(() => log('the map was still loading at the pilot screenshot'));
    const pilotShot = shot.replace(/[^/]*$/, 'pilot.png');
    await page.screenshot({ path: pilotShot });
    log(`pilot screenshot: ${pilotShot}`);
  } else {
    log('no admin token: the pilot page is not checked');
  }
  if (outside.length) fail(`requests left Hexpulse: ${outside.slice(0, 5).join(' ')}`);
} finally {
  await browser.close();
}

// Plain headless Chromium (no SwiftShader) has no WebGL 2: the page says what to enable and lists
// the hexes as a table.
const plain = await chromium.launch({
  executablePath,
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-3d-apis', '--no-first-run', '--disable-quic',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  const page = await plain.newPage({ viewport: { width: 1200, height: 800 } });
  page.on('pageerror', (e) => log(`page error (no WebGL): ${e}`));
  await page.goto(`${base}/`);
  await page.waitForSelector('#no-webgl tr.hex', { timeout: 30_000 })
    .catch(() => fail('without WebGL: no table of hexes'));
  const text = await page.textContent('#no-webgl');
  if (!text.includes('needs WebGL 2') || !text.includes('--use-angle=swiftshader')) fail(`without WebGL: the page does not say what to enable: ${text.slice(0, 200)}`);
  log(`without WebGL: a message and ${await page.locator('#no-webgl tr.hex').count()} hexes in a table`);
} finally {
  await plain.close();
}
console.log('e2e: ok');
