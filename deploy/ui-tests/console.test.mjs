// The operator console in a real browser: Debian's chromium driven by playwright-core,
// against the API, worker, PostgreSQL and RabbitMQ that run.sh started. The tests run in
// order and share one admin session; each saves a screenshot of what it checked.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";

const BASE = process.env.BASE_URL;
const ADMIN = process.env.ADMIN_TOKEN;
const READ = process.env.READ_TOKEN;
const SHOTS = process.env.SCREENSHOTS;
const SLOW = 60_000;

let browser;
let admin; // a page signed in with the admin token

/** The API itself, with a bearer token (to make tasks the browser then watches). */
async function api(method, path, body, token = ADMIN) {
  const response = await fetch(BASE + path, {
    method,
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : null };
}

async function shot(page, name) {
  await page.screenshot({ path: `${SHOTS}/${name}.png`, fullPage: true });
}

async function signIn(token) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  await page.goto(BASE + "/ui");
  assert.match(page.url(), /\/ui\/sign-in/);
  await page.getByLabel("API token").fill(token);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.waitForURL(BASE + "/ui");
  return page;
}

/** Wait until the page's task status badge says `status` (the page refreshes itself). */
async function statusIs(page, status) {
  await page.locator(`h1 .badge.status-${status}`).waitFor({ timeout: SLOW });
}

before(async () => {
  browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox"],
  });
});

after(async () => {
  await browser?.close();
});

test("signing in with a token shows the overview", async () => {
  admin = await signIn(ADMIN);
  await admin.getByRole("heading", { name: "Overview" }).waitFor();
  await admin.getByText("Tasks created in the last 24 hours").waitFor();
  assert.equal(await admin.locator("header .who").innerText().then((t) => t.includes("admin")), true);
  // The session cookie is HttpOnly and SameSite=Strict; the page's script cannot read it.
  const cookies = await admin.context().cookies();
  const session = cookies.find((c) => c.name === "cleanup_console");
  assert.ok(session, JSON.stringify(cookies));
  assert.equal(session.httpOnly, true);
  assert.equal(session.sameSite, "Strict");
  assert.equal(await admin.evaluate(() => document.cookie), "");
  // The first Tab reaches the skip link.
  await admin.keyboard.press("Tab");
  assert.equal(await admin.evaluate(() => document.activeElement.textContent), "Skip to content");
  await shot(admin, "01-overview");
});

test("a new task appears in the list and turns succeeded without a reload", async () => {
  await admin.goto(BASE + "/ui/tasks");
  // Set on this document only: a full reload would lose it.
  await admin.evaluate(() => (window.__sameDocument = true));
  const { status, body } = await api("POST", "/maintenance/cleanup-runs", {
    max_age_hours: 720,
    dry_run: true,
    statuses: ["failed"],
  });
  assert.equal(status, 202);
  const short = body.task_id.slice(-8);
  // The list refreshes itself in place: the task shows up, then turns succeeded.
  const row = admin.locator("#tasks tr", { hasText: short });
  await row.waitFor({ timeout: SLOW });
  await row.locator(".badge.status-succeeded").waitFor({ timeout: SLOW });
  assert.equal(await admin.evaluate(() => window.__sameDocument), true, "refreshed without a reload");
  await shot(admin, "02-tasks");
  // Open it and read its result.
  await row.getByRole("link", { name: short }).click();
  await admin.waitForURL(`**/ui/tasks/${body.task_id}`);
  const result = admin.locator("#result");
  await result.getByText("would delete 200 rows").first().waitFor();
  assert.match(await result.innerText(), /runs matched\s+200/);
  await shot(admin, "03-task");
});

test("a cleanup from the form runs dry first, then for real with the same cutoff", async () => {
  await admin.goto(BASE + "/ui/new");
  await admin.getByLabel("Older than (hours)").fill("720");
  await admin.getByLabel("failed").check();
  await shot(admin, "04-new-cleanup");
  await admin.getByRole("button", { name: "Dry run" }).click();
  await admin.waitForURL(/\/ui\/tasks\/[0-9a-f-]+\?done=created/);
  const dryId = new URL(admin.url()).pathname.split("/").pop();
  await statusIs(admin, "succeeded");
  const panel = admin.locator("#dry-run");
  await panel.getByText("would delete 200 rows").waitFor();
  assert.match(await panel.innerText(), /For example/);
  await shot(admin, "05-dry-run");
  await panel.getByRole("button", { name: "Run it for real" }).click();
  await admin.waitForURL((url) => !url.pathname.endsWith(dryId));
  const realId = new URL(admin.url()).pathname.split("/").pop();
  await statusIs(admin, "succeeded");
  await admin.locator("#result").getByText("200 rows deleted").waitFor();
  const [dry, real] = [(await api("GET", `/tasks/${dryId}`)).body, (await api("GET", `/tasks/${realId}`)).body];
  assert.equal(real.params.dry_run, false);
  assert.equal(real.cutoff, dry.cutoff);
  assert.equal(real.dry_run_of, dryId);
  assert.equal(real.result.runs_deleted, 200);
  await shot(admin, "06-real-run");
});

