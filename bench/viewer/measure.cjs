#!/usr/bin/env node
// Time to first render of a web page in headless Chromium: from navigation start until a CSS
// selector is present in the DOM.
//
//   node bench/viewer/measure.cjs URL SELECTOR [TIMEOUT_MS] [SCREENSHOT.png]
//
// SELECTOR may be a list `a|b|c`: the first of them to appear counts (a `|` followed by `=`,
// as in `[lang|=en]`, does not split). Prints one JSON line on stdout:
//   {"url", "selector", "matched", "ok", "first_render_ms", "wall_ms", "dom_content_loaded_ms",
//    "load_ms", "js_heap_used_bytes", "js_heap_total_bytes", "error"?, "page_text"?}
// first_render_ms is measured inside the page (performance.now() when a MutationObserver first
// sees the selector; 0 is the navigation start, i.e. before the request is sent), so it does not
// depend on how often this script polls. wall_ms is the same span seen from this script (from
// the goto call to the moment it saw the mark). On timeout or a crashed tab it prints ok:false
// with the elapsed time (and the page's visible text, to record an error message) and exits 1.
//
// Each run launches a fresh browser with a fresh profile (cold browser cache, no IndexedDB or
// localStorage left by an earlier run). With LOADS=N in the environment it loads the page N times
// in that browser, each in a new tab (the later loads with its HTTP cache, IndexedDB and
// localStorage warm), one JSON line each with "browser_load": i; it stops at the first failure.
// SETTLE_MS: how long a tab stays open after its render before the next load (default 0). Needs puppeteer-core (PUPPETEER_CORE, or the directory
// bench/viewer/run.sh installs it to) and a Chromium (CHROMIUM, default /usr/bin/chromium).
'use strict';

const fs = require('fs');
const path = require('path');

function loadPuppeteer() {
  const candidates = [
    process.env.PUPPETEER_CORE,
    path.join(process.env.HOME || '/root', '.cache/offswitch/browser/node_modules/puppeteer-core'),
    'puppeteer-core',
  ].filter(Boolean);
  for (const c of candidates) {
    try {
      return require(c);
    } catch (_) {
      // next
    }
  }
  process.stderr.write(
    'measure.cjs: puppeteer-core not found (set PUPPETEER_CORE to its directory)\n');
  process.exit(2);
}

const [url, selectorArg, timeoutArg, screenshot] = process.argv.slice(2);
if (!url || !selectorArg) {
  process.stderr.write('usage: measure.cjs URL SELECTOR[|SELECTOR...] [TIMEOUT_MS] [SCREENSHOT.png]\n');
  process.exit(2);
}
const timeoutMs = timeoutArg ? Number(timeoutArg) : 180000;
const loads = Math.max(1, Number(process.env.LOADS || 1));
const settleMs = Math.max(0, Number(process.env.SETTLE_MS || 0));
const selectors = selectorArg.split(/\|(?!=)/).map((s) => s.trim()).filter(Boolean);
const puppeteer = loadPuppeteer();

// Runs in the page before any of its scripts: records when one of the selectors first appears.
function installMark(selectors) {
  const mark = { found: null, matched: null };
  window.__offswitchMark = mark;
  const check = () => {
    if (mark.found !== null) return true;
    for (const s of selectors) {
      let hit = null;
      try {
        hit = document.querySelector(s);
      } catch (_) {
        // an invalid selector never matches
      }
      if (hit) {
        mark.found = performance.now();
        mark.matched = s;
        return true;
      }
    }
    return false;
  };
  const observer = new MutationObserver(() => {
    if (check()) observer.disconnect();
  });
  const start = () => {
    if (check()) return;
    observer.observe(document, { childList: true, subtree: true, attributes: true });
  };
  if (document.documentElement) start();
  else document.addEventListener('readystatechange', start, { once: true });
  // A safety net for changes a MutationObserver does not report.
  const timer = setInterval(() => {
    if (check()) {
      observer.disconnect();
      clearInterval(timer);
    }
  }, 50);
}

