// Open a local HTML page in Debian's chromium through playwright-core and report what a reader
// would see: console errors, page errors, failed requests, and every <img> (loaded? visible?).
// Prints one JSON object on stdout; writes a full-page screenshot.
//   node check_page.js PAGE.html SCREENSHOT.png [CHROMIUM]
// Used by tests/integration/test_report.py. Playwright's own browser builds are not used (not reachable
// here): `executablePath` points it at the system chromium, which it drives over CDP.
const { chromium } = require("playwright-core");
const { pathToFileURL } = require("url");

(async () => {
  const [page_path, screenshot, executable = "/usr/bin/chromium"] = process.argv.slice(2);
  const browser = await chromium.launch({
    executablePath: executable,
    args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync"],
  });
  const result = { console_errors: [], page_errors: [], failed_requests: [], console: [] };
  try {
    const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
    page.on("console", (msg) => {
      result.console.push(`${msg.type()}: ${msg.text()}`);
      if (msg.type() === "error") result.console_errors.push(msg.text());
    });
    page.on("pageerror", (err) => result.page_errors.push(String(err)));
    page.on("requestfailed", (req) => result.failed_requests.push(`${req.url().slice(0, 120)}: ${req.failure()?.errorText}`));
    await page.goto(pathToFileURL(page_path).href, { waitUntil: "load" });
    result.title = await page.title();
    result.images = await page.$$eval("img", (imgs) => imgs.map((img) => {
      const box = img.getBoundingClientRect();
      const style = getComputedStyle(img);
      return {
        id: img.closest("figure")?.id ?? null, alt: img.alt, complete: img.complete,
        natural_width: img.naturalWidth, natural_height: img.naturalHeight,
        shown_width: box.width, shown_height: box.height,
        visible: style.visibility !== "hidden" && style.display !== "none" && box.width > 0 && box.height > 0,
      };
    }));
    result.sections = await page.$$eval("section", (s) => s.map((e) => e.id));
    await page.screenshot({ path: screenshot, fullPage: true });
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify(result) + "\n");
})().catch((err) => { console.error(err); process.exit(1); });
