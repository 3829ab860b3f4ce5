#!/usr/bin/env python3
"""Turns what a sink recorded into RFC 3464 bounces and sends them to the
return-path MX (bench/inbound_linked.sh; this phase is not timed).

  inbound_dsn.py DUMP_DIR HOST:PORT [--conns 8] [--deadline 300] [--expect N]

DUMP_DIR holds one file per delivery written by Postfix's `smtp-sink -d`,
each starting with `X-Mail-Args: <envelope sender> ...` and
`X-Rcpt-Args: <recipient> ...`. For each file one DSN is built (`Action:
failed`, `Status: 5.1.1`, the recipient as Final-Recipient) and sent from
`<>` to the envelope sender, i.e. the relay's `bounces+{token}@...` return
path. `--conns` sessions at once, each sending many messages (one
transaction each, smtplib's sendmail); every reply is awaited and
anything but 250 counts as a failure. Bounded: stops at `--deadline`
seconds. Prints one JSON line: sent, failed, distinct return paths, seconds.
"""
import argparse
import json
import os
import queue
import re
import smtplib
import sys
import threading
import time

ANGLE = re.compile(rb"<([^>]*)>")


def envelope(path):
    """(sender, recipient) from a smtp-sink dump file's first header lines."""
    sender = rcpt = None
    with open(path, "rb") as f:
        for _ in range(12):
            line = f.readline()
            if not line:
                break
            if line.startswith(b"X-Mail-Args:"):
                m = ANGLE.search(line)
                sender = m.group(1).decode() if m else None
            elif line.startswith(b"X-Rcpt-Args:") and rcpt is None:
                m = ANGLE.search(line)
                rcpt = m.group(1).decode() if m else None
    return sender, rcpt


def dsn(n, return_path, rcpt):
    b = f"dsn-{n}"
    return (
        f"From: MAILER-DAEMON@mx.example.net (Mail Delivery System)\r\n"
        f"To: {return_path}\r\n"
        f"Subject: Undelivered Mail Returned to Sender\r\n"
        f"Date: Tue, 24 Nov 2026 12:00:00 +0000\r\n"
        f"Message-ID: <{b}@mx.example.net>\r\n"
        f"Auto-Submitted: auto-replied\r\n"
        f"MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{b}"\r\n'
        f"\r\n"
        f"--{b}\r\n"
        f"Content-Type: text/plain; charset=us-ascii\r\n"
        f"\r\n"
        f"This is the mail system at host mx.example.net.\r\n"
        f"\r\n"
        f"<{rcpt}>: host mx2.example.net[192.0.2.7] said: 550 5.1.1\r\n"
        f"    <{rcpt}>: Recipient address rejected: User unknown\r\n"
        f"\r\n"
        f"--{b}\r\n"
        f"Content-Type: message/delivery-status\r\n"
        f"\r\n"
        f"Reporting-MTA: dns; mx.example.net\r\n"
        f"Arrival-Date: Tue, 24 Nov 2026 12:00:00 +0000\r\n"
        f"\r\n"
        f"Final-Recipient: rfc822; {rcpt}\r\n"
        f"Original-Recipient: rfc822;{rcpt}\r\n"
        f"Action: failed\r\n"
        f"Status: 5.1.1\r\n"
        f"Remote-MTA: dns; mx2.example.net\r\n"
        f"Diagnostic-Code: smtp; 550 5.1.1 <{rcpt}>: Recipient address\r\n"
        f"    rejected: User unknown\r\n"
        f"\r\n"
        f"--{b}\r\n"
        f"Content-Type: text/rfc822-headers\r\n"
        f"\r\n"
        f"Return-Path: <{return_path}>\r\n"
        f"From: a@example.com\r\n"
        f"To: {rcpt}\r\n"
        f"Subject: hello\r\n"
        f"\r\n"
        f"--{b}--\r\n"
    ).encode()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dump_dir")
    ap.add_argument("addr", help="host:port of the inbound listener")
    ap.add_argument("--conns", type=int, default=8)
    ap.add_argument("--deadline", type=float, default=300)
    ap.add_argument("--expect", type=int, default=0, help="exit 1 unless this many were sent")
    a = ap.parse_args()
    host, port = a.addr.rsplit(":", 1)

    jobs = queue.Queue()
    paths = set()
    for n, name in enumerate(sorted(os.listdir(a.dump_dir))):
        sender, rcpt = envelope(os.path.join(a.dump_dir, name))
        if not sender or not rcpt:
            print(f"# {name}: no envelope in the dump, skipped", file=sys.stderr)
            continue
        paths.add(sender.lower())
        jobs.put((sender, dsn(n, sender, rcpt)))

    t0 = time.monotonic()
    stop = t0 + a.deadline
    lock = threading.Lock()
    counts = {"sent": 0, "failed": 0}
    errors = []

    def worker():
        s = None
        while time.monotonic() < stop:
            try:
                rp, msg = jobs.get_nowait()
            except queue.Empty:
                break
            try:
                if s is None:
                    s = smtplib.SMTP(host, int(port), local_hostname="mx.example.net", timeout=30)
                    s.ehlo()
                refused = s.sendmail("", [rp], msg)
                ok = not refused
            except (smtplib.SMTPException, OSError) as e:
                ok = False
                with lock:
                    if len(errors) < 5:
                        errors.append(f"{type(e).__name__}: {e}")
                try:
                    if s is not None:
                        s.close()
                except OSError:
                    pass
                s = None
            with lock:
                counts["sent" if ok else "failed"] += 1
        if s is not None:
            try:
                s.quit()
            except (smtplib.SMTPException, OSError):
                pass

    threads = [threading.Thread(target=worker) for _ in range(a.conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    secs = time.monotonic() - t0
    for e in errors:
        print(f"# {e}", file=sys.stderr)
    print(json.dumps({"sent": counts["sent"], "failed": counts["failed"], "unsent": jobs.qsize(),
                      "return_paths": len(paths), "seconds": round(secs, 3)}))
    return 0 if (a.expect == 0 or counts["sent"] == a.expect) else 1


if __name__ == "__main__":
    sys.exit(main())
