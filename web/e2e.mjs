// End-to-end test of the map page in Debian's Chromium, driven by playwright-core (no browser
// download). Usage: node web/e2e.mjs QUERY_BASE_URL SCREENSHOT_PATH
// Loads the page, waits for rendered hexes, switches layers, clicks a hex and checks the popup's
// numbers against the API, and saves a screenshot; then loads it in a Chromium without WebGL and
// checks the fallback table. Exit status 0 only if every check held.
import { chromium } from 'playwright-core';

const [base, shot] = process.argv.slice(2);
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
  await page.screenshot({ path: shot });
  log(`screenshot: ${shot}`);
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
