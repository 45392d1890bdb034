// Drives the test page in Debian's Chromium with playwright-core (no browser download):
//   node run-page.cjs <page url>
// Clicks Cancel once the long job runs, then prints the page's results as one JSON line.
// CommonJS, so NODE_PATH (tools/node_modules) resolves playwright-core.
const { chromium } = require("playwright-core");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");

async function main(url) {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "mmserve-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  try {
    const page = await context.newPage();
    page.on("console", (m) => console.error("[page]", m.text()));
    page.on("pageerror", (e) => console.error("[pageerror]", e.message));
    page.on("requestfailed", (r) => console.error("[requestfailed]", r.url(), r.failure()?.errorText));
    await page.goto(url);
    await page.waitForFunction(() => window.__phase === "running" || window.__results, null,
      { timeout: 60000 });
    if (!(await page.evaluate(() => window.__results))) {
      await page.click("#cancel");
    }
    await page.waitForFunction(() => window.__results, null, { timeout: 60000 });
    const results = await page.evaluate(() => window.__results);
    console.log(JSON.stringify(results));
  } finally {
    await context.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

main(process.argv[2]).catch((e) => {
  console.error(e);
  process.exit(1);
});
