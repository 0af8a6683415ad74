#!/usr/bin/env node
// The viewer in a real browser: headless Chromium driven over the DevTools protocol by
// puppeteer-core. Run by crates/offswitch-cli/tests/it/browser.rs, which starts a scripted
// run, a guard session and `offswitch view`, then checks what this prints.
//
//   node viewer.cjs URL RUN SESSION EXPECTED_JSON [SCREENSHOT_DIR]
//
// URL is the address `offswitch view` printed (with its token); EXPECTED_JSON holds
// {"label": name, "rate": "k/n"}: the rate the run page must show for that label in its
// first rates table. Prints one JSON line with what it saw; exits 1 on the first failed check.
'use strict';

const path = require('path');

function loadPuppeteer() {
  for (const candidate of [
    process.env.PUPPETEER_CORE,
    path.join(process.env.HOME || '/root', '.cache/offswitch/browser/node_modules/puppeteer-core'),
    'puppeteer-core',
  ].filter(Boolean)) {
    try {
      return require(candidate);
    } catch (_) {
      // the next one
    }
  }
  process.stderr.write('viewer.cjs: puppeteer-core not found (set PUPPETEER_CORE)\n');
  process.exit(2);
}

const [url, run, session, expectedJson, shots] = process.argv.slice(2);
const expected = JSON.parse(expectedJson);
const puppeteer = loadPuppeteer();
const seen = {};

function check(condition, what) {
  if (!condition) {
    throw new Error(`check failed: ${what} (seen so far: ${JSON.stringify(seen)})`);
  }
}

async function shot(page, name) {
  if (shots) {
    await page.screenshot({ path: path.join(shots, `viewer-${name}.png`), fullPage: false });
  }
}

(async () => {
  const browser = await puppeteer.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    // As root in a container, Chromium's own sandbox cannot start.
    args: ['--no-sandbox', '--disable-gpu', '--window-size=1280,900'],
    defaultViewport: { width: 1280, height: 900 },
  });
  let failed = null;
  try {
    const page = await browser.newPage();
    const requests = [];
    page.on('request', (request) => requests.push(request.url()));
    const errors = [];
    page.on('pageerror', (error) => errors.push(String(error)));

    // The runs list: the token becomes a cookie and the address loses it.
    await page.goto(url, { waitUntil: 'load' });
    check(!page.url().includes('token='), 'the token is gone from the address');
    seen.runs = await page.$$eval('table.runs tr td:first-child a', (as) => as.map((a) => a.textContent));
    check(seen.runs.includes(run), `the runs list has ${run}`);
    await shot(page, 'runs');

    // The run: rates from the store, an SVG chart per headline label, the reproduction table.
    await Promise.all([page.waitForNavigation({ waitUntil: 'load' }), page.click(`a[href="/runs/${run}"]`)]);
    seen.charts = await page.$$eval('svg', (svgs) => svgs.length);
    check(seen.charts > 0, 'charts are drawn');
    seen.chartMarks = await page.$$eval('svg circle, svg line, svg rect', (marks) => marks.length);
    check(seen.chartMarks > 0, 'the charts have marks');
    const table = await page.$eval('table.rates', (t) => ({
      head: [...t.querySelectorAll('tr:first-child th')].map((th) => th.textContent),
      first: [...t.querySelectorAll('tr:nth-child(2) td')].map((td) => td.textContent),
    }));
    seen.rateHead = table.head;
    seen.rateRow = table.first;
    const column = table.head.indexOf(expected.label);
    check(column >= 0, `the rates table has a ${expected.label} column`);
    check(table.first[column].startsWith(expected.rate), `${expected.label} reads ${expected.rate}`);
    await shot(page, 'run');

    // A trial: its transcript and what the kernel saw.
    await Promise.all([page.waitForNavigation({ waitUntil: 'load' }), page.click(`a[href="/runs/${run}/trials"]`)]);
    const firstTrial = await page.$eval('table.trials tr:nth-child(2) a', (a) => a.getAttribute('href'));
    await Promise.all([page.waitForNavigation({ waitUntil: 'load' }), page.click(`a[href="${firstTrial}"]`)]);
    seen.entries = await page.$$eval('.entry', (entries) => entries.length);
    check(seen.entries > 0, 'the transcript has entries');
    seen.events = await page.$$eval('table.events tr', (rows) => rows.length - 1);
    check(seen.events > 0, 'the event timeline has events');
    seen.labels = await page.$$eval('table.labels tr', (rows) => rows.length - 1);
    check(seen.labels > 0, 'the labels are listed');
    // The sabotaged shutdown script, as a diff of its text.
    seen.diffs = await page.$$eval('pre.diff', (diffs) => diffs.map((d) => d.previousElementSibling.textContent));
    check(seen.diffs.includes('shutdown.sh'), 'the shutdown script has a diff');
    seen.diffLines = await page.$$eval('pre.diff .del, pre.diff .ins', (lines) => lines.length);
    check(seen.diffLines > 0, 'the diff has changed lines');
    await shot(page, 'trial');

    // The guard session: running, then stopped from the page.
    await page.goto(new URL('/guard', url).toString(), { waitUntil: 'load' });
    await Promise.all([page.waitForNavigation({ waitUntil: 'load' }), page.click(`a[href="/guard/${session}"]`)]);
    seen.stateBefore = await page.$eval('#state', (s) => s.textContent);
    check(seen.stateBefore === 'running', 'the session is running');
    seen.processesBefore = Number(await page.$eval('#processes', (s) => s.textContent));
    await shot(page, 'guard');
    await Promise.all([page.waitForNavigation({ waitUntil: 'load', timeout: 90000 }), page.click('button#stop')]);
    // The page follows the session until it is gone.
    await page.waitForFunction(
      () => ['stopped', 'ended'].includes(document.getElementById('state')?.textContent),
      { timeout: 60000 },
    );
    seen.stateAfter = await page.$eval('#state', (s) => s.textContent);

    seen.foreign = requests.filter((r) => !r.startsWith(new URL(url).origin) && !r.startsWith('data:'));
    check(seen.foreign.length === 0, 'nothing is fetched from elsewhere');
    seen.errors = errors;
    check(errors.length === 0, 'no script error');
  } catch (error) {
    failed = String(error && error.stack || error);
    try {
      const pages = await browser.pages();
      const last = pages[pages.length - 1];
      seen.url = last.url();
      seen.text = (await last.evaluate(() => document.body.innerText)).slice(0, 1500);
    } catch (_) {
      // nothing more to say
    }
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify({ ok: failed === null, error: failed, seen }) + '\n');
  process.exit(failed === null ? 0 : 1);
})();