function print(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function withTimeout(promise, ms, fallback) {
  return Promise.race([
    promise.catch(() => fallback),
    new Promise((resolve) => setTimeout(() => resolve(fallback), ms)),
  ]);
}

// One load in a new tab of `browser`: the result object.
async function measureOnce(browser, index, screenshotPath) {
  const result = { url, selector: selectorArg, matched: null, ok: false };
  if (loads > 1) result.browser_load = index;
  const page = await browser.newPage();
  try {
    await page.evaluateOnNewDocument(installMark, selectors);
    let crashed = null;
    const failures = [];
    page.on('error', (e) => { crashed = String(e && e.message || e); });
    page.on('pageerror', (e) => { failures.push('pageerror: ' + String(e && e.message || e).slice(0, 300)); });
    page.on('requestfailed', (r) => {
      failures.push('requestfailed: ' + r.url().slice(0, 200) + ' ' + ((r.failure() || {}).errorText || ''));
    });
    page.on('response', (r) => {
      if (r.status() >= 400) failures.push('http ' + r.status() + ': ' + r.url().slice(0, 200));
    });

    const t0 = Date.now();
    const deadline = t0 + timeoutMs;
    // Do not wait for `load` here: a single-page app may still be fetching and parsing its data.
    const nav = page.goto(url, { waitUntil: 'domcontentloaded', timeout: timeoutMs }).catch((e) => {
      failures.push('goto: ' + String(e && e.message || e).slice(0, 300));
    });
    let mark = null;
    while (Date.now() < deadline && !crashed) {
      mark = await withTimeout(
        page.evaluate(() => window.__offswitchMark && window.__offswitchMark.found !== null
          ? { found: window.__offswitchMark.found, matched: window.__offswitchMark.matched }
          : null),
        Math.max(100, deadline - Date.now()), null);
      if (mark) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    const wall = Date.now() - t0;
    await withTimeout(nav, 1000, null);
    const timing = await withTimeout(page.evaluate(() => {
      const n = performance.getEntriesByType('navigation')[0];
      return n ? { dcl: n.domContentLoadedEventEnd, load: n.loadEventEnd } : null;
    }), 10000, null);
    const metrics = await withTimeout(page.metrics(), 10000, null);
    Object.assign(result, {
      ok: !!mark,
      matched: mark ? mark.matched : null,
      first_render_ms: mark ? Math.round(mark.found) : null,
      wall_ms: wall,
      dom_content_loaded_ms: timing && timing.dcl > 0 ? Math.round(timing.dcl) : null,
      load_ms: timing && timing.load > 0 ? Math.round(timing.load) : null,
      js_heap_used_bytes: metrics ? metrics.JSHeapUsedSize : null,
      js_heap_total_bytes: metrics ? metrics.JSHeapTotalSize : null,
    });
    if (!mark) {
      result.elapsed_ms = wall;
      result.error = crashed ? 'page crashed: ' + crashed : 'timeout after ' + timeoutMs + ' ms';
      const text = await withTimeout(page.evaluate(() => document.body ? document.body.innerText : ''), 5000, null);
      if (text) result.page_text = text.replace(/\s+/g, ' ').trim().slice(0, 500);
    }
    if (failures.length) result.failures = failures.slice(0, 10);
    if (screenshotPath) {
      await withTimeout(page.screenshot({ path: screenshotPath }), 20000, null);
    }
    if (index < loads && settleMs > 0) {
      // Let the page finish what it does after the first render (an app may go on writing its
      // client-side cache) before the next load.
      await new Promise((r) => setTimeout(r, settleMs));
    }
  } catch (e) {
    result.ok = false;
    result.error = String(e && e.stack || e).slice(0, 500);
  } finally {
    await withTimeout(page.close(), 10000, null);
  }
  return result;
}

(async () => {
  let exitCode = 0;
  let browser;
  try {
    browser = await puppeteer.launch({
      executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
      headless: true,
      // --no-sandbox: Chromium refuses to start its sandbox as root.
      args: ['--no-sandbox', '--disable-dev-shm-usage', '--no-first-run', '--no-default-browser-check',
        '--disable-extensions', '--disable-background-networking', '--disable-component-update'],
      protocolTimeout: timeoutMs + 60000,
      defaultViewport: { width: 1400, height: 900 },
    });
  } catch (e) {
    print({ url, selector: selectorArg, ok: false, error: 'browser launch: ' + String(e && e.message || e).slice(0, 500) });
    process.exit(1);
  }
  for (let i = 1; i <= loads; i++) {
    const shot = screenshot && loads > 1 ? screenshot.replace(/(\.png)?$/, '-' + i + '.png') : screenshot;
    const result = await measureOnce(browser, i, shot);
    print(result);
    if (!result.ok) {
      exitCode = 1;
      break;
    }
  }
  await withTimeout(browser.close(), 10000, null);
  const proc = browser.process();
  if (proc && proc.exitCode === null) proc.kill('SIGKILL');
  process.exit(exitCode);
})();
