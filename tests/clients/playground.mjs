// Drives the browser playground (clients/web/dist) in headless Debian Chromium with
// playwright-core: every panel against the real stack through Envoy's grpc-web listener.
// Usage: node playground.mjs PAGE_URL ARTIFACT_DIR IMAGE_A IMAGE_B
// Prints one JSON object with what each panel showed; screenshots go to ARTIFACT_DIR.
import { createRequire } from "node:module";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { join } from "node:path";
import { tmpdir } from "node:os";

const [pageUrl, artifacts, imageA, imageB] = process.argv.slice(2);
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
    // A fake microphone (a beep) that needs no permission prompt, and audio without a gesture.
    "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
  ],
});
const page = await context.newPage();
const log = [];
page.on("console", (m) => log.push(`[console] ${m.text()}`));
page.on("pageerror", (e) => log.push(`[pageerror] ${e.message}`));
page.on("requestfailed", (r) => log.push(`[requestfailed] ${r.url()} ${r.failure()?.errorText}`));

const results = { log };
const state = (panel) => page.getAttribute(`#panel-${panel}`, "data-state");
const text = (selector) => page.textContent(selector);

/** Waits until a panel leaves "running" (done or error); returns its state. */
async function settle(panel, timeout = 120_000) {
  await page.waitForFunction(
    (p) => ["done", "error"].includes(document.getElementById(`panel-${p}`).dataset.state),
    panel,
    { timeout },
  );
  return state(panel);
}

/** Records every text a status line shows while a call runs. */
async function watch(selector) {
  await page.evaluate((sel) => {
    window.__seen = window.__seen || {};
    const seen = (window.__seen[sel] = []);
    const node = document.querySelector(sel);
    new MutationObserver(() => seen.push(node.textContent)).observe(node, {
      childList: true, characterData: true, subtree: true,
    });
  }, selector);
}
const seen = (selector) => page.evaluate((sel) => window.__seen[sel], selector);

async function step(name, fn) {
  try {
    results[name] = await fn();
    // Tabs: exactly the current panel is shown.
    results[name].visiblePanels = await page.locator(".panel:visible").count();
  } catch (error) {
    results[name] = { error: String(error) };
  }
  await page.screenshot({ path: join(artifacts, `${name}.png`), fullPage: true });
}

