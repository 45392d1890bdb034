// Drives the playground's live omni session in headless Debian Chromium with a fake microphone:
// Chromium plays WAV (looped) as the microphone and grants media permissions without a prompt.
// Usage: MMSERVE_WEB_DIR=clients/web node live-page.mjs '<json config>'
//   config: { url, scenario, wav?, artifacts, mode?, maxTokens?, hostRules?, sample?, chatTimeoutMs? }
// Prints one JSON object (what the page showed at each step) as its last line of output.
import { createRequire } from "node:module";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { join } from "node:path";
import { tmpdir } from "node:os";

const config = JSON.parse(process.argv[2]);
const require = createRequire(join(process.env.MMSERVE_WEB_DIR, "package.json"));
const { chromium } = require("playwright-core");

mkdirSync(config.artifacts, { recursive: true });
const profile = mkdtempSync(join(tmpdir(), "mmserve-live-"));
const args = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
  "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
  "--autoplay-policy=no-user-gesture-required",
];
if (config.wav) args.push(`--use-file-for-fake-audio-capture=${config.wav}`);
if (config.hostRules) args.push(`--host-resolver-rules=${config.hostRules}`);
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1280, height: 1000 },
  args,
});
const started = Date.now();
const results = { log: [], steps: {} };
const ms = () => Date.now() - started;

const live = (page) => page.evaluate(() => {
  const section = document.getElementById("omni-live");
  const texts = (selector) => [...document.querySelectorAll(selector)].map((e) => e.textContent);
  return {
    ...section.dataset,
    status: document.getElementById("omni-live-status").textContent,
    stats: document.getElementById("omni-live-stats").textContent,
    heard: texts("#omni-live-log .msg.user"),
    replies: texts("#omni-live-log .msg.assistant"),
    interrupted: document.querySelectorAll("#omni-live-log .msg.interrupted").length,
    buttons: Object.fromEntries(
      [...section.querySelectorAll("button")].map((b) => [b.id, !b.disabled]),
    ),
  };
});

/** Waits until `test(dataset)` holds for #omni-live's data-* attributes. */
const until = (page, test, timeout) =>
  page.waitForFunction(
    (source) => new Function("d", `return (${source})(d)`)(document.getElementById("omni-live").dataset),
    test.toString(),
    { timeout, polling: 100 },
  );

async function openPanel(page, url) {
  await page.goto(url);
  await page.waitForFunction(
    () => document.getElementById("panel-omni")?.dataset.described === "true",
    null,
    { timeout: 60_000 },
  );
}

async function startSession(page) {
  if (config.mode) await page.selectOption("#omni-live-mode", String(config.mode));
  if (config.maxTokens) await page.fill("#omni-live-max-tokens", String(config.maxTokens));
  if (config.speech === false) await page.uncheck("#omni-live-speech");
  await page.click("#omni-live-start");
  await until(page, (d) => ["listening", "responding", "error", "closed"].includes(d.state), 60_000);
  // The microphone runs once chunks are acknowledged.
  await until(page, (d) => Number(d.pushed) > 0 || ["error", "closed"].includes(d.state), 30_000);
  results.steps.opened = { ms: ms(), ...(await live(page)) };
}

/** A typed Chat from the panel's chat (text only), while the session is open. */
async function chatDuringSession(page) {
  await until(page, (d) => d.state === "listening", 60_000);
  await page.fill("#omni-prompt", "Say hello.");
  await page.uncheck("#omni-speech");
  await page.fill("#omni-max-tokens", "8");
  const sent = Date.now();
  await page.click("#omni-send");
  let served = true;
  try {
    await page.waitForFunction(
      () => ["done", "error"].includes(document.getElementById("panel-omni").dataset.state),
      null,
      { timeout: config.chatTimeoutMs ?? 30_000 },
    );
  } catch {
    served = false;
    await page.click("#omni-stop");
  }
  results.steps.chat = {
    served,
    seconds: (Date.now() - sent) / 1000,
    state: await page.getAttribute("#panel-omni", "data-state"),
    status: await page.textContent("#omni-status"),
    reply: await page.textContent("#omni-log .msg.assistant:last-child"),
    session: await live(page),
  };
}

async function pauseAndResume(page) {
  await page.click("#omni-live-pause");
  await until(page, (d) => d.state === "paused", 15_000);
  const atPause = await live(page);
  await page.waitForTimeout(1500);
  const later = await live(page);
  await page.click("#omni-live-resume");
  await until(page, (d) => d.state === "listening" || d.state === "responding", 15_000);
  const resumed = await live(page);
  const target = Number(resumed.pushed) + 5;
  await until(page, new Function("d", `return Number(d.pushed) >= ${target}`), 15_000);
  results.steps.pause = { atPause, later, resumed, after: await live(page) };
}