test("a running task is cancelled from its page, after a confirmation", async () => {
  const { body } = await api("POST", "/maintenance/cleanup-runs", {
    max_age_hours: 720,
    statuses: ["succeeded"],
    batch_size: 10,
  });
  await admin.goto(`${BASE}/ui/tasks/${body.task_id}`);
  await statusIs(admin, "running");
  await admin.getByRole("link", { name: "Cancel…" }).click();
  await admin.getByText("The worker stops at its next batch boundary").waitFor();
  await shot(admin, "07-cancel-confirm");
  await admin.getByRole("button", { name: "Cancel the task" }).click();
  await statusIs(admin, "cancelled");
  const task = (await api("GET", `/tasks/${body.task_id}`)).body;
  assert.equal(task.status, "cancelled");
  assert.ok(task.result.runs_deleted < 200000, JSON.stringify(task.result));
  await admin.getByText("Cancel asked for by token-1").waitFor();
  await shot(admin, "08-cancelled");
});

test("a read-scoped token sees no cancel button, and a forged POST is refused", async () => {
  const { body } = await api("POST", "/maintenance/cleanup-runs", {
    max_age_hours: 720,
    statuses: ["succeeded"],
    batch_size: 10,
  });
  const reader = await signIn(READ);
  await reader.goto(`${BASE}/ui/tasks/${body.task_id}`);
  await statusIs(reader, "running");
  assert.equal(await reader.getByRole("link", { name: "Cancel…" }).count(), 0);
  assert.equal(await reader.getByRole("link", { name: "New cleanup" }).count(), 0);
  await shot(reader, "09-read-only-task");
  // The reader's own session and CSRF token, posting by hand: refused for its scope.
  const csrf = await reader.locator("input[name=csrf]").first().inputValue();
  const forged = await reader.request.post(`${BASE}/ui/tasks/${body.task_id}/cancel`, {
    form: { csrf },
    headers: { Origin: BASE },
  });
  assert.equal(forged.status(), 403);
  // An admin's session without its CSRF token: refused too.
  const noToken = await admin.request.post(`${BASE}/ui/tasks/${body.task_id}/cancel`, {
    form: {},
    headers: { Origin: BASE },
  });
  assert.equal(noToken.status(), 403);
  assert.equal((await api("GET", `/tasks/${body.task_id}`)).body.status, "running");
  await api("POST", `/tasks/${body.task_id}/cancel`);
  await reader.context().close();
});

test("workers and schedules pages, and the task list at a phone's width", async () => {
  const created = await api("POST", "/schedules", {
    name: "nightly-failed-runs",
    kind: "cleanup_runs",
    params: { max_age_hours: 720, statuses: ["failed"], dry_run: true },
    cron: "30 2 * * *",
    timezone: "Europe/Berlin",
  });
  assert.ok([200, 201].includes(created.status), JSON.stringify(created.body));
  await admin.goto(BASE + "/ui/workers");
  await admin.locator("#workers .badge.status-up").first().waitFor();
  await shot(admin, "10-workers");
  await admin.goto(BASE + "/ui/schedules");
  const schedule = admin.locator("#schedule-nightly-failed-runs");
  await schedule.getByText("Europe/Berlin").first().waitFor();
  assert.match(await schedule.innerText(), /02:30/);
  await schedule.getByRole("button", { name: "Pause" }).click();
  await schedule.getByRole("button", { name: "Resume" }).waitFor();
  assert.equal((await api("GET", "/schedules/nightly-failed-runs")).body.enabled, false);
  await shot(admin, "11-schedules");

  await admin.setViewportSize({ width: 390, height: 844 });
  await admin.goto(BASE + "/ui/tasks");
  const overflow = await admin.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `the task list scrolls sideways by ${overflow}px on a phone`);
  await shot(admin, "12-tasks-phone");
  await admin.setViewportSize({ width: 1280, height: 900 });
});

test("signing out ends the session", async () => {
  await admin.goto(BASE + "/ui");
  await admin.getByRole("button", { name: "Sign out" }).click();
  await admin.waitForURL(/\/ui\/sign-in/);
  await admin.goto(BASE + "/ui/tasks");
  assert.match(admin.url(), /\/ui\/sign-in\?next=/);
  await shot(admin, "00-sign-in");
});
