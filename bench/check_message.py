#!/usr/bin/env python3
"""Checks one message as trackrelay delivered it (saved by examples/smtp_sink).

  check_message.py MSG.eml DKIM_TXT_FILE [EXPECTED_LINKS]

DKIM_TXT_FILE is what `trackrelay dkim-keygen` printed (the record name and
the `v=DKIM1; ...` value). Reports: DKIM-Signature present, and verified
with dkimpy against that record (no DNS) when dkimpy is installed; the HTML
part's tracked click links (/v1/track/click/), links left untracked, and the
open pixel (/v1/track/open/). Last line: one JSON object. Exit 0 when the
signature is present (and verifies, where checked) and links and pixel are
tracked.
"""
import email
import email.policy
import json
import re
import sys


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    raw = open(sys.argv[1], "rb").read()
    txt = open(sys.argv[2]).read()
    expected_links = int(sys.argv[3]) if len(sys.argv) > 3 else None
    m = re.search(r"v=DKIM1;[^\"\n]*", txt)
    record = m.group(0).strip() if m else None

    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    out = {"dkim_signature": msg.get("DKIM-Signature") is not None}
    try:
        import dkim  # dkimpy

        def dnsfunc(name, timeout=5):
            return record.encode() if record else None

        out["dkim_verified"] = bool(dkim.verify(raw, dnsfunc=dnsfunc))
    except ImportError:
        out["dkim_verified"] = "not checked (pip install dkimpy)"

    html = ""
    for part in msg.walk():
        if part.get_content_type() == "text/html":
            html += part.get_payload(decode=True).decode(part.get_content_charset() or "utf-8", "replace")
    hrefs = re.findall(r'href="([^"]*)"', html)
    tracked = [h for h in hrefs if "/v1/track/click/" in h]
    untracked_http = [h for h in hrefs if h.startswith(("http://", "https://")) and "/v1/track/click/" not in h]
    out.update(
        {
            "tracked_links": len(tracked),
            "untracked_http_links": len(untracked_http),
            "pixel": "/v1/track/open/" in html,
            "tracking_host": sorted({re.sub(r"^https?://([^/]+)/.*$", r"\1", h) for h in tracked}),
        }
    )
    ok = (
        out["dkim_signature"]
        and out["dkim_verified"] is not False
        and out["pixel"]
        and out["tracked_links"] > 0
        and out["untracked_http_links"] == 0
        and (expected_links is None or out["tracked_links"] == expected_links)
    )
    out["ok"] = bool(ok)
    print(json.dumps(out))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
