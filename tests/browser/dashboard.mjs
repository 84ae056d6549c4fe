// Drive labelpilot's KPI dashboard in headless Chromium as an admin: open the overview and a
// project page, check that the plots are drawn, watch the job progress bar move without a
// reload, then click Approve on a retraining request and read the page again.
// Usage: node dashboard.mjs <config.json>; prints one JSON line with what happened.
// config: {playwright, chromium, url, user, password, project, request, shots: {overview,
//          project, approved}, watchSeconds}
// Report: {ok, steps, errors, overview, plots, progress, reloaded, approve, after, error?}
//   errors: console errors, page errors and failed requests (any at all fails the test);
//   plots: per <svg class="plot">: id of its figure, paths drawn, width and height on screen;
//   progress: the progress values (0-100) the page showed for the running job, in order;
//   reloaded: whether the page reloaded itself while we watched (it must not);
//   approve: the approve call's status and answer; after: the serving version afterwards.
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";

const config = JSON.parse(readFileSync(process.argv[2], "utf8"));
const require = createRequire(config.playwright + "/");
const { chromium } = require("playwright-core");

const browser = await chromium.launch({
  executablePath: config.chromium,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"],
});
const out = { steps: [], errors: [] };
const step = (name) => out.steps.push(name);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
try {
  const context = await browser.newContext({
    viewport: { width: 1280, height: 900 },
    httpCredentials: { username: config.user, password: config.password, send: "always" },
  });
  const page = await context.newPage();
  page.setDefaultTimeout(30000);
  page.on("console", (message) => {
    if (message.type() === "error") out.errors.push(`console: ${message.text()}`);
  });
  page.on("pageerror", (error) => out.errors.push(`page: ${error.message}`));
  page.on("requestfailed", (request) => {
    // a poll cut short by our own navigation (reload after Approve) is not an error
    if (!request.url().includes("/dashboard/api/jobs")) {
      out.errors.push(`request failed: ${request.url()} ${request.failure()?.errorText}`);
    }
  });
  page.on("response", (response) => {
    if (response.status() >= 400) out.errors.push(`HTTP ${response.status()} ${response.url()}`);
  });

  await page.goto(`${config.url}/dashboard`, { waitUntil: "networkidle" });
  out.overview = await page.$$eval("a.card", (cards) => cards.map((c) => ({
    project: c.dataset.project, text: c.innerText })));
  await page.screenshot({ path: config.shots.overview, fullPage: true });
  step("overview");

  await page.goto(`${config.url}/dashboard/projects/${encodeURIComponent(config.project)}`,
                  { waitUntil: "networkidle" });
  await page.locator("svg.plot").first().waitFor({ state: "visible" });
  out.plots = await page.$$eval("svg.plot", (svgs) => svgs.map((svg) => {
    const box = svg.getBoundingClientRect();
    return { figure: svg.closest("figure")?.id ?? null,
             paths: svg.querySelectorAll("path").length,
             drawn: [...svg.querySelectorAll("path")].filter((p) => {
               const r = p.getBoundingClientRect();
               return r.width > 0 || r.height > 0;
             }).length,
             width: box.width, height: box.height,
             label: svg.getAttribute("aria-label") };
  }));
  step("plots");

  // the running job's bar, sampled while the page polls (no reload in between)
  await page.evaluate(() => { window.__notReloaded = true; });
  out.progress = [];
  const until = Date.now() + (config.watchSeconds ?? 8) * 1000;
  while (Date.now() < until) {
    const value = await page.evaluate(() => {
      const running = document.querySelector('#jobs-body tr .badge.started');
      const bar = running?.closest("tr")?.querySelector("[role=progressbar]");
      return bar ? Number(bar.getAttribute("aria-valuenow")) : null;
    });
    if (value !== null && out.progress.at(-1) !== value) out.progress.push(value);
    await sleep(400);
  }
  out.reloaded = !(await page.evaluate(() => window.__notReloaded === true));
  out.jobs = await page.$$eval("#jobs-body tr", (rows) => rows.map((r) => r.innerText));
  await page.screenshot({ path: config.shots.project, fullPage: true });
  step("progress watched");

  await page.locator("details[data-audit]").first().evaluate((d) => { d.open = true; });
  out.audit = await page.locator("details[data-audit]").first().innerText();
  step("audit trail opened");

  const button = page.locator(`button[data-action=approve][data-request="${config.request}"]`);
  const answer = page.waitForResponse((r) => r.url().includes("/dashboard/api/retraining/"));
  const reloaded = page.waitForEvent("load", { timeout: 30000 });
  await button.click();
  const response = await answer;
  out.approve = { status: response.status(), body: await response.json() };
  await reloaded;
  await page.waitForLoadState("networkidle");
  step("approved");
  out.after = {
    serving: await page.locator("#serving").innerText(),
    servingBadges: await page.$$eval("tr[data-version]", (rows) => rows
      .filter((r) => r.querySelector(".badge.serving")).map((r) => r.dataset.version)),
    buttons: await page.locator("button[data-action]").count(),
  };
  await page.screenshot({ path: config.shots.approved, fullPage: true });
  out.ok = true;
} catch (error) {
  out.ok = false;
  out.error = String(error?.stack ?? error);
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
