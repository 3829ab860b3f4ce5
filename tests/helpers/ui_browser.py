#!/usr/bin/env python3
"""Drives the trackrelay dashboard in headless Chromium (Playwright, the
system's /usr/bin/chromium; no browser download) for tests/ui.rs.

Also visits the Domains list and example.com's page.

argv[1]: JSON with base, token, reader, slow, email_id, slow_email_id,
subject, hostile_ua, link, expect {sent, delivered, delayed, opened_human,
opened_machine, clicked_human}, shots (directory).
Exit status 3: Playwright or Chromium is missing (the Rust test decides
whether that is a skip or a failure). Any failed check raises, exit 1.
Prints one JSON object of what it saw on success.
"""
import json
import os
import sys

try:
    from playwright.sync_api import sync_playwright
except ImportError:
    sys.exit(3)

CHROMIUM = os.environ.get("TRACKRELAY_CHROMIUM", "/usr/bin/chromium")
if not os.path.exists(CHROMIUM):
    sys.exit(3)

P = json.loads(sys.argv[1])
BASE = P["base"]
SHOTS = P["shots"]
os.makedirs(SHOTS, exist_ok=True)
seen = {}


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def shots(page, name):
    """The page at desktop and phone widths; at 375 px nothing may be
    wider than the screen (tables scroll inside their own box)."""
    for width, height, tag in ((1280, 900, "desktop"), (375, 740, "phone")):
        page.set_viewport_size({"width": width, "height": height})
        page.screenshot(path=os.path.join(SHOTS, f"{name}-{tag}.png"), full_page=True)
        overflow = page.evaluate(
            "() => document.documentElement.scrollWidth - document.documentElement.clientWidth")
        check(overflow <= 0, f"{name} at {width}px is {overflow}px wider than the screen")
    page.set_viewport_size({"width": 1280, "height": 900})


def series(page, chart, key):
    values = page.get_attribute(f"#{chart} polyline[data-series={key}]", "data-values")
    return [int(v) for v in values.split(",")]


