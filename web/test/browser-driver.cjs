// Drives headless Chromium (Debian's, through playwright-core) for hedgewitch's end-to-end
// tests, with fake microphone and camera. JSON lines on stdin, one answer line per command:
//   {"id":1,"cmd":"open","page":"alice","url":"https://...","permissions":true}
//   {"id":2,"cmd":"fill","page":"alice","selector":"#user","value":"alice"}
//   {"id":3,"cmd":"click","page":"alice","selector":"#call"}
//   {"id":4,"cmd":"eval","page":"alice","expr":"hw.state"}     (an expression; promises awaited)
//   {"id":5,"cmd":"quit"}
// Answers: {"id":N,"ok":true,"value":...} or {"id":N,"ok":false,"error":"..."}.
'use strict';
const { chromium } = require('playwright-core');
const readline = require('node:readline');

const pages = new Map();
let browser = null;

async function start() {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: [
      '--no-sandbox', '--disable-gpu', '--use-fake-device-for-media-stream',
      '--use-fake-ui-for-media-stream', '--ignore-certificate-errors',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--no-first-run', '--autoplay-policy=no-user-gesture-required',
    ],
  });
}

async function run(c) {
  switch (c.cmd) {
    case 'open': {
      const context = await browser.newContext({
        ignoreHTTPSErrors: true,
        permissions: c.permissions === false ? [] : ['microphone', 'camera'],
        viewport: c.mobile ? { width: 390, height: 844 } : { width: 1200, height: 800 },
        isMobile: !!c.mobile,
        hasTouch: !!c.mobile,
      });
      if (c.permissions === false) {
        // The user says no to the microphone.
        await context.addInitScript(() => {
          navigator.mediaDevices.getUserMedia = () =>
            Promise.reject(new DOMException('Permission denied', 'NotAllowedError'));
        });
      }
      const page = await context.newPage();
      page.on('console', (m) => { if (m.type() === 'error') process.stderr.write(`[${c.page}] ${m.text()}\n`); });
      // A namespace's interfaces may still be settling when the browser starts (an IPv6
      // link-local address appears): Chromium then aborts a load, of the page or of its
      // script, with ERR_NETWORK_CHANGED. Load again until the page's script runs.
      for (let attempt = 1; ; attempt++) {
        let error = null;
        try {
          await page.goto(c.url);
        } catch (e) {
          error = e;
        }
        const ready = !error && (await page.evaluate(() => typeof window.hw === 'object').catch(() => false));
        if (ready) break;
        if (attempt >= 8 || (error && !String(error).includes('ERR_NETWORK_CHANGED'))) {
          throw error || new Error('the page did not start');
        }
        await new Promise((r) => setTimeout(r, 500));
      }
      pages.set(c.page, page);
      return null;
    }
    case 'fill': return pages.get(c.page).fill(c.selector, c.value);
    case 'click': return pages.get(c.page).click(c.selector, { timeout: 5000 });
    case 'eval': return pages.get(c.page).evaluate(`(async () => (${c.expr}))()`);
    case 'close': {
      const page = pages.get(c.page);
      pages.delete(c.page);
      await page.context().close();
      return null;
    }
    case 'quit':
      await browser.close();
      process.exit(0);
      return null;
    default: throw new Error(`unknown command ${c.cmd}`);
  }
}

const ready = start();
const queue = [];
let busy = false;
async function pump() {
  if (busy) return;
  busy = true;
  while (queue.length) {
    const c = queue.shift();
    let answer;
    try {
      await ready;
      answer = { id: c.id, ok: true, value: (await run(c)) ?? null };
    } catch (e) {
      answer = { id: c.id, ok: false, error: String(e && e.message ? e.message : e) };
    }
    process.stdout.write(JSON.stringify(answer) + '\n');
  }
  busy = false;
}
readline.createInterface({ input: process.stdin }).on('line', (line) => {
  try { queue.push(JSON.parse(line)); } catch { return; }
  pump();
});
process.stdin.on('end', async () => { if (browser) await browser.close(); process.exit(0); });
