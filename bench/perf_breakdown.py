#!/usr/bin/env python3
"""CPU per message by pipeline stage, from a `perf record --call-graph dwarf`
of trackrelay (bench/relay.sh with PERF=1 PERF_CALLGRAPH='--call-graph dwarf').

  perf script -i perf-trackrelay-1.data -F comm,ip,sym --no-inline > s.txt
  bench/perf_breakdown.py s.txt CPU_SECONDS MESSAGES

Each sample goes to the first stage, in the order below, that names a frame
of its stack; a stack that names none is "other" (runtime, allocator,
scheduler, or a stack the unwinder lost). CPU_SECONDS is tr_cpu_s from the
run (trackrelay's user+system time during the measured load) and turns the
shares into microseconds per message.
"""
import sys
from collections import Counter

STAGES = [
    ("DKIM: RSA-2048 signature", ["ring::rsa::keypair::KeyPair::sign", "aws_lc_rs::rsa::key::KeyPair::sign", "RSA_sign", "rsa_sign"]),
    ("DKIM: canonicalise + hash", ["trackrelay::outbound::dkim::sign"]),
    ("prepare: tokens (HMAC)", ["trackrelay::prepare::token", "ring::hmac", "aws_lc_rs::hmac"]),
    ("prepare: re-encode (QP/charset)", ["trackrelay::prepare::encode", "trackrelay::prepare::charset"]),
    ("prepare: rewrite (lol_html, links, splice)", ["lol_html::", "trackrelay::prepare::html", "trackrelay::prepare::links", "trackrelay::prepare::splice"]),
    ("prepare: MIME parse + headers", ["trackrelay::prepare::"]),
    ("copy: CRLF normalise, DKIM concat", ["trackrelay::outbound::runner::Runner::copy_for"]),
    ("SMTP send (client, dot-stuff, socket)", ["trackrelay::outbound::client", "trackrelay::outbound::session", "trackrelay::outbound::protocol"]),
    ("store write: accept (email row, body, email.sent)", ["trackrelay::store::emails::insert", "trackrelay::store::sqlite::emails::insert"]),
    ("store write: outcome + email.delivered", ["trackrelay::store::queue::record", "trackrelay::store::sqlite::queue::record"]),
    ("store write: WAL checkpoint", ["walCheckpoint"]),
    ("store write: commit + fsync", ["sqlite3BtreeCommitPhase", "sqlite3PagerCommitPhase", "fsync", "fdatasync", "sqlite3VdbeHalt"]),
    ("store write: other (savepoints, claims, batch)", ["trackrelay::store::Writer::run", "trackrelay::store::run_batch", "trackrelay::store::sqlite::Writer::run", "trackrelay::store::sqlite::run_batch"]),
    ("store reads (claim, body, lease)", ["trackrelay::store::Store::read", "trackrelay::store::queue::", "trackrelay::store::emails::body", "trackrelay::store::sqlite::"]),
    ("SMTP receive (session, DATA, From check)", ["trackrelay::submission::"]),
    ("runner bookkeeping", ["trackrelay::outbound::runner"]),
]


def stage(stack):
    for name, marks in STAGES:
        for frame in stack:
            if any(m in frame for m in marks):
                return name
    return "other (runtime, allocator, kernel, lost stacks)"


def samples(path):
    comm, stack = None, []
    with open(path, errors="replace") as f:
        for line in f:
            if not line.strip():
                if comm is not None:
                    yield comm, stack
                comm, stack = None, []
            elif not line[0].isspace():
                comm, stack = line.split()[0], []
            else:
                parts = line.split(None, 1)
                stack.append(parts[1].strip() if len(parts) > 1 else "")
    if comm is not None:
        yield comm, stack


def main():
    path = sys.argv[1]
    cpu_s = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    msgs = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    counts, threads = Counter(), Counter()
    for comm, stack in samples(path):
        counts[stage(stack)] += 1
        threads[comm] += 1
    total = sum(counts.values()) or 1
    per_msg = cpu_s * 1e6 / msgs if msgs else 0.0
    print(f"{total} samples; threads: " + ", ".join(f"{c} {100*n/total:.0f}%" for c, n in threads.most_common()))
    if per_msg:
        print(f"CPU per message: {per_msg:.0f} us ({cpu_s} s / {msgs} messages)")
    print(f"| stage | share | us/msg |\n| --- | ---: | ---: |")
    order = [s for s, _ in STAGES] + ["other (runtime, allocator, kernel, lost stacks)"]
    for s in order:
        n = counts.get(s, 0)
        print(f"| {s} | {100*n/total:.1f} % | {per_msg*n/total:.0f} |")


if __name__ == "__main__":
    main()
