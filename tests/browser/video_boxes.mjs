// Drive the real Label Studio UI on a video task: log in, open the task, make sure the stored
// prediction's tracks are on screen, seek to one frame and report what the annotator sees.
// Usage: node video_boxes.mjs <config.json>; prints one JSON line with what happened.
// config: {playwright, chromium, url, email, password, project, task, frame, screenshot}
// Report: {ok, steps, frame, regions, labels, boxes, tracks, annotation, painted, error?}
//   regions/labels: the Regions panel (outliner) rows and their label texts;
//   boxes: the rectangles Konva draws over the video at `frame` (stage pixels);
//   tracks: each video region from LS's store: label, keyframes, in its lifespan at `frame`,
//           and its interpolated shape there (percent of the frame);
//   annotation: which annotation is open (LS 1.23 opens a task without annotations with a
//               draft copied from the prediction); painted: non-transparent pixels on the
//               Konva canvas (0 when no box is drawn).
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";

const config = JSON.parse(readFileSync(process.argv[2], "utf8"));
const require = createRequire(config.playwright + "/");
const { chromium } = require("playwright-core");

const browser = await chromium.launch({
  executablePath: config.chromium,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--autoplay-policy=no-user-gesture-required"],
});
const out = { steps: [] };
const step = (name) => out.steps.push(name);

// What LS's store says about the open annotation's video regions at the current frame.
const storeState = () => {
  const store = window.Htx?.annotationStore;
  const selected = store?.selected;
  const video = selected?.objects?.find?.((o) => o.type === "video")
    ?? selected?.names?.get?.("video");
  const frame = video?.frame ?? null;
  const tracks = (selected?.regions ?? []).filter((r) => Array.isArray(r.sequence)).map((r) => ({
    id: r.id,
    type: r.type,
    labels: r.labeling?.selectedLabels?.map((l) => l.value) ?? [],
    keyframes: r.sequence.map((k) => ({ frame: k.frame, enabled: k.enabled })),
    inLifespan: typeof r.isInLifespan === "function" && frame !== null
      ? Boolean(r.isInLifespan(frame)) : null,
    shape: typeof r.getShape === "function" && frame !== null ? r.getShape(frame) ?? null : null,
    hidden: Boolean(r.hidden),
  }));
  return {
    frame,
    frames: video?.length ?? null,
    annotations: store?.annotations?.length ?? null,
    predictions: store?.predictions?.length ?? null,
    annotation: selected ? { type: selected.type, saved: selected.pk !== null && selected.pk
      !== undefined, draft: Boolean(selected.userGenerate && !selected.sentUserGenerate),
      regions: selected.regions?.length ?? 0 } : null,
    tracks,
  };
};

// The rectangles Konva draws (visible ones) and how many pixels its canvas has painted.
const drawnState = () => {
  const stage = window.Konva?.stages?.find((s) => s.container()?.isConnected);
  const boxes = stage ? stage.find("Rect").filter((r) => r.isVisible() && r.width() > 0
    && r.height() > 0 && r.getLayer()?.isVisible()).map((r) => {
    const box = r.getClientRect({ relativeTo: stage });
    return { x: Math.round(box.x), y: Math.round(box.y), width: Math.round(box.width),
             height: Math.round(box.height), name: r.name() || null };
  }) : null;
  let painted = null;
  const canvas = document.querySelector(".konvajs-content canvas");
  if (canvas) {
    const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
    painted = 0;
    for (let i = 3; i < data.length; i += 4) if (data[i] > 0) painted += 1;
  }
  return { boxes, painted };
};

const outlinerState = () => {
  const rows = [...document.querySelectorAll(".lsf-outliner .lsf-outliner-item")];
  return { regions: rows.length,
           labels: rows.map((row) => row.querySelector(".lsf-outliner-item__title")?.innerText
             .trim() ?? "") };
};

const counterFrame = async (page) => {
  const text = await page.evaluate(() => {
    const control = document.querySelector(".lsf-frames-control");
    return control?.querySelector("input")?.value ?? control?.innerText ?? "";
  });
  const match = /\d+/.exec(text);
  return match ? Number(match[0]) : null;
};

