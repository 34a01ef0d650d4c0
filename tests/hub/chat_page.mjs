// The chat demo's page as the tests drive it in headless Chromium (Debian's, through
// playwright-core): a tab, what it says, and what it shows.

import { chromium } from 'playwright-core';

const CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

/** Headless Chromium (CHROMIUM_PATH, or Debian's /usr/bin/chromium). */
export function launchChromium() {
  return chromium.launch({ executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium', args: CHROMIUM_ARGS });
}

/** A new tab on the chat at `base`, once connected: its page and the name it was given. */
export async function tab(browser, base) {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(base);
  await page.waitForFunction(() => document.body.dataset.state === 'connected', null, { timeout: 10000 });
  const name = await page.evaluate(() => window.demo.name);
  return { page, name };
}

/** Sends a message from the page. */
export async function say(page, text) {
  await page.fill('#text', text);
  await page.click('form button');
}

/** The messages shown, each as the author's name then the text. */
export const messages = (page) => page.$$eval('#log li.message', (lis) => lis.map((li) => li.textContent));

/** Who is present, sorted. */
export const people = (page) => page.$$eval('#people li', (lis) => lis.map((li) => li.textContent).sort());

/** Waits until `name` is shown as present. */
export const present = (page, name) => page.waitForFunction(
  (n) => [...document.querySelectorAll('#people li')].some((li) => li.textContent === n), name);
