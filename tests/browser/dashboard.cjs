// The dashboard tour in a real browser (Debian's headless Chromium, driven by playwright-core),
// run by tests/tests/dashboard.rs against `cplane up`. Env: CPLANE_URL, SHOTS (screenshot
// directory), PLAYWRIGHT_CORE (path of the playwright-core package), CHROMIUM (executable).
// Prints one JSON line with what it saw; exits non-zero on the first failed step.
const { chromium } = require(process.env.PLAYWRIGHT_CORE);

(async () => {
  const base = process.env.CPLANE_URL;
  const shots = process.env.SHOTS;
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox"],
  });
  let step = "start";
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    page.setDefaultTimeout(30000);
    const consoleErrors = [];
    // The browser logs every non-2xx answer; the 422 of the validation step is expected.
    page.on("console", (m) => m.type() === "error" && !m.text().includes("status of 422") && consoleErrors.push(m.text()));

    step = "sign in";
    await page.goto(`${base}/ui/`);
    await page.click("#signin");
    await page.waitForSelector('#who:has-text("admin@cplane.localhost")');

    step = "overview";
    await page.waitForSelector('#workspaces a:has-text("acme")');
    await page.screenshot({ path: `${shots}/overview.png`, fullPage: true });

    step = "workspace";
    await page.click('#workspaces a:has-text("acme")');
    await page.waitForSelector('#conditions td:has-text("Ready")');

    step = "agent status";
    await page.waitForSelector('#agent:has-text("0.1.0 (commit browser-test)")');
    await page.waitForSelector('#objects td:has-text("trino-coordinator")');

    step = "validation error";
    const form = 'form[data-stack="trino"]';
    await page.fill(`${form} input[name="workers"]`, '"many"');
    await page.click(`${form} button`);
    await page.waitForSelector(`${form} .errors`);
    const error = (await page.textContent(`${form} .errors`)).trim();

    step = "edit";
    await page.fill(`${form} input[name="workers"]`, "5");
    await page.click(`${form} button`);
    await page.waitForSelector(`${form} .result code`);
    const commit = (await page.textContent(`${form} .result code`)).trim();

    step = "reconcile";
    await page.waitForFunction((c) => document.querySelector("#commit")?.textContent === c, commit, { timeout: 60000 });
    await page.screenshot({ path: `${shots}/workspace.png`, fullPage: true });

    step = "clusters";
    await page.click('nav a:has-text("Clusters")');
    await page.waitForSelector("#clusters");
    await page.fill("#q", "initech");
    await page.waitForFunction(() => document.querySelectorAll("#clusters tr").length === 2);

    console.log(JSON.stringify({ ok: true, commit, error, consoleErrors }));
  } catch (e) {
    console.log(JSON.stringify({ ok: false, step, message: String(e && e.message) }));
    process.exitCode = 1;
  } finally {
    await browser.close();
  }
})();