try {
  const context = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
  const page = await context.newPage();
  page.setDefaultTimeout(60000);

  await page.goto(`${config.url}/user/login/`, { waitUntil: "domcontentloaded" });
  await page.fill('input[name="email"]', config.email);
  await page.fill('input[name="password"]', config.password);
  await Promise.all([page.waitForURL((u) => !u.pathname.startsWith("/user/login")),
                     page.click('button[type="submit"], input[type="submit"]')]);
  step("logged in");

  await page.goto(`${config.url}/projects/${config.project}/data?task=${config.task}`,
                  { waitUntil: "networkidle" });
  await page.locator(".lsf-video-canvas canvas, .lsf-video canvas").first()
    .waitFor({ state: "visible" });
  await page.waitForFunction(() => {
    const video = document.querySelector(".lsf-video video, video");
    if (video?.error) throw new Error(`the video failed to load (MediaError ${video.error.code})`);
    return video && video.readyState >= 2 && video.videoWidth > 0
      && document.querySelector(".konvajs-content canvas");
  }, null, { timeout: 60000 });
  step("video loaded");

  // Make the prediction visible: LS 1.23 opens a task without annotations with a draft copied
  // from the prediction; otherwise pick the prediction in the annotations carousel.
  await page.waitForFunction(() => window.Htx?.annotationStore?.selected, null,
                             { timeout: 30000 }).catch(() => null);
  let state = await page.evaluate(storeState);
  if (!state.tracks.length) {
    const prediction = page.locator(".lsf-annotation-button:has(" +
      ".lsf-annotation-button__userpic_prediction)").first();
    if (await prediction.count()) {
      await prediction.click();
      step("prediction selected");
      await page.waitForTimeout(1000);
      state = await page.evaluate(storeState);
    }
  }
  out.annotation = state.annotation;
  if (!state.tracks.length && !(await page.evaluate(outlinerState)).regions) {
    throw new Error("no video regions on screen (neither a draft nor a prediction shows them)");
  }
  step("regions shown");

  // Seek: clicking the frame counter turns it into a text input (type the frame, Enter).
  // Fallback: the video tag's setFrame in LS's store. (The "Step forward"/"Step backward"
  // buttons are no good here: in LS 1.23.2 one click moved 10 frames on a 12 fps clip.)
  const target = Number(config.frame);
  await page.click(".lsf-frames-control");
  const input = page.locator(".lsf-frames-control input");
  if (await input.count()) {
    await input.fill(String(target));
    await input.press("Enter");
    step("frame typed");
  } else {
    await page.evaluate((frame) => {
      const selected = window.Htx?.annotationStore?.selected;
      const video = selected?.objects?.find?.((o) => o.type === "video")
        ?? selected?.names?.get?.("video");
      if (!video?.setFrame) throw new Error("no frame input and no video.setFrame to seek with");
      video.setFrame(frame);
    }, target);
    step("frame set through the store");
  }
  await page.waitForFunction((frame) => {
    const control = document.querySelector(".lsf-frames-control");
    const text = control?.querySelector("input")?.value ?? control?.innerText ?? "";
    return Number((/\d+/.exec(text) || [])[0]) === frame;
  }, target, { timeout: 15000 });
  await page.mouse.move(5, 5);  // away from the canvas: no hover highlight in the picture
  await page.waitForTimeout(1500);  // the video frame and Konva redraw
  step("frame shown");

  state = await page.evaluate(storeState);
  const drawn = await page.evaluate(drawnState);
  const outliner = await page.evaluate(outlinerState);
  out.frame = (await counterFrame(page)) ?? state.frame;
  out.storeFrame = state.frame;
  out.frames = state.frames;
  out.regions = outliner.regions;
  out.labels = outliner.labels;
  out.tracks = state.tracks;
  out.boxes = drawn.boxes;
  out.painted = drawn.painted;
  await page.screenshot({ path: config.screenshot, fullPage: false });
  step("screenshot");
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
