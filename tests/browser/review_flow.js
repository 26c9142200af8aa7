// Drive the review page (`trapline review`) in Debian's chromium through playwright-core, as a
// reviewer would, and report what happened as one JSON object on stdout.
//   node review_flow.js URL OUT_SCREENSHOT.png [CHROMIUM] [--steps N]
// 1. Event 1, keyboard only: "3" (individuals), "c" + a comment + Enter, "t" + "mo" + ↓ + Enter.
// 2. Event 2, mouse: the Person button.
// 3. Event 3, mouse and typing: the taxon box, "Vulpes vul", a click on "fox".
// Then, with --steps N: N times "next" (→), N times "previous", each timed until the photo is
// decoded and its boxes drawn; the "not yet reviewed" filter, a deployment filter and a jump
// to the last event, timed. Used by tests/integration/test_review.py.
const { chromium } = require("playwright-core");

const now = () => performance.now();

(async () => {
  const args = process.argv.slice(2);
  const [url, screenshot, executable = "/usr/bin/chromium"] = args.filter((a, i) => !a.startsWith("--") && args[i - 1] !== "--steps");
  const stepsAt = args.indexOf("--steps");
  const steps = stepsAt >= 0 ? Number(args[stepsAt + 1]) : 0;
  const browser = await chromium.launch({
    executablePath: executable,
    args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync"],
  });
  const out = { console_errors: [], page_errors: [], failed_requests: [], reviewed: [], timings: {} };
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    page.on("console", (m) => { if (m.type() === "error") out.console_errors.push(m.text()); });
    page.on("pageerror", (e) => out.page_errors.push(String(e)));
    page.on("requestfailed", (r) => out.failed_requests.push(`${r.url()}: ${r.failure()?.errorText}`));
    let t = now();
    await page.goto(url, { waitUntil: "load" });
    await page.waitForSelector("body[data-ready='1']", { timeout: 30000 });
    out.timings.first_event_ms = now() - t;

    const shown = () => page.evaluate(() => {
      const img = document.getElementById("photo");
      return {
        event_id: document.body.dataset.eventId, saved: Number(document.body.dataset.saved || 0),
        position: document.getElementById("position").textContent,
        progress: document.getElementById("progress-text").textContent,
        machine: document.getElementById("i-machine").textContent,
        photo_loaded: img.complete && img.naturalWidth > 0, boxes: document.querySelectorAll("#boxes .box").length,
        status: document.getElementById("status").textContent,
      };
    });
    const waitSaved = (n) => page.waitForFunction((k) => Number(document.body.dataset.saved || 0) >= k, n, { timeout: 20000 });
    const waitMoved = (from) => page.waitForFunction(
      (id) => document.body.dataset.eventId && document.body.dataset.eventId !== id, from, { timeout: 20000 });

    // 1. keyboard only
    let before = await shown();
    out.first = before;
    await page.keyboard.press("3");
    await page.keyboard.press("c");
    await page.keyboard.type("two hinds and a calf");
    await page.keyboard.press("Enter");
    await page.keyboard.press("t");
    await page.keyboard.type("mo"); // moose, mouflon, ...: one down is mouflon
    await page.keyboard.press("ArrowDown");
    t = now();
    await page.keyboard.press("Enter");
    await waitSaved(1);
    await waitMoved(before.event_id);
    out.timings.save_ms = [now() - t];
    out.reviewed.push({ event_id: before.event_id, how: "keyboard", machine: before.machine });

    // 2. mouse: Person
    before = await shown();
    t = now();
    await page.click("#b-person");
    await waitSaved(2);
    await waitMoved(before.event_id);
    out.timings.save_ms.push(now() - t);
    out.reviewed.push({ event_id: before.event_id, how: "mouse", machine: before.machine });

    // 3. search box with a click
    before = await shown();
    await page.click("#taxon");
    await page.keyboard.type("Vulpes vul");
    await page.click("#taxon-list li[data-label='fox']");
    await waitSaved(3);
    await waitMoved(before.event_id);
    out.reviewed.push({ event_id: before.event_id, how: "search", machine: before.machine });
    out.after = await shown();
    await page.screenshot({ path: screenshot });

    if (steps > 0) {
      const settled = () => page.waitForFunction(() => {
        const img = document.getElementById("photo");
        return img.complete && img.naturalWidth > 0 && document.body.dataset.eventId;
      }, null, { timeout: 20000 });
      const timed = async (key) => {
        const from = (await shown()).event_id;
        const start = now();
        await page.keyboard.press(key);
        await waitMoved(from);
        await settled();
        return now() - start;
      };
      const next = [], previous = [];
      for (let i = 0; i < steps; i++) next.push(await timed("ArrowRight"));
      for (let i = 0; i < steps; i++) previous.push(await timed("ArrowLeft"));
      out.timings.next_ms = next;
      out.timings.previous_ms = previous;
      // filters: not yet reviewed (key U), then one deployment, then the last event
      let start = now();
      const from = (await shown()).position;
      await page.keyboard.press("u");
      await page.waitForFunction((p) => document.getElementById("position").textContent !== p, from, { timeout: 20000 });
      await settled();
      out.timings.unreviewed_filter_ms = now() - start;
      out.unreviewed_position = (await shown()).position;
      start = now();
      const options = await page.$$eval("#f-deployment option", (os) => os.map((o) => o.value).filter(Boolean));
      const pos = (await shown()).position;
      await page.selectOption("#f-deployment", options[options.length - 1]);
      await page.waitForFunction((p) => document.getElementById("position").textContent !== p, pos, { timeout: 20000 });
      await settled();
      out.timings.deployment_filter_ms = now() - start;
      out.deployment_position = (await shown()).position;
      // the last event of the filtered list: page through the server from the end
      start = now();
      const total = Number(out.deployment_position.split(" of ")[1].replace(/,/g, ""));
      await page.keyboard.press("End");
      await page.waitForFunction((k) => document.getElementById("position").textContent.startsWith(`Event ${k.toLocaleString()} `), total, { timeout: 20000 });
      await settled();
      out.timings.jump_to_last_ms = now() - start;
      out.last_position = (await shown()).position;
      out.heap_mb = await page.evaluate(() => (performance.memory ? performance.memory.usedJSHeapSize / 2 ** 20 : null));
    }
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify(out) + "\n");
})().catch((err) => { console.error(err); process.exit(1); });