const scenarios = {
  /** Half duplex: a spoken turn answered in text and speech; Chat meanwhile; pause, resume; the tab closed. */
  async conversation(page) {
    await openPanel(page, config.url);
    await startSession(page);
    await until(page, (d) => Number(d.turns) >= 1 || d.state === "closed", 180_000);
    await until(page, (d) => Number(d.playedSeconds) > 0 || d.state === "closed", 60_000);
    results.steps.turn = { ms: ms(), ...(await live(page)) };
    await chatDuringSession(page);
    await pauseAndResume(page);
    results.sessionId = await page.getAttribute("#omni-live", "data-session-id");
    // Closing the tab: pagehide/beforeunload send CloseSession (keepalive).
    await page.close({ runBeforeUnload: true });
    await new Promise((r) => setTimeout(r, 2000));
    results.steps.closedTab = { ms: ms() };
  },
  /** One spoken turn, then the Close button. */
  async turn(page) {
    await openPanel(page, config.url);
    await startSession(page);
    await until(page, (d) => Number(d.turns) >= 1 || d.state === "closed", 180_000);
    await until(page, (d) => Number(d.audioBuffers) > 0 || d.state === "closed", 30_000);
    results.steps.turn = { ms: ms(), ...(await live(page)) };
    await page.click("#omni-live-close");
    await until(page, (d) => d.state === "closed", 15_000);
    results.steps.closed = await live(page);
  },
  /** Audio duplex: the looped question comes again while the reply plays and interrupts it. */
  async bargeIn(page) {
    await openPanel(page, config.url);
    await startSession(page);
    await until(page, (d) => Number(d.bargeIns) >= 1 || d.state === "closed", 240_000);
    results.steps.bargeIn = { ms: ms(), ...(await live(page)) };
    // The new speech becomes the next turn.
    await until(page, (d) => Number(d.transcripts) >= 2 || d.state === "closed", 120_000);
    results.steps.next = await live(page);
    await page.click("#omni-live-close");
    await until(page, (d) => d.state === "closed", 15_000);
    results.steps.closed = await live(page);
  },
  /** Omni duplex with the camera on: frames go with the speech; a turn is answered. */
  async camera(page) {
    await openPanel(page, config.url);
    await startSession(page);
    results.steps.cameraBefore = await live(page);
    await page.click("#omni-live-camera");
    await until(page, (d) => Number(d.frames) >= 2 || d.state === "closed", 30_000);
    results.steps.camera = {
      ...(await live(page)),
      preview: await page.isVisible("#omni-live-video"),
      label: await page.textContent("#omni-live-camera"),
    };
    await until(page, (d) => Number(d.turns) >= 1 || d.state === "closed", 180_000);
    results.steps.turn = await live(page);
    await page.click("#omni-live-camera");
    results.steps.cameraOff = {
      preview: await page.isVisible("#omni-live-video"),
      label: await page.textContent("#omni-live-camera"),
    };
    await page.click("#omni-live-close");
    await until(page, (d) => d.state === "closed", 15_000);
    results.steps.closed = await live(page);
  },
  /** The panel's record-and-send chat: a clip from the microphone, sent as one Chat. */
  async recordChat(page) {
    await openPanel(page, config.url);
    await page.click("#omni-record");
    await page.waitForTimeout(config.recordMs ?? 4000);
    await page.click("#omni-record");
    await page.waitForFunction(() => document.getElementById("panel-omni").dataset.recorded, null, { timeout: 10_000 });
    await page.fill("#omni-prompt", "");
    await page.uncheck("#omni-speech");
    await page.click("#omni-send");
    await page.waitForFunction(
      () => ["done", "error"].includes(document.getElementById("panel-omni").dataset.state),
      null,
      { timeout: 120_000 },
    );
    results.steps.recordChat = {
      recorded: await page.getAttribute("#panel-omni", "data-recorded"),
      state: await page.getAttribute("#panel-omni", "data-state"),
      status: await page.textContent("#omni-status"),
      reply: await page.textContent("#omni-log .msg.assistant:last-child"),
    };
  },
  /** CHAT mode: typed turns, no microphone. */
  async chatMode(page) {
    await openPanel(page, config.url);
    await page.selectOption("#omni-live-mode", String(config.mode));
    if (config.maxTokens) await page.fill("#omni-live-max-tokens", String(config.maxTokens));
    await page.click("#omni-live-start");
    await until(page, (d) => d.state === "listening" || d.state === "error", 60_000);
    await page.fill("#omni-live-text", config.text);
    await page.click("#omni-live-send");
    await until(page, (d) => Number(d.turns) >= 1 || d.state === "closed", 120_000);
    await until(page, (d) => d.state === "listening", 30_000);
    results.steps.chatMode = { textVisible: await page.isVisible("#omni-live-text"), ...(await live(page)) };
    await page.click("#omni-live-close");
    await until(page, (d) => d.state === "closed", 15_000);
  },
  /** A session left behind: its id is printed, then the driver waits to be killed. */
  async abandon(page) {
    await openPanel(page, config.url);
    await startSession(page);
    const id = await page.getAttribute("#omni-live", "data-session-id");
    console.log(`SESSION ${id}`);
    await new Promise(() => undefined);
  },
  /** The page at an origin that is not a secure context: no microphone, and it says why. */
  async insecure(page) {
    await openPanel(page, config.url);
    results.steps.insecure = {
      secure: await page.evaluate(() => window.isSecureContext),
      warning: await page.textContent("#omni-live-warning"),
      visible: await page.isVisible("#omni-live-warning"),
      startEnabled: await page.isEnabled("#omni-live-start"),
    };
  },
  /** A voice registered from an uploaded sample, listed, then deleted. */
  async voices(page) {
    await openPanel(page, config.url);
    await page.click("#omni-voices summary");
    const before = await page.getAttribute("#omni-voices", "data-registered");
    await page.fill("#omni-voice-name", "Browser sample");
    await page.setInputFiles("#omni-voice-file", config.sample);
    await page.click("#omni-voice-register");
    await page.waitForFunction(() => {
      const d = document.getElementById("omni-voices").dataset;
      return d.lastVoiceId || /:/.test(document.getElementById("omni-voice-status").textContent);
    }, null, { timeout: 30_000 });
    const voiceId = await page.getAttribute("#omni-voices", "data-last-voice-id");
    const listed = await page.locator("#omni-voice-list li").allTextContents();
    const options = await page.locator("#omni-live-voice option").evaluateAll((os) =>
      os.map((o) => ({ value: o.value, text: o.textContent, disabled: o.disabled })),
    );
    const registered = await page.getAttribute("#omni-voices", "data-registered");
    await page.click(`#omni-voice-list button[data-voice-id="${voiceId}"]`);
    await page.waitForFunction(
      () => document.getElementById("omni-voices").dataset.registered === "0",
      null,
      { timeout: 15_000 },
    );
    const afterDelete = await page.getAttribute("#omni-voices", "data-registered");
    // A sample recorded in the page (the fake microphone) instead of a file.
    await page.fill("#omni-voice-name", "Recorded sample");
    await page.click("#omni-voice-record");
    await page.waitForTimeout(4000);
    await page.click("#omni-voice-record");
    await page.waitForFunction(
      () => /recorded/.test(document.getElementById("omni-voice-status").textContent),
      null,
      { timeout: 10_000 },
    );
    await page.click("#omni-voice-register");
    await page.waitForFunction(
      () => document.getElementById("omni-voices").dataset.registered === "1",
      null,
      { timeout: 30_000 },
    );
    const recorded = await page.locator("#omni-voice-list li").allTextContents();
    results.steps.voices = {
      recorded,
      before,
      voiceId,
      listed,
      options,
      registered,
      cloning: await page.getAttribute("#omni-voices", "data-cloning"),
      note: await page.textContent("#omni-voice-note"),
      status: await page.textContent("#omni-voice-status"),
      after: afterDelete,
    };
  },
};

try {
  const page = await context.newPage();
  page.on("console", (m) => results.log.push(`[console] ${m.text()}`));
  page.on("pageerror", (e) => results.log.push(`[pageerror] ${e.message}`));
  page.on("requestfailed", (r) => results.log.push(`[requestfailed] ${r.url()} ${r.failure()?.errorText}`));
  try {
    await scenarios[config.scenario](page);
  } catch (error) {
    results.error = String(error);
    if (!page.isClosed()) {
      results.steps.failedAt = await live(page).catch(() => null);
    }
  }
  if (!page.isClosed()) {
    await page.screenshot({ path: join(config.artifacts, `${config.scenario}.png`), fullPage: true });
  }
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
console.log(JSON.stringify(results));
