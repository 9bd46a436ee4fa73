// Shared by the browser tests: a fresh tab that records script errors and violations of the
// page's policy (as the page itself sees them: a blocked script may log nothing else).

/** A fresh browser context and tab of `browser`, collecting `problems` (errors logged). */
export async function newTab(browser) {
  const context = await browser.newContext({ viewport: { width: 1000, height: 700 } });
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (e) => problems.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") problems.push(m.text()); });
  await page.addInitScript(() => {
    window.cspViolations = [];
    document.addEventListener("securitypolicyviolation", (e) => {
      window.cspViolations.push(`${e.violatedDirective} blocked ${e.blockedURI || "inline code"}`);
    });
  });
  return { context, page, problems };
}
