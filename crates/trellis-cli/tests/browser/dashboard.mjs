// Opens the dashboard in headless Chromium and checks what an operator would look at:
// the service graph shows the expected services with traffic, and the golden-metrics table
// has their rows. Prints one JSON line with what it saw; exits non-zero on failure.
// Usage: node dashboard.mjs URL SCREENSHOT SERVICE...
import { chromium } from 'playwright-core';

const [url, screenshot, ...services] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
});
let failure = null;
const seen = {};
const errors = [];
try {
  const page = await browser.newPage({ viewport: { width: 1440, height: 1000 } });
  page.on('pageerror', (e) => errors.push(String(e)));
  page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
  await page.goto(url);
  for (const service of services) {
    // The graph redraws every 5 s; wait until this node shows traffic.
    const node = `#graph .node[data-service="${service}"]`;
    await page.waitForFunction(
      (selector) => { const n = document.querySelector(selector); return n && Number(n.dataset.rps) > 0; },
      node,
      { timeout: 60000 },
    );
    seen[service] = Number(await page.getAttribute(node, 'data-rps'));
    await page.waitForSelector(`#services tr[data-service="${service}"]`, { timeout: 10000 });
  }
  seen.edges = await page.$$eval('#graph .edge', (edges) => edges.map((e) => `${e.dataset.from}->${e.dataset.to}`));
  seen.history = await page.$$eval('#history tbody tr', (rows) => rows.length);
  // Let the sparklines fill in, then keep a picture of it.
  await page.waitForTimeout(1500);
  await page.screenshot({ path: screenshot, fullPage: true });
} catch (e) {
  failure = String(e);
}
await browser.close();
console.log(JSON.stringify({ seen, errors, failure }));
process.exit(failure || errors.length ? 1 : 0);
