#!/usr/bin/env python3
"""Verify every DKIM-Signature of the message on stdin with dkimpy.

Usage: dkimverify.py NAME TXT [NAME TXT ...] < message.eml
  NAME  the DNS name of a key, e.g. s1._domainkey.example.com
  TXT   its TXT record, e.g. "v=DKIM1; k=ed25519; p=..."
The keys are handed to dkimpy instead of DNS. One line per signature.
Exit: 0 all pass, 1 one fails, 2 usage or no signature, 3 dkimpy missing.
"""
import logging
import sys

try:
    import dkim
except ImportError:
    print("dkimpy is not installed (pip install 'dkimpy[ed25519]')")
    sys.exit(3)


class Notes(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def main():
    args = sys.argv[1:]
    if not args or len(args) % 2:
        print(__doc__)
        return 2
    keys = {args[i].rstrip(".").lower(): args[i + 1].encode() for i in range(0, len(args), 2)}

    def dnsfunc(name, timeout=5):
        name = name.decode() if isinstance(name, bytes) else name
        return keys.get(name.rstrip(".").lower())

    # dkimpy explains a failed verification only in its log.
    notes = Notes()
    log = logging.getLogger("dkimverify")
    log.addHandler(notes)
    log.setLevel(logging.DEBUG)
    log.propagate = False

    message = sys.stdin.buffer.read()
    d = dkim.DKIM(message, logger=log)
    count = sum(1 for (k, _) in d.headers if k.lower() == b"dkim-signature")
    if count == 0:
        print("no DKIM-Signature header")
        return 2
    status = 0
    for idx in range(count):
        notes.lines.clear()
        try:
            ok = d.verify(idx=idx, dnsfunc=dnsfunc)
            why = ""
        except Exception as e:  # dkimpy raises for bad keys or tags
            ok, why = False, f"{type(e).__name__}: {e}"
        if not ok and not why:
            why = "; ".join(notes.lines[-2:]) or "signature did not verify"
        sig = getattr(d, "signature_fields", {}) or {}
        domain = sig.get(b"d", b"?").decode(errors="replace")
        selector = sig.get(b"s", b"?").decode(errors="replace")
        algorithm = sig.get(b"a", b"?").decode(errors="replace")
        print(f"sig[{idx}] {'pass' if ok else 'FAIL'} d={domain} s={selector} a={algorithm} {why}".rstrip())
        if not ok:
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
