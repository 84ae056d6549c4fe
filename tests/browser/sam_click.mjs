// Drive the real Label Studio UI: log in, open a task, turn on Auto-Annotation, click with the
// smart keypoint tool, and wait for the backend's mask to show up as a suggestion.
// Usage: node sam_click.mjs <config.json>; prints one JSON line with what happened.
// config: {playwright, chromium, url, email, password, project, task, labelIndex, x, y,
//          screenshot}  (x, y: click position as fractions of the image on screen)
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
const out = { steps: [] };
const step = (name) => out.steps.push(name);
try {
  const context = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
  const page = await context.newPage();
  page.setDefaultTimeout(60000);
  const calls = [];
  page.on("response", async (response) => {
    if (response.url().includes("/interactive-annotating")) {
      let body = null;
      try { body = await response.json(); } catch { body = null; }
      calls.push({ status: response.status(), body });
    }
  });

  await page.goto(`${config.url}/user/login/`, { waitUntil: "domcontentloaded" });
  await page.fill('input[name="email"]', config.email);
  await page.fill('input[name="password"]', config.password);
  await Promise.all([page.waitForURL((u) => !u.pathname.startsWith("/user/login")),
                     page.click('button[type="submit"], input[type="submit"]')]);
  step("logged in");

  await page.goto(`${config.url}/projects/${config.project}/data?task=${config.task}`,
                  { waitUntil: "networkidle" });
  const canvas = page.locator("canvas").first();
  await canvas.waitFor({ state: "visible" });
  step("task open");

  await page.getByText("Auto-Annotation", { exact: false }).first().click();
  step("auto-annotation on");
  await page.evaluate(() => {
    const tool = document.querySelector('button.lsf-tool_smart[aria-label="key-point-tool"]');
    if (!tool) throw new Error("no smart key-point tool button in the toolbar");
    tool.click();
  });
  step("smart keypoint tool");
  await page.locator(".lsf-label").nth(config.labelIndex).click();
  step("label chosen");

  const box = (await canvas.boundingBox());
  const waitCall = page.waitForResponse((r) => r.url().includes("/interactive-annotating"),
                                        { timeout: 120000 });
  await page.mouse.click(box.x + box.width * config.x, box.y + box.height * config.y);
  step("clicked");
  await waitCall;
  step("backend answered");
  // LS shows the suggested region with accept/reject controls ("1 suggestions" in the panel)
  await page.waitForFunction(() => /suggestion/i.test(document.body.innerText),
                             null, { timeout: 30000 });
  step("suggestion shown");
  await page.waitForTimeout(800);
  out.suggestionText = (await page.locator("body").innerText())
    .split("\n").filter((line) => /suggestion/i.test(line)).slice(0, 3);
  out.calls = calls.map((c) => ({ status: c.status,
                                  regions: c.body?.data?.result?.length ?? 0,
                                  type: c.body?.data?.result?.[0]?.type ?? null,
                                  errors: c.body?.errors ?? null }));
  await page.screenshot({ path: config.screenshot, fullPage: false });
  out.ok = true;
} catch (error) {
  out.ok = false;
  out.error = String(error && error.stack || error);
  try {
    const pages = browser.contexts().flatMap((c) => c.pages());
    if (pages.length) await pages[0].screenshot({ path: config.screenshot });
  } catch { /* keep the first error */ }
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