with sync_playwright() as pw:
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    csp_violations = []
    page.on("console", lambda m: csp_violations.append(m.text)
            if "Content Security Policy" in m.text else None)

    # Not logged in: the overview sends us to the login form.
    page.goto(BASE + "/")
    check(page.url == BASE + "/login", f"unauthenticated / went to {page.url}")
    shots(page, "login")

    # A wrong token is refused, by keyboard only.
    page.focus("#token")
    page.keyboard.type("not-the-token")
    with page.expect_navigation() as nav:
        page.keyboard.press("Enter")
    check(nav.value.status == 401, f"wrong token answered {nav.value.status}")
    check("not the admin token" in page.inner_text("main"), "no error shown for a wrong token")
    check(not any(c["name"] == "trackrelay_session" for c in ctx.cookies()),
          "a wrong token got a session cookie")
    seen["wrong_token_status"] = nav.value.status

    # The right one, by keyboard again.
    page.focus("#token")
    page.keyboard.type(P["token"])
    with page.expect_navigation():
        page.keyboard.press("Enter")
    check(page.url == BASE + "/", f"login went to {page.url}")
    cookie = [c for c in ctx.cookies() if c["name"] == "trackrelay_session"]
    check(len(cookie) == 1 and cookie[0]["httpOnly"] and cookie[0]["sameSite"] == "Strict",
          f"session cookie: {cookie}")
    seen["cookie"] = {k: cookie[0][k] for k in ("httpOnly", "sameSite", "secure", "path")}
    nav = page.locator("header nav a").all_inner_texts()
    check(nav == ["Overview", "Emails", "Queue", "Suppressions", "Webhooks", "Domains"],
          f"navigation: {nav}")

    # Overview: the charts carry this run's numbers.
    e = P["expect"]
    for key, chart in (("sent", "chart-delivery"), ("delivered", "chart-delivery"),
                       ("delayed", "chart-delivery"), ("bounced", "chart-delivery"),
                       ("opened_human", "chart-engagement"),
                       ("opened_machine", "chart-engagement"), ("clicked_human", "chart-engagement")):
        got = sum(series(page, chart, key))
        check(got == e[key], f"chart {key}: {got}, expected {e[key]}")
        card = page.inner_text(f".card [data-k={key}]") if key != "opened_machine" else None
        if card is not None:
            check(int(card) == e[key], f"card {key}: {card}, expected {e[key]}")
    # Drawn: the sent line leaves the baseline somewhere.
    points = page.get_attribute("#chart-delivery polyline[data-series=sent]", "points").split()
    ys = {p.split(",")[1] for p in points}
    check(len(ys) > 1, f"the sent line is flat: {points}")
    check(page.locator("#chart-delivery circle").count() > 0, "no data points drawn")
    seen["overview"] = {k: sum(series(page, c, k)) for k, c in
                        (("sent", "chart-delivery"), ("opened_human", "chart-engagement"))}
    shots(page, "overview")
    page.goto(BASE + "/?range=30d")
    check(sum(series(page, "chart-delivery", "sent")) == e["sent"], "30 d window lost mail")
    # The per-domain filter: all of it is example.com's, none example.org's.
    options = page.locator("select[name=domain] option").all_inner_texts()
    check("example.com" in options, f"domain options: {options}")
    page.select_option("select[name=domain]", "example.com")
    with page.expect_navigation():
        page.click("form.filters button[type=submit]")
    check("domain=example.com" in page.url, page.url)
    check(sum(series(page, "chart-delivery", "sent")) == e["sent"], "example.com lost mail")
    page.goto(BASE + "/?range=7d&domain=example.org")
    check(sum(series(page, "chart-delivery", "sent")) == 0, "example.org has mail it never sent")
    check(page.inner_text(".card [data-k=sent]") == "0", "example.org card")

    # Emails: find the reader's email by recipient, by keyboard.
    page.goto(BASE + "/emails")
    page.focus("input[name=recipient]")
    page.keyboard.type(P["reader"])
    with page.expect_navigation():
        page.keyboard.press("Enter")
    rows = page.locator("table.emails tbody tr")
    check(rows.count() == 1, f"search by recipient found {rows.count()} rows")
    # The hostile subject is text, not markup.
    link = rows.first.locator("a").first
    check(link.inner_text() == P["subject"], f"subject shown as {link.inner_text()!r}")
    shots(page, "emails")
    with page.expect_navigation():
        link.click()
    check(page.url.endswith("/emails/" + P["email_id"]), f"email page url {page.url}")
    main = page.inner_text("main")
    for want in ("Accepted", "Delivered", "Opened", "Clicked", "MX", "Reply", P["link"],
                 "person", "Webhooks sent"):
        check(want in main, f"timeline lacks {want!r}")
    check(P["hostile_ua"] in main, "the click's User-Agent is not shown as text")
    check(page.locator("main img, main script, main [onerror]").count() == 0,
          "attacker markup became elements")
    check(page.inner_text("h1") == "Email: " + P["subject"], f"h1: {page.inner_text('h1')!r}")
    hooks = page.inner_text("section.hooks")
    for want in ("email.sent", "email.delivered", "email.opened", "email.clicked", "/hook"):
        check(want in hooks, f"webhooks table lacks {want!r}: {hooks}")
    seen["timeline_entries"] = page.locator("ol.timeline > li").count()
    shots(page, "email")

    # Queue: the deferred recipient, grouped with its reason.
    page.goto(BASE + "/queue")
    groups = page.inner_text("table.groups")
    check("example.net" in groups and P["defer_reason"] in groups, f"groups: {groups}")
    rows = page.locator("table.rows tbody tr", has_text=P["slow"])
    check(rows.count() == 1, "the deferred recipient is not listed")
    check(page.locator("main b").count() == 0, "the remote reply's markup became elements")
    shots(page, "queue")

    # Forged POSTs, with this browser's own session cookie:
    # no CSRF token, and a valid token from a foreign Origin.
    csrf = page.get_attribute("form.logout input[name=csrf]", "value")
    r = ctx.request.post(BASE + "/queue/retry", form={"email_id": P["slow_email_id"]},
                         max_redirects=0)
    check(r.status == 403, f"retry without CSRF token: {r.status}")
    seen["no_csrf_status"] = r.status
    r = ctx.request.post(BASE + "/queue/retry",
                         form={"email_id": P["slow_email_id"], "csrf": csrf},
                         headers={"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"},
                         max_redirects=0)
    check(r.status == 403, f"cross-origin retry: {r.status}")
    seen["cross_origin_status"] = r.status
    # A real cross-site form in this browser: another origin's page posts
    # to the dashboard (SameSite keeps the cookie home; Origin says null).
    evil = ctx.new_page()
    evil.set_content(
        f"<form method=post action='{BASE}/queue/retry'>"
        f"<input name=csrf value='{csrf}'><input name=email_id value='{P['slow_email_id']}'>"
        "<button id=go>go</button></form>")
    with evil.expect_navigation() as nav:
        evil.click("#go")
    check(nav.value.status == 403, f"cross-site form: {nav.value.status}")
    seen["cross_site_form_status"] = nav.value.status
    evil.close()

    # Suppressions: the hard bounce is there with its cause; add and
    # remove one by hand.
    page.goto(BASE + "/suppressions")
    table = page.inner_text("table.sup")
    check(P["gone"] in table and "hard_bounce" in table and "email.bounced" in table,
          f"suppressions: {table}")
    shots(page, "suppressions")
    page.focus("form[action='/suppressions/add'] input[name=address]")
    page.keyboard.type("manual@example.net")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    check("Address added." in page.inner_text("main"), "no notice after adding")
    check("manual@example.net" in page.inner_text("table.sup"), "the added address is not listed")
    with page.expect_navigation():
        page.locator("table.sup tr", has_text="manual@example.net").locator("button").click()
    check("Address removed." in page.inner_text("main"), "no notice after removing")
    seen["suppressions_after"] = page.locator("table.sup tbody tr").count()

    # Webhooks: the endpoint, its deliveries (never delivered: it is down),
    # and a replay.
    page.goto(BASE + "/webhooks")
    check(P["hook_url"] in page.inner_text("ul.endpoints"), "endpoint not listed")
    hooks = page.locator("table.hooks tbody tr")
    check(hooks.count() >= 5, f"{hooks.count()} webhook deliveries listed")
    shots(page, "webhooks")
    with page.expect_navigation():
        hooks.first.locator("button", has_text="Replay").click()
    check("Queued again" in page.inner_text("main"), "no notice after replay")

    # Domains: the list, then example.com's page reached by keyboard (its
    # link focused, Enter); both fit a phone.
    page.goto(BASE + "/domains")
    listed = page.inner_text("table.domains")
    check("example.com" in listed and "example.org" in listed, f"domains: {listed}")
    shots(page, "domains")
    page.locator("table.domains a", has_text="example.com").focus()
    with page.expect_navigation():
        page.keyboard.press("Enter")
    check(page.url == BASE + "/domains/example.com", f"domain page url {page.url}")
    main = page.inner_text("main")
    for want in ("DNS records", "Tracking host", "links.example.com", "Settings",
                 "Click tracking", "Status history"):
        check(want in main, f"the domain page lacks {want!r}")
    seen["domain_status"] = page.inner_text("main dl.facts .st")
    shots(page, "domain")

    # Retry from the page, by keyboard: the button, then Enter.
    page.goto(BASE + "/queue")
    button = page.locator("table.rows tbody tr", has_text=P["slow"]).locator("button", has_text="Retry")
    button.focus()
    with page.expect_navigation():
        page.keyboard.press("Enter")
    check("made due now" in page.inner_text("main"), "no confirmation after retry")
    seen["retried"] = page.url

    check(not csp_violations, f"CSP violations: {csp_violations}")
    browser.close()

print(json.dumps(seen))
