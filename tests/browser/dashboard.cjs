// The dashboard in a real browser (Debian's headless Chromium, driven by playwright-core), run
// by tests/tests/dashboard.rs. Env: CPLANE_URL, SHOTS (screenshot directory), PLAYWRIGHT_CORE
// (path of the playwright-core package), CHROMIUM (executable), SCENARIO (below), TOKEN (for
// the scenarios that start signed in), FEATURE (a branch to plan).
//
// Scenarios:
// - tour: sign in with the issuer (code + PKCE), overview, a workspace with its agent's
//   status, steps and history, a validation error, an edit committed and reconciled, a stack
//   enabled and disabled, the clusters page's search and state filter;
// - operate: sign in, a rollout paused, resumed and aborted with the buttons, the plan of a
//   branch with a diff, the activity page (drift, and the events the live stream brought);
// - member: signed in (TOKEN) as a member of one account: only its workspace and cluster, no
//   rollouts, another account's workspace not found;
// - pr: signed in (TOKEN) on a server with a forge: a stack value changed in pull-request mode;
// - fleet: timings at fleet size for reconciler/benches/dashboard.rs.
//
// Prints one JSON line with what it saw; exits non-zero on the first failed step.
const { chromium } = require(process.env.PLAYWRIGHT_CORE);

const base = process.env.CPLANE_URL;
const shots = process.env.SHOTS;

async function signIn(page) {
  await page.goto(`${base}/ui/`);
  await page.click("#signin");
  await page.waitForSelector('#who:has-text("admin@cplane.localhost")');
}

// Opens the dashboard already signed in with `token` (as a page that signed in before would).
async function withToken(page, token, email) {
  await page.addInitScript((t) => sessionStorage.setItem("token", t), token);
  await page.goto(`${base}/ui/`);
  await page.waitForSelector(`#who:has-text("${email}")`);
}

const rows = (page, table) => page.$$eval(`${table} tr`, (trs) => trs.slice(1).map((tr) => tr.innerText));

