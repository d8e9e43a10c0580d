// The order-tracking page in headless Chromium (Debian's, driven by
// playwright-core), as a person uses it, against the real server. Run by
// tests/web.rs, which serves web/dist from one origin, starts the service on
// another with that origin in cors.allowed_origins, and answers this
// script's lines on stdout:
//   REGISTERED <protocol> <order id>   the page shows the order PENDING and
//                                      its watch is live: the test now
//                                      advances the order as staff;
//   SCREENSHOT <path>                  a screenshot was saved.
// For each protocol (Connect, gRPC-Web): type the token, register, see
// PENDING, see CONFIRMED arrive on the open watch; see INVALID_ARGUMENT
// naming the field for an empty city; then, with a token without
// orders:write, see PERMISSION_DENIED and the missing scope. Last, the
// same page from an origin the service does not allow: the browser refuses
// the call itself (no CORS grant came), and the page says so. Every wait has
// a timeout; any failure exits non-zero, saying what the page showed.

import { createHash, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const REQUIRED_ENV = {
  PAGE_URL: 'the page, served from its own origin',
  ORDERS_API: 'the API base URL (https://localhost:PORT)',
  ORDERS_SERVER_CERT: "the server's PEM certificate, whose key the browser is told to trust",
  ORDERS_TOKEN: 'a JWT with orders:read and orders:write',
  ORDERS_TOKEN_READONLY: 'a JWT with orders:read only',
  CHROMIUM: 'the Chromium binary',
  ARTIFACTS_DIR: 'where screenshots go',
  FOREIGN_PAGE_URL: 'the same page from an origin the service does not allow',
};

function env(name) {
  const value = (process.env[name] || '').trim();
  if (!value) throw new Error(`${name} is not set (${REQUIRED_ENV[name]}); tests/web.rs sets it`);
  return value;
}

// Waits for what a person would see; generous, as the machine may be busy.
const SEE_MS = 15_000;

/**
 * Chromium trusts the server's certificate by its public key alone
 * (--ignore-certificate-errors-spki-list): certificate errors for any other
 * key still fail, unlike ignoring all of them.
 */
function spkiHash(pemPath) {
  const key = new X509Certificate(readFileSync(pemPath)).publicKey;
  return createHash('sha256').update(key.export({ type: 'spki', format: 'der' })).digest('base64');
}

async function textOf(page, selector) {
  return (await page.locator(selector).textContent())?.trim() ?? '';
}

/** Fails with what the page shows, so a failure reads like a bug report. */
async function expectText(page, selector, wanted, what) {
  try {
    await page.locator(selector).filter({ hasText: wanted }).waitFor({ timeout: SEE_MS });
  } catch {
    const shown = {
      [selector]: await textOf(page, selector),
      error: (await page.locator('#error').isVisible()) ? await textOf(page, '#error') : '(none)',
      stream: await textOf(page, '#stream'),
    };
    throw new Error(`${what}: ${JSON.stringify(wanted)} not shown within ${SEE_MS} ms; the page shows ${JSON.stringify(shown)}`);
  }
}

async function run() {
  const api = env('ORDERS_API');
  const artifacts = env('ARTIFACTS_DIR');
  const browser = await chromium.launch({
    executablePath: env('CHROMIUM'),
    args: [`--ignore-certificate-errors-spki-list=${spkiHash(env('ORDERS_SERVER_CERT'))}`],
  });
  try {
    const context = await browser.newContext({ viewport: { width: 900, height: 900 } });
    const page = await context.newPage();
    const console_ = [];
    page.on('console', (message) => console_.push(`${message.type()}: ${message.text()}`));
    page.on('pageerror', (error) => console_.push(`pageerror: ${error.message}`));
    try {
      for (const protocol of ['connect', 'grpc-web']) {
        const url = new URL(env('PAGE_URL'));
        url.searchParams.set('api', api);
        url.searchParams.set('protocol', protocol);
        await page.goto(url.href);
        if ((await page.inputValue('#api')) !== api) throw new Error('the API base URL is not taken from ?api=');

        // Register, and see the order arrive PENDING with its watch live.
        await page.fill('#token', env('ORDERS_TOKEN'));
        await page.click('#register');
        await expectText(page, '#status', 'PENDING', `${protocol}: the registered order`);
        await expectText(page, '#stream', 'live', `${protocol}: the watch`);
        const id = await textOf(page, '#order-id');
        if (!/^[0-9a-f-]{36}$/.test(id)) throw new Error(`${protocol}: no order id shown (${JSON.stringify(id)})`);
        console.log(`REGISTERED ${protocol} ${id}`);

        // The test advances the order as staff; the open watch shows it.
        await expectText(page, '#status', 'CONFIRMED', `${protocol}: the change staff made`);
        await expectText(page, '#events', 'v2 CONFIRMED', `${protocol}: the list of versions`);
        const shot = join(artifacts, `order-tracking-${protocol}.png`);
        await page.screenshot({ path: shot, fullPage: true });
        console.log(`SCREENSHOT ${shot}`);

        // A field out of its limits: the violation, by field.
        await page.fill('#city', ' ');
        await page.click('#register');
        await expectText(page, '#error-code', 'INVALID_ARGUMENT', `${protocol}: an invalid order`);
        await expectText(page, '#error-details', 'address.city:', `${protocol}: the field violation`);
        await page.fill('#city', 'Utrecht');

        // A token without orders:write: the refusal, readably.
        await page.fill('#token', env('ORDERS_TOKEN_READONLY'));
        await page.click('#register');
        await expectText(page, '#error-code', 'PERMISSION_DENIED', `${protocol}: a refused call`);
        await expectText(page, '#error-details', 'reason MISSING_SCOPE', `${protocol}: the reason`);
        await expectText(page, '#error-details', 'required_scope: orders:write', `${protocol}: the missing scope`);
        // The order already followed is still shown and followed.
        await expectText(page, '#status', 'CONFIRMED', `${protocol}: the order after the refusal`);
        const refused = join(artifacts, `order-tracking-${protocol}-refused.png`);
        await page.screenshot({ path: refused, fullPage: true });
        console.log(`SCREENSHOT ${refused}`);
      }

      // Another origin, not in cors.allowed_origins: the service grants
      // nothing, so Chromium refuses the call before the page sees an answer.
      const foreign = new URL(env('FOREIGN_PAGE_URL'));
      foreign.searchParams.set('api', api);
      await page.goto(foreign.href);
      await page.fill('#token', env('ORDERS_TOKEN'));
      await page.click('#register');
      await expectText(page, '#error-code', 'UNKNOWN', 'a page of an origin not allowed');
      await expectText(page, '#error-details', 'cors.allowed_origins', 'the page says why it may be');
      const blocked = console_.some((line) => line.includes('blocked by CORS policy'));
      if (!blocked) throw new Error('Chromium did not report the call blocked by CORS policy');
      const refused = join(artifacts, 'order-tracking-origin-not-allowed.png');
      await page.screenshot({ path: refused, fullPage: true });
      console.log(`SCREENSHOT ${refused}`);
    } catch (error) {
      await page.screenshot({ path: join(artifacts, 'order-tracking-failure.png'), fullPage: true }).catch(() => {});
      throw new Error(`${error.message}\nthe page's console:\n${console_.join('\n') || '(empty)'}`);
    }
  } finally {
    await browser.close();
  }
}

run().then(
  () => console.log('DONE'),
  (error) => {
    console.error(error.stack || String(error));
    process.exitCode = 1;
  },
);
