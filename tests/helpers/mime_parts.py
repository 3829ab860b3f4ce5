#!/usr/bin/env python3
"""Independent reader for the prepare corpus tests.

Reads each message file given on the command line with Python's `email`
package (not mail-parser) and prints one JSON document per file, one per
line:

  {"parts": [{"path", "ctype", "charset", "attachment", "in_attached_message",
              "payload" (base64 of the transfer-decoded bytes),
              "links" (text/html only)}]}

Links are found with Python's html.parser, including those inside Outlook
conditional comments (VML elements too). Each link gives the href as
written ("raw", entities and all), the value html.parser decoded ("value")
and whether an http(s) tracker should take it ("trackable", decided here
with urllib, independently of the Rust code).
"""

import base64
import email
import email.policy
import html.parser
import json
import re
import sys
import urllib.parse

OWN_HOSTS = {"links.example.com", "old-links.example.com"}
HOST_OK = re.compile(r"^[a-z0-9._-]+$")


def cleaned(value):
    v = value.strip("".join(chr(c) for c in range(0x21)))
    return v.replace("\t", "").replace("\n", "").replace("\r", "")


def trackable(value):
    v = cleaned(value)
    if not v[:8].lower().startswith(("http://", "https://")):
        return False
    try:
        split = urllib.parse.urlsplit(v)
        host = split.hostname
        split.port  # raises for a port that is not a number ({{port}})
    except ValueError:
        return False
    if not host:
        return False
    # Browsers percent-decode the host (http://%65xample.com/ is example.com).
    host = urllib.parse.unquote(host).lower()
    host = host.rstrip(".")
    if host.startswith("[") or re.match(r"^[0-9.]+$", host):
        return True
    try:
        host = host.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return False
    if not HOST_OK.match(host) or host in OWN_HOSTS:
        return False
    return True


class Links(html.parser.HTMLParser):
    def __init__(self, in_comment=False):
        super().__init__(convert_charrefs=True)
        self.in_comment = in_comment
        self.links = []

    def handle_starttag(self, tag, attrs):
        self._tag(tag, attrs)

    def handle_startendtag(self, tag, attrs):
        self._tag(tag, attrs)

    def _tag(self, tag, attrs):
        is_link = tag in ("a", "area") or (self.in_comment and tag.startswith("v:"))
        if not is_link:
            return
        names = [n for n, _ in attrs]
        if "href" not in names:
            return
        value = dict(reversed(attrs))["href"]  # the first href wins
        raw = raw_attribute(self.get_starttag_text(), "href")
        notrack = "data-notrack" in names
        self.links.append(
            {
                "tag": tag,
                "raw": raw,
                "value": value,
                "cleaned": cleaned(value) if value is not None else None,
                "notrack": notrack,
                "conditional": self.in_comment,
                "trackable": (not notrack) and value is not None and raw is not None and trackable(value),
            }
        )

    def handle_comment(self, data):
        if self.in_comment or not data.lstrip().lower().startswith("[if"):
            return
        inner = Links(in_comment=True)
        inner.feed(data)
        inner.close()
        self.links.extend(inner.links)


ATTR = re.compile(
    r"""((?<=[\s"'/])[^\s/>][^\s/=>]*)(\s*=+\s*('[^']*'|"[^"]*"|(?!['"])[^>\s]*))?""",
    re.S,
)


def raw_attribute(tag_text, name):
    """The value of the first `name` attribute exactly as written, quotes removed."""
    if tag_text is None:
        return None
    m = re.match(r"<[^\s/>]+", tag_text)
    rest = tag_text[m.end():] if m else tag_text
    for a in ATTR.finditer(" " + rest):
        if a.group(1).lower() == name:
            v = a.group(3)
            if v is None:
                return None
            if v[:1] in "'\"" and len(v) >= 2 and v[-1] == v[0]:
                v = v[1:-1]
            return v
    return None


def python_charset(label, payload):
    for name in (label, "utf-8", "latin-1"):
        if not name:
            continue
        try:
            return payload.decode(name)
        except (LookupError, UnicodeDecodeError):
            continue
    return payload.decode("latin-1")


def parts_of(msg):
    out = []

    def walk(m, path, in_attached):
        if m.is_multipart():
            ctype = m.get_content_type()
            children = m.get_payload()
            for i, child in enumerate(children):
                # A message/rfc822 that is not the top-level body is an attachment.
                attached = in_attached or (ctype == "message/rfc822" and path != "0")
                walk(child, f"{path}.{i}", attached)
            return
        payload = m.get_payload(decode=True)
        if payload is None:
            payload = b""
        entry = {
            "path": path,
            "ctype": m.get_content_type(),
            "charset": m.get_content_charset(),
            "attachment": str(m.get("Content-Disposition") or "").strip().lower().startswith("attachment"),
            "in_attached_message": in_attached,
            "payload": base64.b64encode(payload).decode("ascii"),
        }
        if entry["ctype"] == "text/html":
            parser = Links()
            parser.feed(python_charset(entry["charset"], payload))
            parser.close()
            entry["links"] = parser.links
        out.append(entry)

    walk(msg, "0", False)
    return out


def main():
    for path in sys.argv[1:]:
        with open(path, "rb") as f:
            msg = email.message_from_binary_file(f, policy=email.policy.compat32)
        print(json.dumps({"parts": parts_of(msg)}))


if __name__ == "__main__":
    main()
