// Opens the playground at the edge's own URL (what `python -m gateway.stack` prints) in headless
// Debian Chromium with playwright-core, with no ?edge= parameter: the page must call the edge
// on its own origin. Runs the text-to-image panel to its end and prints one JSON object with
// what the page showed and every URL it requested; a screenshot goes to ARTIFACT_DIR.
// Usage: MMSERVE_WEB_DIR=clients/web node served-page.mjs URL ARTIFACT_DIR
import { createRequire } from "node:module";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { join } from "node:path";
import { tmpdir } from "node:os";

const [pageUrl, artifacts] = process.argv.slice(2);
// playwright-core is a pinned dependency of the playground (clients/web/package.json).
const require = createRequire(join(process.env.MMSERVE_WEB_DIR, "package.json"));
const { chromium } = require("playwright-core");

mkdirSync(artifacts, { recursive: true });
const profile = mkdtempSync(join(tmpdir(), "mmserve-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1280, height: 900 },
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const results = { log: [], requests: [] };
try {
  const page = await context.newPage();
  page.on("console", (m) => results.log.push(`[console] ${m.text()}`));
  page.on("pageerror", (e) => results.log.push(`[pageerror] ${e.message}`));
  page.on("requestfailed", (r) => results.log.push(`[requestfailed] ${r.url()} ${r.failure()?.errorText}`));
  page.on("request", (r) => results.requests.push({ method: r.method(), url: r.url() }));
  try {
    await page.goto(pageUrl);
    results.origin = await page.evaluate(() => location.origin);
    results.edge = await page.inputValue("#edge");
    await page.waitForFunction(() => /t2i ✓/.test(document.getElementById("health").textContent), null, { timeout: 60_000 });
    results.health = await page.textContent("#health");
    await page.click("#tab-t2i");
    await page.fill("#t2i-prompt", "a red fox");
    await page.fill("#t2i-steps", "3");
    await page.fill("#t2i-seed", "7");
    await page.click("#t2i-run");
    await page.waitForFunction(
      () => ["done", "error"].includes(document.getElementById("panel-t2i").dataset.state),
      null,
      { timeout: 60_000 },
    );
    results.t2i = {
      state: await page.getAttribute("#panel-t2i", "data-state"),
      status: await page.textContent("#t2i-status"),
      jobId: await page.getAttribute("#panel-t2i", "data-job-id"),
      images: await page.locator("#t2i-images img").count(),
      progress: await page.getAttribute("#t2i-progress", "value"),
    };
  } catch (error) {
    results.error = String(error);
  }
  await page.screenshot({ path: join(artifacts, "t2i.png"), fullPage: true });
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
console.log(JSON.stringify(results));
