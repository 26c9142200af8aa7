// Sign in to a `trapline review --token` server in Debian's chromium, as a reviewer would, and
// report what the page then shows as one JSON object on stdout (CSP refusals are console errors).
//   node review_sign_in.js URL TOKEN [CHROMIUM]
// Used by tests/integration/test_review_security.py.
const { chromium } = require("playwright-core");

(async () => {
  const [url, token, executable = "/usr/bin/chromium"] = process.argv.slice(2);
  const browser = await chromium.launch({
    executablePath: executable,
    args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync"],
  });
  const out = { console_errors: [], page_errors: [], failed_requests: [] };
  try {
    const page = await browser.newPage({ viewport: { width: 1200, height: 800 } });
    page.on("console", (m) => { if (m.type() === "error") out.console_errors.push(m.text()); });
    page.on("pageerror", (e) => out.page_errors.push(String(e)));
    page.on("requestfailed", (r) => out.failed_requests.push(`${r.url()}: ${r.failure()?.errorText}`));
    await page.goto(url, { waitUntil: "load" });
    out.first_url = page.url();
    await page.fill("#token", token);
    await Promise.all([page.waitForNavigation({ waitUntil: "load" }), page.click("button[type=submit]")]);
    await page.waitForSelector("body[data-ready='1']", { timeout: 30000 });
    out.signed_in_url = page.url();
    out.position = await page.textContent("#position");
    out.photo_loaded = await page.evaluate(() => {
      const img = document.getElementById("photo");
      return img.complete && img.naturalWidth > 0;
    });
    out.cookie_visible_to_script = await page.evaluate(() => document.cookie.includes("trapline_review"));
    // A script at this origin cannot be added inline: the policy refuses it (a console error).
    out.inline_ran = await page.evaluate(() => {
      const s = document.createElement("script");
      s.textContent = "window.__inline = 1";
      document.body.appendChild(s);
      return window.__inline === 1;
    });
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify(out));
})().catch((err) => { console.error(err); process.exit(1); });