const scenarios = {
  async tour(page, seen) {
    await signIn(page);

    seen.step = "overview";
    await page.waitForSelector('#workspaces a:has-text("acme")');
    await page.waitForSelector("#regions td");
    await page.screenshot({ path: `${shots}/overview.png`, fullPage: true });

    seen.step = "workspace";
    await page.click('#workspaces a:has-text("acme")');
    await page.waitForSelector('#conditions td:has-text("Ready")');
    await page.waitForSelector("#steps");

    seen.step = "agent status";
    await page.waitForSelector('#agent:has-text("0.1.0 (commit browser-test)")');
    await page.waitForSelector('#objects td:has-text("trino-coordinator")');

    seen.step = "history";
    await page.waitForSelector("#history td");
    seen.historyBefore = await rows(page, "#history");

    seen.step = "validation error";
    const form = 'form[data-stack="trino"]';
    await page.fill(`${form} input[name="workers"]`, '"many"');
    await page.click(`${form} button[type="submit"]`);
    await page.waitForSelector(`${form} .errors`);
    seen.error = (await page.textContent(`${form} .errors`)).trim();

    seen.step = "edit";
    await page.fill(`${form} input[name="workers"]`, "5");
    await page.click(`${form} button[type="submit"]`);
    await page.waitForSelector(`${form} .result code`);
    seen.commit = (await page.textContent(`${form} .result code`)).trim();

    seen.step = "reconcile";
    await page.waitForFunction((c) => document.querySelector("#commit")?.textContent === c, seen.commit, { timeout: 60000 });
    await page.waitForSelector('#history td:has-text("admin@cplane.localhost")');
    seen.history = await rows(page, "#history");
    await page.screenshot({ path: `${shots}/workspace.png`, fullPage: true });

    seen.step = "enable a stack";
    await page.selectOption('#enable select[name="stack"]', "jupyterhub");
    await page.click('#enable button[type="submit"]');
    await page.waitForSelector("#enable .result code");
    seen.enabled = (await page.textContent("#enable .result code")).trim();

    seen.step = "disable it";
    await page.waitForSelector('form[data-stack="jupyterhub"] button.disable', { timeout: 60000 });
    await page.click('form[data-stack="jupyterhub"] button.disable');
    await page.waitForSelector('form[data-stack="jupyterhub"] .result code');
    seen.disabled = (await page.textContent('form[data-stack="jupyterhub"] .result code')).trim();

    seen.step = "clusters";
    await page.click('nav a:has-text("Clusters")');
    await page.waitForSelector("#clusters");
    await page.fill("#q", "initech");
    await page.waitForFunction(() => document.querySelectorAll("#clusters tr").length === 2);
    await page.fill("#q", "w-");
    await page.selectOption("#state", "behind");
    await page.waitForFunction(() => document.querySelector("#matches")?.textContent === "1 match");
    seen.behind = await rows(page, "#clusters");
  },

  async operate(page, seen) {
    await signIn(page);

    seen.step = "rollouts";
    await page.click('nav a:has-text("Rollouts")');
    await page.waitForSelector('#rollouts td:has-text("progressing")');
    await page.click("#rollouts a");
    await page.waitForSelector("#waves td");

    seen.step = "pause";
    await page.click('#controls button:has-text("Pause")');
    await page.waitForSelector('#rollout-events td:has-text("pause")');
    await page.waitForSelector('#controls button:has-text("Resume")');
    await page.screenshot({ path: `${shots}/rollout.png`, fullPage: true });

    seen.step = "resume";
    await page.click('#controls button:has-text("Resume")');
    await page.waitForSelector('#rollout-events td:has-text("resume")');
    await page.waitForSelector('#controls button:has-text("Pause")');

    seen.step = "abort";
    await page.click('#controls button:has-text("Abort")');
    await page.waitForSelector('.card:has-text("aborted")');
    seen.rolloutEvents = await rows(page, "#rollout-events");

    seen.step = "plan";
    await page.click('nav a:has-text("Plan")');
    await page.waitForSelector("#plan-commit");
    const head = await page.textContent("#plan-commit");
    await page.fill("#rev", process.env.FEATURE);
    await page.click('#plan-form button');
    await page.waitForFunction((h) => document.querySelector("#plan-commit")?.textContent !== h, head);
    await page.waitForSelector(".plan-cluster details");
    await page.click(".plan-cluster details summary");
    await page.waitForSelector(".plan-cluster details[open] pre.diff");
    seen.diff = await page.$$eval(".plan-cluster pre.diff", (pres) => pres.map((p) => p.textContent).join("\n"));
    await page.screenshot({ path: `${shots}/plan.png`, fullPage: true });

    seen.step = "activity";
    await page.click('nav a:has-text("Activity")');
    await page.waitForSelector("#drift");
    seen.drift = (await page.textContent("#drift")).trim();
    // The live stream followed since sign-in brought the rollout's events.
    await page.waitForSelector('#live td:has-text("rollout.paused")');
    seen.live = await rows(page, "#live");
  },

  async member(page, seen) {
    await withToken(page, process.env.TOKEN, "mia@example.com");
    seen.step = "overview";
    await page.waitForSelector('#workspaces a:has-text("acme")');
    seen.workspaces = await rows(page, "#workspaces");

    seen.step = "clusters";
    await page.click('nav a:has-text("Clusters")');
    await page.waitForSelector("#clusters");
    seen.clusters = await rows(page, "#clusters");

    seen.step = "rollouts";
    await page.click('nav a:has-text("Rollouts")');
    await page.waitForSelector("main .bad");
    seen.rollouts = (await page.textContent("main .bad")).trim();

    seen.step = "another account";
    await page.goto(`${base}/ui/#/workspaces/globex`);
    await page.waitForSelector('main h1:has-text("Workspace globex") + p.bad');
    seen.globex = (await page.textContent("main .bad")).trim();
  },

  // Timings at fleet size, for reconciler/benches/dashboard.rs (SEARCH: a cluster id).
  async fleet(page, seen) {
    let t = Date.now();
    await signIn(page);
    await page.waitForSelector("#workspaces tr:nth-child(2)", { timeout: 120000 });
    seen.overviewMs = Date.now() - t;

    seen.step = "clusters";
    t = Date.now();
    await page.click('nav a:has-text("Clusters")');
    await page.waitForSelector("#clusters tr:nth-child(2)", { timeout: 120000 });
    seen.clustersMs = Date.now() - t;
    seen.counted = (await page.textContent("h1")).trim();

    seen.step = "search";
    const times = [];
    for (let i = 0; i < 5; i++) {
      await page.fill("#q", "");
      await page.waitForFunction(() => !document.querySelector("#matches").textContent.startsWith("1 "));
      t = Date.now();
      await page.fill("#q", process.env.SEARCH);
      await page.waitForFunction(() => document.querySelector("#matches").textContent.startsWith("1 "));
      times.push(Date.now() - t);
    }
    times.sort((a, b) => a - b);
    seen.searchMs = times[2];
    seen.matches = (await page.textContent("#matches")).trim();

    seen.step = "state filter";
    await page.fill("#q", "");
    t = Date.now();
    await page.selectOption("#state", "never-reported");
    await page.waitForFunction(() => document.querySelector("#clusters tr:nth-child(2)") !== null);
    seen.stateMs = Date.now() - t;
  },

  async pr(page, seen) {
    await withToken(page, process.env.TOKEN, "maria@example.com");
    seen.step = "workspace";
    await page.goto(`${base}/ui/#/workspaces/acme`);
    const form = 'form[data-stack="trino"]';
    await page.waitForSelector(`${form} select[name="mode"]`);
    await page.selectOption(`${form} select[name="mode"]`, "pr");
    await page.fill(`${form} input[name="workers"]`, "7");
    await page.click(`${form} button[type="submit"]`);
    await page.waitForSelector(`${form} .result a`);
    seen.pullRequest = await page.getAttribute(`${form} .result a`, "href");
    seen.result = (await page.textContent(`${form} .result`)).trim();
  },
};

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox"],
  });
  const seen = { step: "start", consoleErrors: [] };
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    page.setDefaultTimeout(30000);
    page.on("dialog", (d) => d.accept());
    // The browser logs every non-2xx answer; the 422 of the validation step and the 403s and
    // 404s the member is shown are expected.
    page.on("console", (m) => m.type() === "error" && !/status of (422|403|404)/.test(m.text()) && seen.consoleErrors.push(m.text()));
    await scenarios[process.env.SCENARIO || "tour"](page, seen);
    console.log(JSON.stringify({ ok: true, ...seen }));
  } catch (e) {
    console.log(JSON.stringify({ ok: false, ...seen, message: String(e && e.message) }));
    process.exitCode = 1;
  } finally {
    await browser.close();
  }
})();