try {
  await page.goto(pageUrl);
  await step("health", async () => {
    await page.waitForFunction(() => (document.getElementById("health").textContent.match(/✓/g) || []).length === 4, null, { timeout: 60_000 });
    return { text: await text("#health") };
  });

  await step("t2i", async () => {
    await page.click("#tab-t2i");
    await page.fill("#t2i-prompt", "a red fox");
    await page.fill("#t2i-steps", "4");
    await page.fill("#t2i-seed", "7");
    await page.fill("#t2i-preview-every", "1");
    // Options beyond size and steps; the scheduler list comes from GetModelInfo.
    await page.waitForSelector("#t2i-scheduler option[value=EulerDiscreteScheduler]", { state: "attached", timeout: 30_000 });
    await page.selectOption("#t2i-scheduler", "EulerDiscreteScheduler");
    await page.fill("#t2i-negative", "blurry");
    await page.fill("#t2i-guidance", "3.5");
    await watch("#t2i-status");
    await page.click("#t2i-run");
    const final = await settle("t2i");
    const imageBase64 = await page.evaluate(async () => {
      const img = document.querySelector("#t2i-images img");
      if (!img) return "";
      const bytes = new Uint8Array(await (await fetch(img.src)).arrayBuffer());
      return btoa(Array.from(bytes, (b) => String.fromCharCode(b)).join(""));
    });
    await page.selectOption("#t2i-scheduler", "");
    await page.fill("#t2i-negative", "");
    await page.fill("#t2i-guidance", "");
    return {
      state: final,
      imageBase64,
      schedulers: await page.locator("#t2i-scheduler option").count(),
      status: await text("#t2i-status"),
      statuses: await seen("#t2i-status"),
      previews: Number(await page.getAttribute("#panel-t2i", "data-previews")),
      images: await page.locator("#t2i-images img").count(),
      progress: await page.getAttribute("#t2i-progress", "value"),
      jobId: await page.getAttribute("#panel-t2i", "data-job-id"),
      notice: (await page.isVisible("#t2i-notice")) ? await text("#t2i-notice") : "",
      randomWeights: await page.getAttribute("#panel-t2i", "data-random-weights"),
    };
  });

  await step("t2i_stop", async () => {
    await page.fill("#t2i-steps", "150");
    await page.fill("#t2i-preview-every", "0");
    await page.click("#t2i-run");
    await page.waitForFunction(() => /step [3-9]/.test(document.getElementById("t2i-status").textContent), null, { timeout: 60_000 });
    const jobId = await page.getAttribute("#panel-t2i", "data-job-id");
    await page.click("#t2i-stop");
    return { state: await settle("t2i"), status: await text("#t2i-status"), jobId };
  });

  await step("t2i_error", async () => {
    await page.fill("#t2i-steps", "2");
    await page.fill("#t2i-width", "65");
    await page.click("#t2i-run");
    const final = await settle("t2i");
    await page.fill("#t2i-width", "");
    return { state: final, status: await text("#t2i-status") };
  });

  await step("t2i_inpaint", async () => {
    await page.selectOption("#t2i-mode", "inpaint");
    await page.setInputFiles("#t2i-image", [imageA]);
    await page.waitForSelector("#t2i-mask-canvas", { state: "visible", timeout: 30_000 });
    // A stroke across the middle of the picture: the area to repaint.
    const box = await page.locator("#t2i-mask-canvas").boundingBox();
    await page.mouse.move(box.x + box.width * 0.3, box.y + box.height * 0.5);
    await page.mouse.down();
    await page.mouse.move(box.x + box.width * 0.7, box.y + box.height * 0.5, { steps: 8 });
    await page.mouse.up();
    await page.fill("#t2i-steps", "2");
    await page.click("#t2i-run");
    const final = await settle("t2i");
    const result = {
      state: final,
      status: await text("#t2i-status"),
      images: await page.locator("#t2i-images img").count(),
      maskDrawn: await page.getAttribute("#t2i-inputs", "data-mask-drawn"),
      editDisabled: await page.locator("#t2i-mode option[value=edit]").evaluate((o) => o.disabled),
    };
    await page.selectOption("#t2i-mode", "generate");
    return result;
  });

  await step("vl", async () => {
    await page.click("#tab-vl");
    await page.setInputFiles("#vl-images", [imageA]);
    await page.fill("#vl-prompt", "What is in this picture?");
    await page.fill("#vl-max-tokens", "8");
    await watch("#vl-log");
    await page.click("#vl-send");
    const final = await settle("vl");
    return {
      state: final,
      status: await text("#vl-status"),
      answer: await text("#vl-log .msg.assistant"),
      updates: (await seen("#vl-log")).length,
      userImages: await page.locator("#vl-log .msg.user img").count(),
    };
  });

  await step("vision", async () => {
    await page.click("#tab-vision");
    await page.setInputFiles("#vision-images", [imageA, imageB]);
    await page.fill("#vision-texts", "a red square\na blue square\na dog");
    await page.click("#vision-similarity");
    const similarity = await settle("vision");
    const cells = await page.locator("#vision-matrix td").allTextContents();
    await page.fill("#vision-labels", "red, blue, green");
    await page.click("#vision-classify");
    const classify = await settle("vision");
    const bars = await page.locator("#vision-classes .bar").allTextContents();
    const status = await text("#vision-status");
    await page.fill("#vision-collection", `pg-${Date.now()}`);
    await page.click("#vision-add");
    const added = await settle("vision");
    const addedStatus = await text("#vision-status");
    await page.fill("#vision-query", "a blue square");
    await page.click("#vision-search");
    const searched = await settle("vision");
    return {
      similarity,
      cells,
      classify,
      bars,
      status,
      added,
      addedStatus,
      searched,
      hits: await page.locator("#vision-hits li").allTextContents(),
      hitImages: await page.locator("#vision-hits img").count(),
    };
  });

  await step("omni", async () => {
    await page.click("#tab-omni");
    await page.waitForFunction(() => document.getElementById("omni-voice").options.length > 1, null, { timeout: 30_000 });
    await page.click("#omni-record");
    await page.waitForTimeout(1500);
    await page.click("#omni-record");
    await page.waitForFunction(() => document.getElementById("panel-omni").dataset.recorded, null, { timeout: 10_000 });
    const recorded = Number(await page.getAttribute("#panel-omni", "data-recorded"));
    await page.fill("#omni-prompt", "Say hello.");
    await page.fill("#omni-max-tokens", "8");
    await page.click("#omni-send");
    const final = await settle("omni");
    return {
      state: final,
      recorded,
      status: await text("#omni-status"),
      answer: await text("#omni-log .msg.assistant"),
      speechSeconds: Number(await page.getAttribute("#panel-omni", "data-speech-seconds")),
      audioSrc: Boolean(await page.getAttribute("#omni-audio", "src")),
      voices: await page.locator("#omni-voice option").count(),
    };
  });
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
console.log(JSON.stringify(results));
